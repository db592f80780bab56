"""Real clients for the seven transports of PROTOCOL.md section 3.1, behind one interface.

`open_stream(api, transport, flows, ...)` opens a stream the way a browser-side
client of that transport does and yields a `StreamClient`:

- `await s.next()` is the next decoded object, in order (heartbeats skipped);
  `next_any()` also returns heartbeats, as `{"type": "heartbeat"}` whatever
  their wire form (a WebSocket object, an SSE comment, a lone `\\n`, a part or
  a script call holding `[]`); `until(pred)` is the first object (heartbeats
  included) that matches;
- `stored()`, `closing()` and `ended()` skip heartbeats and presence/typing
  and fail on anything else on the way to what they wait for;
- the stream's end (a WebSocket closing, an HTTP response ending, a poll
  loop that stopped after `close`) raises `StreamEnded`, an EOFError, from
  `next()` once every object before it was taken, and from then on.

Decoding, as a browser does (each decoder also checks the framing, so a
message that broke out of it fails the test that reads it):

- ws: trio-websocket; a text frame is one or more objects separated by `\\n`.
  The client sends WebSocket Ping frames every half heartbeat, as clients may
  instead of `ping` ops, so that short test heartbeats do not trip the
  server's silence watchdog.
- sse: the WHATWG event-stream interpretation (lines end at CRLF, LF or CR;
  `data`, `event`, `id`, `retry` fields; comments; dispatch on a blank line);
  each object's `info` has the event type and the `lastEventId` it was
  dispatched with, and `last_event_id` is what EventSource would send back.
- xhr: NDJSON lines; an empty line is a heartbeat.
- multipart: parts found by `CRLF--boundary` (RFC 2046) with the boundary
  from the Content-Type header, each body a JSON array (tests/test_framers_more.py's
  eager decoder: a part is handled as soon as its CRLF arrives).
- htmlfile: the WHATWG tokenizer's view of the document (tests/test_framers_more.py):
  the preamble's one script must bind `p` to `parent.F` and the first
  `p(...)` script must start at byte 1024 or later; every later script must
  be exactly `p(ARRAY);`, and nothing but whitespace may render.
- poll, jsonp: a loop of polls: the first without cursor (or with the given
  cursor and epoch), then each with the last stored id received and the
  epoch from `ready`, until an answer holds `close`; `[]` answers poll again,
  429 waits its Retry-After. jsonp bodies must be exactly `/**/F([...]);`.

`raw_stream()` opens a stream on a raw trio socket, with the HTTP request
written by hand (or a wsproto upgrade), for exact bytes, arrival times and
clients that read slowly or not at all.
"""

from __future__ import annotations

import codecs
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage

from tests.helpers import client_id
from tests.test_framers_more import HtmlScripts, MultipartDecoder

TRANSPORTS = ("ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp")
STREAMING = ("ws", "sse", "xhr", "multipart", "htmlfile")
POLLING = ("poll", "jsonp")
CALLBACK = "rt.cb_1"  # the `?callback=` of htmlfile and jsonp unless a test gives one
HEARTBEAT = {"type": "heartbeat"}
STORED_TYPES = frozenset({"message", "edit", "tag", "delete"})
EPHEMERAL_TYPES = frozenset({"presence", "typing"})
# How rt/web/wsconn.py refuses an upgrade, as the HTTP status the other transports send.
# The same table as rt.js's (rt/static/rt/transports/index.js; tests/test_static.py checks).
WS_REFUSALS = {4001: 401, 4003: 403, 4004: 404, 4400: 400, 1009: 413, 4029: 429, 1001: 503}
# httpx builds a TLS context for every client (tens of ms); these speak plain HTTP.
TLS = ssl.create_default_context()


class StreamEnded(EOFError):
    """The stream ended. `code`/`reason`: a WebSocket's close; `clean`: no broken framing."""

    def __init__(
        self,
        code: int | None = None,
        reason: str | None = None,
        clean: bool = True,
        detail: str = "",
    ) -> None:
        super().__init__(f"stream ended: code={code} reason={reason} clean={clean} {detail}")
        self.code = code
        self.reason = reason
        self.clean = clean
        self.detail = detail


class Refused(Exception):
    """An HTTP transport answered with a status other than 200 (PROTOCOL.md section 6)."""

    def __init__(self, status: int, body: bytes, headers: httpx.Headers) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def code(self) -> str | None:
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


# An item of a client's queue: (object, info) or (None, StreamEnded).
Item = tuple[dict[str, Any] | None, Any]


class StreamClient:
    """One stream of one transport; see the module docstring."""

    def __init__(self, transport: str, callback: str | None = None) -> None:
        self.transport = transport
        self.callback = callback
        self._send, self._receive = trio.open_memory_channel[Item](float("inf"))
        self.raw = bytearray()  # every body byte received (ws: each text frame + "\n")
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.requests = 0  # HTTP requests begun (polls, for polling transports)
        self.answered = 0  # HTTP responses received (the last request may be cut off unsent)
        self.received: list[dict[str, Any]] = []  # every object decoded, in order
        # Updated as objects are *taken* (next/next_any), so a test resumes from
        # what it processed, as a real client does.
        self.ready: dict[str, Any] | None = None
        self.epoch: str | None = None
        self.cursor: int | None = None
        self.heartbeats = 0
        self.info: dict[str, Any] = {}  # how the last object taken was framed
        self.end: StreamEnded | None = None
        # SSE: the EventSource's view.
        self.last_event_id = ""
        self.retry: int | None = None

    # -- producer side (the transport's pump task) --

    def _put(self, obj: dict[str, Any], info: dict[str, Any] | None = None) -> None:
        if obj is not HEARTBEAT:
            self.received.append(obj)
        self._send.send_nowait((obj, info or {}))

    def _finish(self, end: StreamEnded) -> None:
        try:
            self._send.send_nowait((None, end))
            self._send.close()
        except trio.ClosedResourceError:
            pass

    # -- consumer side --

    async def next_any(self) -> dict[str, Any]:
        """The next object, heartbeats included; StreamEnded after the last one."""
        if self.end is not None:
            raise self.end
        obj, info = await self._receive.receive()
        if obj is None:
            self.end = info
            raise info
        self.info = info
        kind = obj.get("type")
        if kind == "ready":
            self.ready = obj
            self.epoch = obj["epoch"]
            self.cursor = obj["cursor"]
        elif kind == "heartbeat":
            self.heartbeats += 1
        elif isinstance(obj.get("id"), int):
            self.cursor = obj["id"]
        return obj

    async def next(self) -> dict[str, Any]:
        """The next object that is not a heartbeat."""
        while True:
            obj = await self.next_any()
            if obj.get("type") != "heartbeat":
                return obj

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            obj = await self.next_any()
            if predicate(obj):
                return obj

    async def stored(self) -> dict[str, Any]:
        """The next stored event; heartbeats and ephemeral events skipped, anything else fails."""
        while True:
            obj = await self.next_any()
            kind = obj.get("type")
            if kind == "heartbeat" or kind in EPHEMERAL_TYPES:
                continue
            assert kind in STORED_TYPES and isinstance(obj.get("id"), int), (
                f"{self.transport}: expected a stored event, got {obj}"
            )
            return obj

    async def closing(self) -> dict[str, Any]:
        """The next `close` frame; a stored event or other control frame first fails."""
        while True:
            obj = await self.next_any()
            kind = obj.get("type")
            if kind == "close":
                return obj
            assert kind == "heartbeat" or kind in EPHEMERAL_TYPES, (
                f"{self.transport}: expected close, got {obj}"
            )

    async def ended(self) -> StreamEnded:
        """Wait for the end; anything but heartbeats and presence/typing first fails."""
        while True:
            try:
                obj = await self.next_any()
            except StreamEnded as end:
                return end
            kind = obj.get("type")
            assert kind == "heartbeat" or kind in EPHEMERAL_TYPES, (
                f"{self.transport}: expected the end of the stream, got {obj}"
            )


# -- decoders: bytes in, (object, info) out ------------------------------------------------


class _Decoder:
    """Feed body bytes; `items` collects decoded (object, info) in order."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> str:
        """At the end of the body: '' if the body ended on a framing boundary, else why not."""
        return ""

    def take(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        items, self.items = self.items, []
        return items


def _object(value: Any, where: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{where}: not a JSON object: {value!r}"
    assert isinstance(value.get("type"), str), f"{where}: no type: {value!r}"
    return value


class NdjsonDecoder(_Decoder):
    """xhr: `OBJ\\n` per object, a lone `\\n` per heartbeat."""

    def __init__(self) -> None:
        super().__init__()
        self._line = b""

    def feed(self, data: bytes) -> None:
        *lines, self._line = (self._line + data).split(b"\n")
        for line in lines:
            if line:
                self.items.append((_object(json.loads(line.decode("utf-8")), "ndjson"), {}))
            else:
                self.items.append((HEARTBEAT, {}))

    def close(self) -> str:
        return f"the body ended inside a line: {self._line[:100]!r}" if self._line else ""


class SseDecoder(_Decoder):
    """The WHATWG event-stream interpretation (HTML Living Standard, 9.2.6)."""

    def __init__(self, client: StreamClient) -> None:
        super().__init__()
        self.client = client
        self._text = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._first = True
        self._data: list[str] = []
        self._event = ""

    def feed(self, data: bytes) -> None:
        text = self._text.decode(data)
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        self._buf += text
        while True:
            match = re.search(r"\r\n|\n|\r", self._buf)
            if match is None:
                return
            if match.group() == "\r" and match.end() == len(self._buf):
                return  # a CR at the end of the data may be the start of a CRLF
            line, self._buf = self._buf[: match.start()], self._buf[match.end() :]
            self._line(line)

    def _line(self, line: str) -> None:
        client = self.client
        if line == "":
            if not self._data:
                self._event = ""
                return
            data = "\n".join(self._data)
            event, self._data, self._event = self._event or "message", [], ""
            self.items.append(
                (
                    _object(json.loads(data), "sse data"),
                    {"event": event, "last_event_id": client.last_event_id},
                )
            )
            return
        if line.startswith(":"):
            self.items.append((HEARTBEAT, {"comment": line[1:]}))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                client.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                client.retry = int(value)
        # any other field is ignored, as a browser does

    def close(self) -> str:
        # A browser discards an event that the end of the stream cut short.
        pending = self._buf or self._data or self._event
        return f"the body ended inside an event: {pending!r}" if pending else ""


class _Parts(MultipartDecoder):
    """tests/test_framers_more.py's eager RFC 2046 reader, reporting each part in order."""

    def _part(self, body: bytes) -> None:
        before = len(self.objects)
        super()._part(body)
        new = self.objects[before:]
        info = {"part": self.parts - 1}
        if not new:
            self.sink.append((HEARTBEAT, info))
        for value in new:
            self.sink.append((_object(value, "multipart part"), info))


class PartsDecoder(_Decoder):
    def __init__(self, content_type: str) -> None:
        super().__init__()
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        assert match, f"no boundary in {content_type!r}"
        self.boundary = match.group(1).encode()
        self.parts = _Parts(self.boundary, eager=True)
        self.parts.sink = self.items  # type: ignore[attr-defined]

    def feed(self, data: bytes) -> None:
        self.parts.sink = self.items  # type: ignore[attr-defined]
        self.parts.feed(data)

    def close(self) -> str:
        if not self.parts.closed:
            return "the body ended without the close delimiter --B--"
        if self.parts.epilogue not in (b"", b"\r\n"):
            return f"bytes after the close delimiter: {self.parts.epilogue!r}"
        return ""


class HtmlFileDecoder(_Decoder):
    """The scripts a browser runs, found by the WHATWG tokenizer."""

    def __init__(self, callback: str) -> None:
        super().__init__()
        self.callback = callback
        self.html = HtmlScripts()
        self.fed = 0
        self._ran = 0
        self.bound = False

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        self.html.feed(data)
        for script in self.html.scripts[self._ran :]:
            self._ran += 1
            self._run(script)

    def _run(self, script: str) -> None:
        if not self.bound:
            assert script == f"var p=parent.{self.callback};", f"preamble script {script!r}"
            self.bound = True
            return
        match = re.fullmatch(r"p\((\[.*\])\);", script, re.DOTALL)
        assert match, f"a script that is not one p([...]) call: {script[:200]!r}"
        value = json.loads(match.group(1))
        assert isinstance(value, list)
        info = {"script": self._ran - 1}
        if not value:
            self.items.append((HEARTBEAT, info))
        for obj in value:
            self.items.append((_object(obj, "htmlfile script"), info))

    def close(self) -> str:
        if self.html.text.strip():
            return f"text rendered outside scripts: {self.html.text.strip()[:200]!r}"
        if self.html.in_script:
            return "the body ended inside a script element"
        return ""

    def check_preamble(self, raw: bytes) -> None:
        first = raw.find(b"<script>p(")
        assert first < 0 or first >= 1024, f"the first p() script starts at byte {first}"


def polling_answer(transport: str, body: bytes, callback: str | None) -> list[Any]:
    """The objects of one poll answer: a JSON array, or `/**/F([...]);` for jsonp."""
    if transport == "jsonp":
        assert callback is not None
        match = re.fullmatch(
            rb"/\*\*/" + re.escape(callback.encode()) + rb"\((\[.*\])\);", body, re.DOTALL
        )
        assert match, f"not one /**/{callback}([...]); call: {body[:300]!r}"
        body = match.group(1)
    value = json.loads(body.decode("utf-8"))
    assert isinstance(value, list), body[:300]
    return [_object(obj, f"{transport} answer") for obj in value]


# -- opening -------------------------------------------------------------------------------


def _clean(query: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in query.items() if v is not None}


@asynccontextmanager
async def open_stream(
    api: Any,
    transport: str,
    flows: list[str],
    client: str | None = None,
    cursor: int | None = None,
    epoch: str | None = None,
    use_ticket: bool = True,
    headers: dict[str, str] | None = None,
    **query: Any,
) -> AsyncIterator[StreamClient]:
    """A stream of `api`'s user: a ticket in the URL (`use_ticket`) or an Authorization header.

    `query` adds or overrides URL parameters (`ticket=` a given ticket, `v=`,
    `callback=`; a value None leaves the parameter out). HTTP transports raise
    `Refused` when the answer is not 200; a refused WebSocket ends before
    `ready` (see `refusal`).
    """
    client = client or client_id()
    params: dict[str, Any] = {
        "flows": ",".join(flows),
        "client": client,
        "cursor": cursor,
        "epoch": epoch,
    }
    hdrs = dict(headers or {})
    if "ticket" not in query and api.token:
        if use_ticket:
            query["ticket"] = await api.ticket(client)
        else:
            hdrs["Authorization"] = f"Bearer {api.token}"
    params.update(query)
    async with connect(api.server, transport, params, hdrs) as stream:
        yield stream


@asynccontextmanager
async def connect(
    base: Any, transport: str, query: dict[str, Any], headers: dict[str, str] | None = None
) -> AsyncIterator[StreamClient]:
    """A stream with exactly this query (ticket included) against `base` (.url, .ws_url).

    htmlfile and jsonp get `callback=CALLBACK` unless the query names one.
    """
    query = dict(query)
    if transport in ("htmlfile", "jsonp"):
        query.setdefault("callback", CALLBACK)
    query = _clean(query)
    headers = dict(headers or {})
    if transport == "ws":
        opener = _open_ws
    elif transport in POLLING:
        opener = _open_polling
    else:
        opener = _open_http_stream
    async with opener(base, transport, query, headers) as stream:
        yield stream


@asynccontextmanager
async def _open_ws(
    base: Any, transport: str, query: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[StreamClient]:
    url = f"{base.ws_url}/stream/ws?{httpx.QueryParams(query)}"
    stream = StreamClient("ws")
    async with open_websocket_url(url, extra_headers=list(headers.items())) as conn:
        heartbeat: list[float] = []
        have_ready = trio.Event()

        async def pump() -> None:
            frames = 0
            while True:
                try:
                    message = await conn.get_message()
                except ConnectionClosed as exc:
                    stream._finish(StreamEnded(exc.reason.code, exc.reason.reason))
                    return
                assert isinstance(message, str), "rt sends text frames only"
                stream.raw += message.encode() + b"\n"
                lines = message.split("\n")
                assert all(lines), f"a frame is objects separated by single newlines: {message!r}"
                for line in lines:
                    obj = _object(json.loads(line), "ws frame")
                    if obj["type"] == "ready" and not have_ready.is_set():
                        heartbeat.append(float(obj["heartbeat"]))
                        have_ready.set()
                    stream._put(obj, {"frame": frames})
                frames += 1

        async def keepalive() -> None:
            """WebSocket Ping frames, which the server's silence watchdog counts."""
            await have_ready.wait()
            interval = heartbeat[0] / 2
            while True:
                await trio.sleep(interval)  # time must pass between keep-alives
                try:
                    with trio.move_on_after(heartbeat[0]):
                        await conn.ping()
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            nursery.start_soon(keepalive)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_http_stream(
    base: Any, transport: str, query: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[StreamClient]:
    callback = query.get("callback")
    stream = StreamClient(transport, callback)
    timeout = httpx.Timeout(30, read=None)
    async with httpx.AsyncClient(base_url=base.url, timeout=timeout, verify=TLS) as http:
        stream.requests += 1
        async with http.stream("GET", f"/stream/{transport}", params=query, headers=headers) as r:
            stream.answered += 1
            stream.status, stream.headers = r.status_code, r.headers
            if r.status_code != 200:
                raise Refused(r.status_code, await r.aread(), r.headers)
            content_type = r.headers.get("content-type", "")
            decoder: _Decoder
            if transport == "sse":
                decoder = SseDecoder(stream)
            elif transport == "xhr":
                decoder = NdjsonDecoder()
            elif transport == "multipart":
                decoder = PartsDecoder(content_type)
            else:
                decoder = HtmlFileDecoder(callback)

            async def pump() -> None:
                try:
                    async for chunk in r.aiter_bytes():
                        stream.raw += chunk
                        decoder.feed(chunk)
                        if isinstance(decoder, HtmlFileDecoder):
                            decoder.check_preamble(bytes(stream.raw))
                        for obj, info in decoder.take():
                            stream._put(obj, info)
                except httpx.HTTPError as exc:
                    stream._finish(StreamEnded(clean=False, detail=repr(exc)))
                    return
                problem = decoder.close()
                for obj, info in decoder.take():
                    stream._put(obj, info)
                stream._finish(StreamEnded(clean=not problem, detail=problem))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                try:
                    yield stream
                finally:
                    nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_polling(
    base: Any, transport: str, query: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[StreamClient]:
    callback = query.get("callback")
    stream = StreamClient(transport, callback)
    state = {"cursor": query.pop("cursor", None), "epoch": query.pop("epoch", None)}
    async with httpx.AsyncClient(base_url=base.url, timeout=30, verify=TLS) as http:

        async def poll_once() -> list[dict[str, Any]] | None:
            """One poll's objects; None if rate limited (after waiting)."""
            params = _clean({**query, **state})
            stream.requests += 1
            r = await http.get(f"/stream/{transport}", params=params, headers=headers)
            stream.answered += 1
            if stream.status is None:
                stream.status, stream.headers = r.status_code, r.headers
            if r.status_code == 429:
                await trio.sleep(float(r.headers.get("retry-after", "1")))  # as told
                return None
            if r.status_code != 200:
                raise Refused(r.status_code, r.content, r.headers)
            raw = r.content
            stream.raw += raw
            return polling_answer(transport, raw, callback)

        def deliver(objects: list[dict[str, Any]], number: int) -> bool:
            """Queue one answer's objects; True if it ended the stream (`close`)."""
            for index, obj in enumerate(objects):
                if obj["type"] == "ready":
                    state["cursor"], state["epoch"] = obj["cursor"], obj["epoch"]
                elif isinstance(obj.get("id"), int):
                    state["cursor"] = obj["id"]
                stream._put(obj, {"poll": number, "index": index})
                if obj["type"] == "close":
                    stream._finish(StreamEnded())
                    return True
            return False

        first = None
        while first is None:
            first = await poll_once()
        polls = 1
        done = deliver(first, 0)

        async def loop() -> None:
            nonlocal polls
            while True:
                try:
                    objects = await poll_once()
                except Refused as refused:
                    stream._finish(StreamEnded(clean=False, detail=str(refused)))
                    return
                except httpx.HTTPError as exc:
                    stream._finish(StreamEnded(clean=False, detail=repr(exc)))
                    return
                if objects is None:
                    continue
                polls += 1
                if deliver(objects, polls - 1):
                    return

        async with trio.open_nursery() as nursery:
            if not done:
                nursery.start_soon(loop)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()


async def refusal(api: Any, transport: str, flows: list[str], **kwargs: Any) -> tuple[int, str]:
    """(HTTP status, error code) of a stream request that must be refused.

    For ws, the close code of the accepted upgrade maps to the matching status
    (PROTOCOL.md section 6); anything delivered first fails.
    """
    try:
        async with open_stream(api, transport, flows, **kwargs) as s:
            obj = None
            try:
                obj = await s.next_any()
            except StreamEnded as end:
                assert transport == "ws", f"{transport} ended without an HTTP refusal"
                assert end.code in WS_REFUSALS, f"unexpected close {end.code}"
                return WS_REFUSALS[end.code], end.reason or ""
            raise AssertionError(f"{transport}: a refused stream delivered {obj}")
    except Refused as refused:
        assert transport != "ws"
        assert refused.headers.get("content-type", "").startswith("application/json")
        return refused.status, refused.code or ""


# -- raw sockets ---------------------------------------------------------------------------


@dataclass
class RawStream:
    """One stream on a raw trio socket: exact body bytes and when they arrived.

    HTTP transports: the request is written by hand; the body is de-chunked.
    ws: a wsproto upgrade; `body` is each text frame followed by `\\n`.
    """

    sock: trio.SocketStream
    transport: str
    body: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, len(body))
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    eof: bool = False
    received: int = 0  # bytes read from the socket
    close_code: int | None = None
    _buf: bytes = b""
    _chunked: bool = False
    _chunk_left: int = 0
    _chunk_state: str = "size"
    _ws: WSConnection | None = None
    _text: str = ""

    async def read_some(self, max_bytes: int = 65536) -> int:
        """Read once from the socket (at most `max_bytes`); the body bytes it added."""
        data = await self.sock.receive_some(max_bytes)
        self.received += len(data)
        before = len(self.body)
        if not data:
            self.eof = True
        elif self._ws is not None:
            self._ws.receive_data(data)
            self._ws_events()
        else:
            self._http(data)
        if len(self.body) > before:
            self.arrivals.append((trio.current_time(), len(self.body)))
        return len(self.body) - before

    async def read_until(self, predicate: Callable[[bytes], bool]) -> bytes:
        while not predicate(bytes(self.body)):
            assert not self.eof, f"the connection ended: {bytes(self.body[-300:])!r}"
            await self.read_some()
        return bytes(self.body)

    def _ws_events(self) -> None:
        assert self._ws is not None
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                self.status = 101
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self.body += self._text.encode() + b"\n"
                    self._text = ""
            elif isinstance(event, CloseConnection):
                self.close_code = event.code

    def _http(self, data: bytes) -> None:
        self._buf += data
        if self.status is None:
            head, sep, rest = self._buf.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ")[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
            self._buf = rest
        if not self._chunked:
            self.body += self._buf
            self._buf = b""
            return
        while self._buf:
            if self._chunk_state == "size":
                line, sep, rest = self._buf.partition(b"\r\n")
                if not sep:
                    return
                self._chunk_left = int(line.split(b";")[0], 16)
                self._buf = rest
                self._chunk_state = "data" if self._chunk_left else "done"
            elif self._chunk_state == "data":
                take = self._buf[: self._chunk_left]
                self.body += take
                self._chunk_left -= len(take)
                self._buf = self._buf[len(take) :]
                if not self._chunk_left:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buf) < 2:
                    return
                assert self._buf[:2] == b"\r\n", self._buf[:20]
                self._buf = self._buf[2:]
                self._chunk_state = "size"
            else:  # done: the trailer
                self._buf = b""

    @property
    def done(self) -> bool:
        """The response or socket ended (last chunk, close frame or EOF)."""
        return self.eof or self._chunk_state == "done" or self.close_code is not None

    async def aclose(self) -> None:
        await self.sock.aclose()


async def raw_stream(
    server: Any, transport: str, query: dict[str, Any], token: str, rcvbuf: int | None = None
) -> RawStream:
    """Open a stream on a raw socket (Authorization header); returns once headers arrived.

    `rcvbuf` shrinks the socket's receive buffer before it connects, so that the
    server's writes block sooner when the client reads slowly or not at all.
    """
    query = dict(query)
    if transport in ("htmlfile", "jsonp"):
        query.setdefault("callback", CALLBACK)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
    await sock.connect((server.host, server.port))
    raw = RawStream(trio.SocketStream(sock), transport)
    target = f"/stream/{transport}?{httpx.QueryParams(_clean(query))}"
    host = f"{server.host}:{server.port}"
    if transport == "ws":
        raw._ws = WSConnection(ConnectionType.CLIENT)
        await raw.sock.send_all(
            raw._ws.send(
                Request(
                    host=host,
                    target=target,
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                )
            )
        )
    else:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: */*\r\n\r\n"
        )
        await raw.sock.send_all(request.encode("ascii"))
    while raw.status is None:
        assert not raw.eof, "the connection ended before the response"
        await raw.read_some()
    return raw
