"""Tier 2: the `ws` and `sse` stream transports against the real in-process server.

PROTOCOL.md sections 3, 3.1, 3.3, 5 and 6, on real sockets: trio-websocket
and httpx for ordinary clients, raw trio sockets (h11, wsproto) where exact
bytes or an abrupt disconnect matter. Every test runs its own server with
short real intervals where time must pass.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from rt.core.codec import encode
from rt.core.ops import post_op
from rt.web.server import Server
from tests import worlds
from tests.helpers import Api, client_id, new_flow, stream_query, uuid, wait_for
from tests.worlds import World, http_client

TRANSPORTS = ["ws", "sse"]
STORED_TYPES = {"message", "edit", "tag", "delete"}
EPHEMERAL_TYPES = {"presence", "typing"}
# httpx builds a TLS context (loading the CA bundle, ~50 ms) for every client; these
# clients speak plain HTTP to loopback, so they share one made once.

READY_FIELDS = {
    "type",
    "protocol",
    "cursor",
    "epoch",
    "reset",
    "flows",
    "client",
    "transport",
    "heartbeat",
    "poll_timeout",
    "presence",
}


# -- clients ---------------------------------------------------------------------------


class StreamClosed(Exception):
    """The stream's connection ended: `code`/`reason` of a WebSocket close, None for SSE."""

    def __init__(
        self, code: int | None = None, reason: str | None = None, clean: bool = True
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.clean = clean
        self.event: Any = None  # wsproto's CloseConnection, for RawWs


class StreamConn:
    """What both transports share: objects in order, and helpers that skip the noise."""

    transport = ""
    epoch: str | None = None

    async def raw_next(self) -> dict[str, Any]:
        raise NotImplementedError

    async def next(self) -> dict[str, Any]:
        """The next object that is not a heartbeat."""
        while True:
            obj = await self.raw_next()
            if obj.get("type") != "heartbeat":
                return obj

    async def ready(self) -> dict[str, Any]:
        obj = await self.raw_next()
        assert obj.get("type") == "ready", f"the first frame must be ready, got {obj}"
        self.epoch = obj["epoch"]
        return obj

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            obj = await self.raw_next()
            if predicate(obj):
                return obj

    async def stored(self) -> dict[str, Any]:
        """The next stored event, skipping heartbeats and ephemeral events; fails on control."""
        while True:
            obj = await self.raw_next()
            kind = obj.get("type")
            if kind == "heartbeat" or kind in EPHEMERAL_TYPES:
                continue
            assert kind in STORED_TYPES, f"expected a stored event, got {obj}"
            assert isinstance(obj.get("id"), int), obj
            return obj

    async def close_frame(self) -> dict[str, Any]:
        """The next `close` control frame; stored events before it are an error."""
        while True:
            obj = await self.raw_next()
            kind = obj.get("type")
            if kind == "close":
                return obj
            assert kind == "heartbeat" or kind in EPHEMERAL_TYPES, f"expected close, got {obj}"

    async def closed(self) -> StreamClosed:
        """Wait for the connection to end; anything first but heartbeats and presence fails."""
        while True:
            try:
                obj = await self.raw_next()
            except StreamClosed as end:
                return end
            kind = obj.get("type")
            assert kind == "heartbeat" or kind in EPHEMERAL_TYPES, (
                f"expected the end of the stream, got {obj}"
            )


class WsConn(StreamConn):
    transport = "ws"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._pending: deque[dict[str, Any]] = deque()
        self.frames = 0

    async def raw_next(self) -> dict[str, Any]:
        while not self._pending:
            try:
                message = await self.conn.get_message()
            except ConnectionClosed as exc:
                raise StreamClosed(exc.reason.code, exc.reason.reason) from None
            assert isinstance(message, str), "rt sends text frames only"
            lines = message.split("\n")
            assert all(lines), f"a frame is objects separated by single newlines: {message!r}"
            self.frames += 1
            self._pending.extend(json.loads(line) for line in lines)
        return self._pending.popleft()

    async def send(self, obj: Any) -> None:
        await self.conn.send_message(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def reply(self, ref: str) -> dict[str, Any]:
        """The next ack, error or pong with this ref (events in between are skipped)."""
        return await self.until(
            lambda o: o.get("type") in ("ack", "error", "pong") and o.get("ref") == ref
        )


class SseConn(StreamConn):
    """SSE parsed line by line; checks the framing of PROTOCOL.md 3.1 on every object."""

    transport = "sse"

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.retry: int | None = None
        self.first_line: str | None = None
        self.last_event_id: str | None = None

    async def _line(self) -> str:
        try:
            line = await self._lines.__anext__()
        except StopAsyncIteration:
            raise StreamClosed() from None
        except httpx.HTTPError as exc:
            raise StreamClosed(reason=repr(exc), clean=False) from None
        if self.first_line is None:
            self.first_line = line
        return line

    async def raw_next(self) -> dict[str, Any]:
        event: str | None = None
        event_id: str | None = None
        data: list[str] = []
        while True:
            line = await self._line()
            if line == "":
                if data:
                    return self._check(json.loads("\n".join(data)), event, event_id)
                assert event is None and event_id is None, "an id or event line without data"
                continue
            if line.startswith(":"):
                assert line == ": hb", f"unexpected comment {line!r}"
                assert not data and event is None, "a comment inside an event"
                return {"type": "heartbeat"}
            field, _, value = line.partition(": ")
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "id":
                event_id = value
            elif field == "retry":
                assert self.retry is None, "retry sent twice"
                self.retry = int(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")

    def _check(
        self, obj: dict[str, Any], event: str | None, event_id: str | None
    ) -> dict[str, Any]:
        kind = obj.get("type")
        if kind == "ready":
            assert event == "ready"
            assert event_id == f"{obj['epoch']}:{obj['cursor']}"
            self.last_event_id = event_id
            self.epoch = obj["epoch"]
        elif isinstance(obj.get("id"), int):
            assert event is None, f"a stored event has no event: line, got {event!r}"
            assert event_id == f"{self.epoch}:{obj['id']}", (event_id, obj)
            self.last_event_id = event_id
        else:
            assert event == kind, (event, obj)
            assert event_id is None, (event_id, obj)
        return obj


@asynccontextmanager
async def open_stream(
    transport: str,
    api: Api,
    flows: list[str],
    client: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    ticket: bool = False,
    **params: Any,
) -> AsyncIterator[StreamConn]:
    """A stream of `api`'s user (Authorization header, or a ticket if `ticket`)."""
    client = client or client_id()
    query = stream_query(flows, client, **params)
    hdrs = dict(headers or {})
    if ticket:
        query["ticket"] = await api.ticket(client)
    elif api.token:
        hdrs["Authorization"] = f"Bearer {api.token}"
    server = api.server
    if transport == "ws":
        url = f"{server.ws_url}/stream/ws?{httpx.QueryParams(query)}"
        async with open_websocket_url(url, extra_headers=list(hdrs.items())) as conn:
            yield WsConn(conn)
    else:
        async with http_client(server) as http:
            async with http.stream("GET", "/stream/sse", params=query, headers=hdrs) as r:
                assert r.status_code == 200, (r.status_code, await r.aread())
                assert r.headers["content-type"].startswith("text/event-stream")
                yield SseConn(r)


class RawHttp:
    """One HTTP/1.1 request over a raw trio socket, the response body as exact bytes (h11)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.response: h11.Response | None = None
        self.body = bytearray()
        self.chunks: list[bytes] = []
        self.ended = False

    @classmethod
    async def get(
        cls, server: Server, target: str, headers: dict[str, str], http_version: str = "1.1"
    ) -> RawHttp:
        raw = cls(await trio.open_tcp_stream(server.host, server.port))
        if http_version == "1.0":  # h11 only sends 1.1: write the request, skip the head
            lines = [
                f"GET {target} HTTP/1.0",
                f"Host: {server.host}:{server.port}",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            await raw.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await raw.stream.receive_some(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            status_line, *fields = head.decode().split("\r\n")
            raw.response = h11.Response(
                status_code=int(status_line.split()[1]),
                http_version="1.0",
                headers=[tuple(f.split(": ", 1)) for f in fields],
            )
            raw.conn = None
            raw.body += rest
            return raw
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", f"{server.host}:{server.port}"), *headers.items()],
        )
        await raw.stream.send_all(raw.conn.send(request) + raw.conn.send(h11.EndOfMessage()))
        while raw.response is None:
            event = await raw._event()
            if isinstance(event, h11.Response):
                raw.response = event
        return raw

    async def _event(self) -> Any:
        if self.conn is None:  # HTTP/1.0: the body is every byte until the connection closes
            data = await self.stream.receive_some(65536)
            return h11.Data(data=data) if data else h11.ConnectionClosed()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def read_until(self, predicate: Callable[[bytes], bool]) -> bytes:
        while not predicate(bytes(self.body)):
            assert not self.ended, f"the body ended: {bytes(self.body)!r}"
            event = await self._event()
            if isinstance(event, h11.Data):
                self.chunks.append(bytes(event.data))
                self.body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.ended = True
        return bytes(self.body)

    def header(self, name: str) -> str | None:
        assert self.response is not None
        for key, value in self.response.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None

    async def abort(self) -> None:
        await self.stream.aclose()


class RawWs:
    """A WebSocket client on a raw trio socket (wsproto), for abrupt disconnects."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._texts: deque[str] = deque()
        self._partial = ""
        self._closed: StreamClosed | None = None  # raised once the texts before it are read

    @classmethod
    async def connect(
        cls, server: Server, query: dict[str, Any], token: str, rcvbuf: int | None = None
    ) -> RawWs:
        """Upgrade; `rcvbuf` shrinks the client's receive buffer, so that writes block sooner."""
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect((server.host, server.port))
        raw = cls(trio.SocketStream(sock))
        target = f"/stream/ws?{httpx.QueryParams(query)}"
        await raw.stream.send_all(
            raw.ws.send(
                Request(
                    host=f"{server.host}:{server.port}",
                    target=target,
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                )
            )
        )
        accepted = False
        while not accepted:
            for event in await raw._events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                else:
                    raw._take(event)
        return raw

    async def _events(self) -> list[Any]:
        data = await self.stream.receive_some(65536)
        if not data:
            raise StreamClosed(reason="eof", clean=False)
        self.ws.receive_data(data)
        return list(self.ws.events())

    def _take(self, event: Any) -> None:
        if isinstance(event, TextMessage):
            self._partial += event.data
            if event.message_finished:
                self._texts.extend(self._partial.split("\n"))
                self._partial = ""
        elif isinstance(event, CloseConnection):
            self._closed = StreamClosed(event.code, event.reason)
            self._closed.event = event

    async def next(self) -> dict[str, Any]:
        """The next object; StreamClosed once every object before the close frame was read."""
        while not self._texts:
            if self._closed is not None:
                raise self._closed
            for event in await self._events():
                self._take(event)
        return json.loads(self._texts.popleft())

    async def send(self, obj: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=json.dumps(obj))))

    async def abort(self) -> None:
        await self.stream.aclose()


# Whether `world()` serves with the fast paths (rt/web/raw_routes.py, direct writes); the
# `ws_path` fixture runs a WebSocket test both ways, so the ASGI path stays tested
# (it still serves TLS and upgrades on reused connections).
_FAST_PATHS = True


@pytest.fixture(params=["fast", "asgi"])
def ws_path(request: pytest.FixtureRequest) -> Iterator[str]:
    global _FAST_PATHS
    _FAST_PATHS = request.param == "fast"
    try:
        yield request.param
    finally:
        _FAST_PATHS = True


@asynccontextmanager
async def world(**overrides: Any) -> AsyncIterator[World]:
    """`tests.worlds.world` on the fast paths or not, as the `ws_path` fixture says."""
    overrides.setdefault("fast_paths", _FAST_PATHS)
    async with worlds.world(**overrides) as w:
        yield w


async def expect_end(s: StreamConn, ws_code: int, reason: str) -> None:
    """After `close`: the socket closes with `ws_code`, or the SSE response ends cleanly."""
    end = await s.closed()
    if s.transport == "ws":
        assert (end.code, end.reason) == (ws_code, reason)
    else:
        assert end.code is None and end.clean, f"the SSE response did not end cleanly: {end}"


# -- ready -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ready_is_the_first_frame_with_every_field(transport):
    with trio.fail_after(10):
        async with world(heartbeat=7, poll_timeout=11) as w:
            for _ in range(3):
                await w.post(w.bob)
            store = w.service.feed
            cid = client_id()
            async with open_stream("ws", w.bob, ["general"]) as bob_stream:
                await bob_stream.ready()
                async with open_stream(
                    transport, w.alice, ["other", "general"], cid, ticket=(transport == "sse")
                ) as s:
                    ready = await s.ready()
                    assert set(ready) == READY_FIELDS
                    assert ready["protocol"] == 1
                    assert ready["cursor"] == store.head == 3
                    assert ready["epoch"] == store.epoch
                    assert re.fullmatch(r"[A-Za-z0-9_-]{8,32}", ready["epoch"])
                    assert ready["reset"] is False
                    assert ready["flows"] == ["other", "general"]
                    assert ready["client"] == cid
                    assert ready["transport"] == transport
                    assert ready["heartbeat"] == 7
                    assert ready["poll_timeout"] == 11
                    # the snapshot includes the user itself, and everyone else present
                    assert ready["presence"] == {"other": ["alice"], "general": ["alice", "bob"]}
                    if transport == "sse":
                        assert isinstance(s, SseConn)
                        assert s.first_line is not None and s.first_line.startswith("retry: ")
                        assert s.retry is not None and 1000 <= s.retry <= 5000
                        assert s.last_event_id == f"{store.epoch}:3"
                    history = await w.alice.history("general")
                    assert history["epoch"] == ready["epoch"]


@pytest.mark.parametrize("http_version", ["1.1", "1.0"])
async def test_sse_events_written_directly_are_exact_on_http_1_1_and_1_0(http_version, caplog):
    """Events go straight to the socket as whole chunks (HTTP/1.1, parsed by h11, which
    checks the chunk framing) or as raw bytes (HTTP/1.0, close-delimited): a lone event
    and a batch of five, byte for byte what the framer makes, in order."""
    with trio.fail_after(10):
        async with world() as w:
            target = f"/stream/sse?{httpx.QueryParams(stream_query(['general'], client_id()))}"
            raw = await RawHttp.get(
                w.server, target, {"Authorization": f"Bearer {w.alice.token}"}, http_version
            )
            try:
                await raw.read_until(lambda b: b"event: ready" in b and b.endswith(b"\n\n"))
                await w.wait_counts((1, 1))
                start = len(raw.body)
                lone = await w.post(w.bob)
                ids = [lone["id"], *await w.burst("bob", 5)]
                epoch = w.service.feed.epoch.encode()
                body = await raw.read_until(lambda b: b"%s:%d\n" % (epoch, ids[-1]) in b)
                events = [
                    json.loads(line[6:])
                    for line in body[start:].split(b"\n")
                    if line.startswith(b"data: ")
                ]
                assert [e["id"] for e in events] == ids
                expected = b"".join(
                    b"id: %s:%d\ndata: %s\n\n" % (epoch, e["id"], encode(e)) for e in events
                )
                assert body[start:] == expected
            finally:
                await raw.abort()
    # a failing direct write falls back to the buffered path, logging the bug
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


async def test_sse_exact_bytes_preamble_ready_heartbeat_and_events():
    with trio.fail_after(10):
        async with world(heartbeat=0.3) as w:
            await w.post(w.alice)
            cid = client_id()
            target = f"/stream/sse?{httpx.QueryParams(stream_query(['general'], cid))}"
            raw = await RawHttp.get(w.server, target, {"Authorization": f"Bearer {w.alice.token}"})
            try:
                assert raw.response is not None and raw.response.status_code == 200
                assert raw.header("content-type").startswith("text/event-stream")
                assert raw.header("cache-control") == "no-store, no-transform"
                assert raw.header("x-accel-buffering") == "no"
                assert raw.header("x-content-type-options") == "nosniff"
                assert raw.header("referrer-policy") == "no-referrer"
                epoch = w.service.feed.epoch
                body = await raw.read_until(
                    lambda b: re.match(rb"retry: .*?\n\n.*?\n\n", b, re.S) is not None
                )
                match = re.match(
                    rb"retry: (\d+)\n\nid: ([^\n]+)\nevent: ready\ndata: ([^\n]+)\n\n", body
                )
                assert match, body
                assert 1000 <= int(match.group(1)) <= 5000
                assert match.group(2).decode() == f"{epoch}:1"
                ready = json.loads(match.group(3))
                assert ready["type"] == "ready" and ready["cursor"] == 1
                # idle: nothing but heartbeat comments (after alice's own `online`, if the
                # server sends it: redundant with the snapshot, and allowed on top of it)
                rest = len(match.group(0))
                body = await raw.read_until(lambda b: b[rest:].count(b": hb\n\n") >= 2)
                presence = (
                    b'event: presence\ndata: {"type":"presence","flow":"general",'
                    b'"user":"alice","state":"online"}\n\n'
                )
                tail = body[rest:]
                tail = tail[len(presence) :] if tail.startswith(presence) else tail
                assert tail == b": hb\n\n" * 2, body[rest:]
                mark = len(body)
                event = await w.post(w.alice, content="<tag> & \u2028")
                body = await raw.read_until(
                    lambda b: b"data: " in b[mark:] and b[mark:].endswith(b"\n\n")
                )
                frame = body[mark:].replace(b": hb\n\n", b"")
                match = re.fullmatch(rb"id: ([^\n]+)\ndata: ([^\n]+)\n\n", frame)
                assert match, frame
                assert match.group(1) == b"%s:%d" % (epoch.encode(), event["id"])
                assert b"\\u003ctag\\u003e \\u0026 \\u2028" in match.group(2)
                assert json.loads(match.group(2)) == event
            finally:
                await raw.abort()


# -- delivery --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_delivery_echo_and_unfollowed_flows(transport):
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream(transport, w.alice, ["general"]) as s:
                await s.ready()
                # another user's post, then an unfollowed flow's, then the sender's own echo
                from_bob = await w.post(w.bob, "general", "from bob")
                assert await s.stored() == from_bob
                await w.post(w.alice, "other", "not followed")
                own = await w.post(w.alice, "general", "own echo")
                got = await s.stored()
                assert got == own, "an event of an unfollowed flow was delivered"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stored_events_arrive_in_id_order_across_flows(transport):
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream(transport, w.alice, ["general", "other"]) as s:
                await s.ready()
                expected: list[int] = []
                for i in range(10):
                    flow = "general" if i % 3 else "other"
                    expected.append((await w.post(w.bob, flow))["id"])
                expected += await w.burst("bob", 20, "other")
                expected += await w.burst("bob", 20, "general")
                got = [(await s.stored())["id"] for _ in expected]
                assert got == sorted(expected) == expected


# -- resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_from_cursor_gets_the_rest_then_live_without_duplicate(transport):
    with trio.fail_after(10):
        async with world() as w:
            ids = [
                (await w.post(w.alice, "general" if i % 5 else "other"))["id"] for i in range(30)
            ]
            general = [i for n, i in enumerate(ids) if n % 5]
            epoch = w.service.feed.epoch
            cursor = ids[9]
            async with open_stream(
                transport, w.alice, ["general", "other"], cursor=cursor, epoch=epoch
            ) as s:
                ready = await s.ready()
                assert ready["cursor"] == cursor and ready["reset"] is False
                got = [(await s.stored())["id"] for _ in range(20)]
                assert got == ids[10:] == list(range(11, 31))
                live = await w.post(w.bob)
                assert (await s.stored())["id"] == live["id"] == 31
            # the same from one flow only: only that flow's ids
            async with open_stream(
                transport, w.alice, ["general"], cursor=cursor, epoch=epoch
            ) as s:
                await s.ready()
                want = [i for i in general if i > cursor] + [31]
                got = [(await s.stored())["id"] for _ in want]
                assert got == want


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_over_many_pages_while_posts_continue(transport):
    """Invariant 2 under load: catch-up pages and live events meet with no gap or duplicate."""
    with trio.fail_after(20):
        async with world(ops_rate=100000, ops_burst=100000) as w:
            for _ in range(3):
                await w.burst("bob", 400)
            epoch = w.service.feed.epoch
            cursor = 7
            live: list[int] = []
            stop = trio.Event()

            async def keep_posting() -> None:
                while not stop.is_set():
                    live.extend(await w.burst("bob", 5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_posting)
                async with open_stream(
                    transport, w.alice, ["general"], cursor=cursor, epoch=epoch
                ) as s:
                    ready = await s.ready()
                    assert ready["reset"] is False and ready["cursor"] == cursor
                    got: list[int] = []
                    while len(got) < 1300:
                        got.append((await s.stored())["id"])
                    stop.set()
                    await wait_for(lambda: not nursery.child_tasks)
                    last = w.service.feed.head
                    while got[-1] < last:
                        got.append((await s.stored())["id"])
            assert got == list(range(cursor + 1, last + 1))
            assert live, "the poster never ran during the catch-up"


async def test_sse_last_event_id_wins_over_parameters():
    with trio.fail_after(10):
        async with world() as w:
            ids = [(await w.post(w.alice))["id"] for _ in range(30)]
            epoch = w.service.feed.epoch
            # parameters say "reset" (stale epoch), the header says resume from the 10th
            async with open_stream(
                "sse",
                w.alice,
                ["general"],
                cursor=ids[2],
                epoch="stale-epoch",
                headers={"Last-Event-ID": f"{epoch}:{ids[9]}"},
            ) as s:
                ready = await s.ready()
                assert ready["reset"] is False and ready["cursor"] == ids[9]
                assert (await s.stored())["id"] == ids[10]
            # parameters are valid, the header is stale: the header still wins
            async with open_stream(
                "sse",
                w.alice,
                ["general"],
                cursor=ids[2],
                epoch=epoch,
                headers={"Last-Event-ID": f"otherepoch:{ids[9]}"},
            ) as s:
                ready = await s.ready()
                assert ready["reset"] is True and ready["cursor"] == ids[-1]
            # a malformed header is an untrusted cursor: reset, never a refusal (issue 9)
            async with open_stream(
                "sse",
                w.alice,
                ["general"],
                cursor=ids[2],
                epoch=epoch,
                headers={"Last-Event-ID": "garbage"},
            ) as s:
                ready = await s.ready()
                assert ready["reset"] is True and ready["cursor"] == ids[-1]


# What a browser can carry over to /stream/sse in Last-Event-ID: an id another
# server sent on the same URL, a bare number, junk. EventSource gives up for good
# on a non-200 answer, so each must be a 200 whose `ready` resets (issue 9).
FOREIGN_LAST_EVENT_IDS = [
    "5",
    "garbage",
    "otherepoch:5",
    "otherepoch:abc",
    ":",
    "a:b:c",
    "abcdefgh:99999999999999999999",
    "x" * 200,
    "abcdefgh:-1",
]


@pytest.mark.parametrize("value", FOREIGN_LAST_EVENT_IDS)
async def test_sse_foreign_last_event_id_resets_instead_of_failing(value):
    with trio.fail_after(10):
        async with world() as w:
            ids = [(await w.post(w.alice))["id"] for _ in range(3)]
            async with open_stream(
                "sse", w.alice, ["general"], headers={"Last-Event-ID": value}
            ) as s:  # asserts 200
                ready = await s.ready()
                assert ready["reset"] is True and ready["cursor"] == ids[-1]
                posted = await w.post(w.alice)
                assert (await s.stored())["id"] == posted["id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "case", ["stale_epoch", "cursor_above_head", "cursor_without_epoch", "epoch_without_cursor"]
)
async def test_invalid_resume_resets_to_head(transport, case):
    with trio.fail_after(10):
        async with world() as w:
            for _ in range(5):
                await w.post(w.alice)
            epoch = w.service.feed.epoch
            params = {
                "stale_epoch": {"cursor": 2, "epoch": "an-older-epoch"},
                "cursor_above_head": {"cursor": 6, "epoch": epoch},
                "cursor_without_epoch": {"cursor": 2},
                "epoch_without_cursor": {"epoch": epoch},
            }[case]
            async with open_stream(transport, w.alice, ["general"], **params) as s:
                ready = await s.ready()
                assert ready["reset"] is True
                assert ready["cursor"] == 5 and ready["epoch"] == epoch
                live = await w.post(w.bob)
                assert (await s.stored())["id"] == live["id"] == 6


# -- heartbeats ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_idle_stream_sends_heartbeats(transport):
    heartbeat = 0.3
    with trio.fail_after(10):
        async with world(heartbeat=heartbeat) as w:
            async with open_stream(transport, w.alice, ["general"]) as s:
                await s.ready()
                for _ in range(3):
                    started = trio.current_time()
                    obj = await s.raw_next()
                    while obj.get("type") == "presence":  # alice's own online
                        started = trio.current_time()
                        obj = await s.raw_next()
                    assert obj == {"type": "heartbeat"}
                    waited = trio.current_time() - started
                    assert waited >= heartbeat * 0.5, f"heartbeat after only {waited:.3f} s"
                    if isinstance(s, WsConn):  # keep the watchdog quiet
                        await s.send({"op": "ping", "ref": "keep"})
                        assert (await s.reply("keep"))["type"] == "pong"
                # a busy stream is not interleaved with heartbeats before its events
                event = await w.post(w.bob)
                assert await s.stored() == event


# -- takeover, eviction ----------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), list(itertools.product(TRANSPORTS, TRANSPORTS)))
async def test_takeover_supersedes_the_old_stream(old, new):
    with trio.fail_after(10):
        async with world(write_timeout=0.5) as w:
            assert w.counts() == (0, 0)
            cid = client_id()
            async with open_stream(old, w.alice, ["general"], cid) as first:
                await first.ready()
                await w.wait_counts((1, 1))
                async with open_stream(new, w.alice, ["general"], cid) as second:
                    ready = await second.ready()
                    assert ready["client"] == cid
                    close = await first.close_frame()
                    assert close == {"type": "close", "reason": "superseded"}
                    await expect_end(first, 4009, "superseded")
                    event = await w.post(w.bob)
                    assert await second.stored() == event
                    await w.wait_counts((1, 1))
                    assert w.service.claims.by_key[("alice", cid)].transport == new
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_takeover_race_of_three_leaves_exactly_one_delivering(transport):
    """Three streams of one client id opened at once: one survives, never two deliver."""
    with trio.fail_after(10):
        async with world(write_timeout=0.5) as w:
            cid = client_id()
            ended: dict[int, dict[str, Any]] = {}
            readied: set[int] = set()
            got: dict[int, list[int]] = {i: [] for i in range(3)}

            async def one(i: int) -> None:
                async with open_stream(transport, w.alice, ["general"], cid) as s:
                    while True:
                        obj = await s.next()
                        kind = obj["type"]
                        if kind == "ready":
                            readied.add(i)
                        elif kind == "close":
                            ended[i] = obj
                            await s.closed()
                            return
                        elif kind in STORED_TYPES:
                            got[i].append(obj["id"])

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
                await wait_for(lambda: len(ended) == 2 and len(readied - set(ended)) == 1)
                await w.wait_counts((1, 1))
                (survivor,) = set(range(3)) - set(ended)
                assert w.service.claims.by_key[("alice", cid)] is not None
                event = await w.post(w.bob)
                await wait_for(lambda: got[survivor] == [event["id"]])
                assert all(not got[i] for i in ended)
                assert all(
                    close == {"type": "close", "reason": "superseded"} for close in ended.values()
                )
                nursery.cancel_scope.cancel()
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_third_stream_evicts_the_oldest(transport):
    with trio.fail_after(10):
        async with world(max_streams=2) as w:
            async with (
                open_stream(transport, w.alice, ["general"]) as s1,
                open_stream("ws", w.bob, ["general"]) as b,
            ):
                await s1.ready()
                await b.ready()
                async with open_stream(transport, w.alice, ["general"]) as s2:
                    await s2.ready()
                    async with open_stream(transport, w.alice, ["general"]) as s3:
                        await s3.ready()
                        close = await s1.close_frame()
                        assert close == {"type": "close", "reason": "evicted"}
                        await expect_end(s1, 4011, "evicted")
                        event = await w.post(w.bob)
                        assert await s2.stored() == event
                        assert await s3.stored() == event
                        assert await b.stored() == event  # bob's own stream is not counted
                        await w.wait_counts((3, 3))
            await w.wait_counts((0, 0))


# -- lagging ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("bound", ["objects", "bytes"])
async def test_lagging_stream_ends_and_resumes_without_gap(transport, bound):
    """The buffered path: direct writes off, so the burst lands in the stream's buffer."""
    limits = {"objects": {"buffer_objects": 5}, "bytes": {"buffer_bytes": 4096}}[bound]
    with trio.fail_after(10):
        async with world(**limits, fast_paths=False) as w:
            async with open_stream(transport, w.alice, ["general"]) as s:
                ready = await s.ready()
                cursor = ready["cursor"]
                await w.wait_counts((1, 1))
                # stored in one writer batch and published at once, before the stream's
                # task runs: more than its buffer holds (20 objects, 20 KB)
                ids = await w.burst("bob", 20, content="y" * 1000)
                assert ids == list(range(cursor + 1, cursor + 21))
                while True:
                    obj = await s.next()
                    if obj["type"] == "close":
                        break
                    if obj["type"] in STORED_TYPES:
                        assert obj["id"] == cursor + 1, "a gap before lagging"
                        cursor = obj["id"]
                assert obj["reason"] == "lagging"
                assert set(obj) == {"type", "reason", "retry_ms"}
                assert 0 <= obj["retry_ms"] <= 1000
                await expect_end(s, 4010, "lagging")
            assert cursor < ids[-1], "the stream did not lag before the end of the burst"
            async with open_stream(
                transport, w.alice, ["general"], cursor=cursor, epoch=ready["epoch"]
            ) as s:
                again = await s.ready()
                assert again["reset"] is False
                got = [(await s.stored())["id"] for _ in range(ids[-1] - cursor)]
                assert got == list(range(cursor + 1, ids[-1] + 1))
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_batch_over_two_flows_reaches_each_stream_as_its_own_run(transport):
    """One writer batch mixing flows: a stream of both flows and a stream of one each get
    exactly their events, in id order (their runs of the batch are framed separately)."""
    with trio.fail_after(10):
        async with world() as w:
            async with (
                open_stream(transport, w.alice, ["general", "other"]) as both,
                open_stream(transport, w.bob, ["other"]) as other,
            ):
                await both.ready()
                await other.ready()
                await w.wait_counts((2, 2))
                flows = ["general", "other", "other", "general", "other", "general"] * 4
                results: list[tuple[int, str]] = []

                async def one(flow: str) -> None:
                    result = await w.service.apply(
                        post_op("bob", flow, {"content": f"to {flow}", "uuid": uuid()})
                    )
                    results.append((result.body["id"], flow))

                async with trio.open_nursery() as nursery:
                    for flow in flows:
                        nursery.start_soon(one, flow)
                results.sort()
                want_both = [i for i, _ in results]
                want_other = [i for i, flow in results if flow == "other"]
                got_both = [(await both.stored())["id"] for _ in want_both]
                got_other = [(await other.stored())["id"] for _ in want_other]
                assert got_both == want_both
                assert got_other == want_other
                marker = await w.post(w.bob, "other")  # nothing of `general` came in between
                assert (await other.stored())["id"] == marker["id"]


async def open_unread_ws(w: World) -> tuple[RawWs, dict[str, Any]]:
    """A WebSocket client with a 4 KiB receive buffer that reads nothing after `ready`."""
    raw = await RawWs.connect(
        w.server, stream_query(["general"], client_id()), w.alice.token, rcvbuf=4096
    )
    ready = await raw.next()
    await w.wait_counts((1, 1))
    return raw, ready


# 400 posts of 16 KB: 6.4 MB, more than loopback socket buffers hold.
FILL_POSTS, FILL_CONTENT = 400, "z" * 16000


@pytest.mark.parametrize("bound", ["objects", "bytes"])
async def test_direct_writes_to_a_full_socket_lag_and_resume_without_gap(bound):
    """With direct writes (the default), each post goes straight to the idle stream's
    socket until the socket is full; then events buffer, and past the bound the stream
    lags. The client reads nothing until the posts are stored, then reads every object:
    consecutive ids, `lagging`, and a resume that gets the rest."""
    limits = {"objects": {"buffer_objects": 5}, "bytes": {"buffer_bytes": 40_000}}[bound]
    with trio.fail_after(20):
        async with world(**limits, ops_burst=500) as w:
            raw, ready = await open_unread_ws(w)
            cursor = ready["cursor"]
            try:
                ids = await w.one_by_one("bob", FILL_POSTS, FILL_CONTENT)
                assert ids == list(range(cursor + 1, cursor + FILL_POSTS + 1))
                while True:
                    obj = await raw.next()
                    if obj["type"] == "close":
                        break
                    assert obj["type"] == "message" and obj["id"] == cursor + 1, "a gap"
                    cursor = obj["id"]
                assert obj["reason"] == "lagging"
                with pytest.raises(StreamClosed) as end:
                    await raw.next()
                assert end.value.code == 4010
            finally:
                await raw.abort()
            assert cursor < ids[-1], "the stream did not lag before the end of the posts"
            async with open_stream(
                "ws", w.alice, ["general"], cursor=cursor, epoch=ready["epoch"]
            ) as s:
                assert (await s.ready())["reset"] is False
                got = [(await s.stored())["id"] for _ in range(ids[-1] - cursor)]
                assert got == list(range(cursor + 1, ids[-1] + 1))
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("then", ["reads everything", "disappears"])
async def test_direct_write_cut_short_by_a_full_socket(then, caplog):
    """Posts fill the socket of a client that does not read: one direct write is cut
    short, its rest pending, the writer flushing it while later events queue. A client
    that then reads gets every event once, in order, in intact frames; a client that
    disappears instead ends its connection cleanly. Nothing is logged as an error."""
    with trio.fail_after(20):
        async with world(buffer_objects=100_000, buffer_bytes=1 << 30, ops_burst=500) as w:
            raw, ready = await open_unread_ws(w)
            try:
                ids = await w.one_by_one("bob", FILL_POSTS, FILL_CONTENT)
                assert ids == list(range(ready["cursor"] + 1, ready["cursor"] + FILL_POSTS + 1))
                if then == "reads everything":
                    got = [(await raw.next())["id"] for _ in ids]
                    assert got == ids
            finally:
                await raw.abort()
            await w.wait_counts((0, 0), deadline=10)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


@pytest.mark.usefixtures("ws_path")
async def test_ws_write_that_outlasts_a_heartbeat_loses_nothing():
    """A slow client: one batch takes longer than a heartbeat to write, more events wait.

    The heartbeat deadline must bound only the wait for events, never the write of a
    batch already taken from the buffer (that batch would be lost: a silent gap).
    """
    heartbeat = 0.5
    with trio.fail_after(20):
        async with world(
            heartbeat=heartbeat, write_timeout=5, buffer_bytes=1 << 26, ops_rate=1e6, ops_burst=1e6
        ) as w:
            query = stream_query(["general"], client_id())
            raw = await RawWs.connect(w.server, query, w.alice.token, rcvbuf=4096)
            try:
                ready = await raw.next()
                assert ready["type"] == "ready"
                # more than the kernel buffers take while the client does not read
                first = await w.burst("bob", 300, content="x" * 16000)
                await raw.send({"op": "typing", "flow": "general"})  # the watchdog counts from here
                second = await w.burst("bob", 5)
                # time must pass: the client reads nothing for longer than a heartbeat
                await trio.sleep(heartbeat * 1.4)
                assert w.service.feed.head == second[-1]
                raw.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1 << 22)
                got: list[int] = []
                sentinel: int | None = None
                keepalive = trio.current_time()
                while sentinel is None or not got or got[-1] < sentinel:
                    if trio.current_time() - keepalive > heartbeat / 2:
                        # typing, not ping: a pong would wait behind the long write
                        await raw.send({"op": "typing", "flow": "general"})
                        keepalive = trio.current_time()
                    obj = await raw.next()
                    if obj.get("type") == "message":
                        got.append(obj["id"])
                    if sentinel is None and (
                        obj.get("type") == "heartbeat" or got and got[-1] == second[-1]
                    ):
                        sentinel = (await w.post(w.bob))["id"]
                assert first[0] == ready["cursor"] + 1
                assert got == list(range(ready["cursor"] + 1, sentinel + 1)), (
                    f"gap: {sorted(set(range(ready['cursor'] + 1, sentinel + 1)) - set(got))}"
                )
            finally:
                await raw.abort()


@pytest.mark.usefixtures("ws_path")
async def test_ws_big_batches_fit_the_common_1_mib_message_limit():
    """Catch-up and live batches of big messages reach a client with a 1 MiB limit.

    trio-websocket (like Python's websockets) closes with 1009 on a bigger message;
    a client that resumes from the same cursor would then fail for ever.
    """
    with trio.fail_after(10):
        async with world(ops_rate=1e6, ops_burst=1e6, buffer_bytes=1 << 26) as w:
            stored = await w.burst("bob", 60, content="<" * 16000)  # 96 KB each, escaped
            async with open_stream(
                "ws", w.alice, ["general"], cursor=0, epoch=w.service.feed.epoch
            ) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                live = await w.burst("bob", 60, content="&" * 16000)
                got = [(await s.stored())["id"] for _ in stored + live]
                assert got == stored + live
                assert s.frames >= 2 * 60 * 96_000 // (1 << 20)


# -- WebSocket ops ---------------------------------------------------------------------


async def _ack_and_echo(s: WsConn, ref: str, uid: str) -> tuple[dict, dict]:
    """The ack with `ref` and the stored event with `uuid` `uid`, in whichever order."""
    ack = echo = None
    while ack is None or echo is None:
        obj = await s.next()
        if obj.get("type") in ("ack", "error") and obj.get("ref") == ref:
            assert ack is None
            ack = obj
        elif obj.get("uuid") == uid and obj.get("type") in STORED_TYPES:
            assert echo is None
            echo = obj
    assert ack["type"] == "ack", ack
    return ack, echo


@pytest.mark.usefixtures("ws_path")
async def test_ws_ops_ack_and_echo():
    with trio.fail_after(10):
        async with world() as w:
            async with (
                open_stream("ws", w.alice, ["general"]) as s,
                open_stream("ws", w.bob, ["general"]) as b,
            ):
                assert isinstance(s, WsConn)
                await s.ready()
                await b.ready()
                # post
                uid = uuid()
                await s.send(
                    {"op": "post", "ref": "p1", "flow": "general", "content": "hi <3", "uuid": uid}
                )
                ack, echo = await _ack_and_echo(s, "p1", uid)
                assert set(ack) == {"type", "ref", "event"}
                assert ack["event"] == echo
                assert echo["type"] == "message" and echo["content"] == "hi <3"
                assert echo["user"] == "alice" and echo["flow"] == "general"
                assert await b.stored() == echo
                mid = echo["id"]
                # a retry of the same post returns the same event and stores nothing
                await s.send(
                    {"op": "post", "ref": "p2", "flow": "general", "content": "hi <3", "uuid": uid}
                )
                assert (await s.reply("p2")) == {"type": "ack", "ref": "p2", "event": echo}
                # edit
                uid = uuid()
                await s.send(
                    {
                        "op": "edit",
                        "ref": "e1",
                        "flow": "general",
                        "message": mid,
                        "content": "hello",
                        "uuid": uid,
                    }
                )
                ack, echo = await _ack_and_echo(s, "e1", uid)
                assert ack["event"] == echo
                assert echo["type"] == "edit" and echo["message"] == mid
                # an edit to the same content is a no-op: changed false and the state
                await s.send(
                    {
                        "op": "edit",
                        "ref": "e2",
                        "flow": "general",
                        "message": mid,
                        "content": "hello",
                        "uuid": uuid(),
                    }
                )
                noop = await s.reply("e2")
                assert noop["type"] == "ack" and noop["changed"] is False
                assert set(noop) == {"type", "ref", "changed", "state"}
                assert noop["state"] == {
                    "id": mid,
                    "flow": "general",
                    "user": "alice",
                    "sent": noop["state"]["sent"],
                    "content": "hello",
                    "tags": [],
                    "edited": echo["id"],
                    "deleted": False,
                }
                # tag
                uid = uuid()
                await s.send(
                    {
                        "op": "tag",
                        "ref": "t1",
                        "flow": "general",
                        "message": mid,
                        "add": ["Urgent"],
                        "remove": [],
                        "uuid": uid,
                    }
                )
                ack, echo = await _ack_and_echo(s, "t1", uid)
                assert ack["event"] == echo
                assert echo["type"] == "tag" and echo["tags"] == ["urgent"]
                await s.send(
                    {
                        "op": "tag",
                        "ref": "t2",
                        "flow": "general",
                        "message": mid,
                        "add": ["urgent"],
                        "remove": [],
                        "uuid": uuid(),
                    }
                )
                noop = await s.reply("t2")
                assert noop["changed"] is False and noop["state"]["tags"] == ["urgent"]
                # delete
                uid = uuid()
                await s.send(
                    {"op": "delete", "ref": "d1", "flow": "general", "message": mid, "uuid": uid}
                )
                ack, echo = await _ack_and_echo(s, "d1", uid)
                assert ack["event"] == echo and echo["type"] == "delete"
                await s.send(
                    {"op": "delete", "ref": "d2", "flow": "general", "message": mid, "uuid": uuid()}
                )
                noop = await s.reply("d2")
                assert noop["changed"] is False and noop["state"]["deleted"] is True
                assert noop["state"]["content"] == ""
                # no-ops stored nothing: bob sees exactly edit, tag, delete after the post
                kinds = [(await b.stored())["type"] for _ in range(3)]
                assert kinds == ["edit", "tag", "delete"]
                last = await w.post(w.bob)
                assert await b.stored() == last
                # an op on a missing message is an error that keeps the socket open
                await s.send(
                    {
                        "op": "edit",
                        "ref": "x",
                        "flow": "general",
                        "message": 9999,
                        "content": "nope",
                        "uuid": uuid(),
                    }
                )
                error = await s.reply("x")
                assert error["type"] == "error" and error["code"] == "not_found"
                assert error["retry"] is False


@pytest.mark.usefixtures("ws_path")
async def test_ws_ready_comes_before_replies_to_frames_sent_at_once():
    """A client that sends right after the upgrade (here during a takeover) gets `ready` first."""
    with trio.fail_after(10):
        async with world(write_timeout=0.5) as w:
            cid = client_id()
            async with open_stream("ws", w.alice, ["general"], cid) as old:
                await old.ready()
                async with open_stream("ws", w.alice, ["general"], cid) as s:
                    assert isinstance(s, WsConn)
                    await s.send({"op": "ping", "ref": "early"})
                    await s.send(
                        {
                            "op": "post",
                            "ref": "p",
                            "flow": "general",
                            "content": "x",
                            "uuid": uuid(),
                        }
                    )
                    await s.ready()
                    assert (await s.reply("early"))["type"] == "pong"
                    assert (await s.reply("p"))["type"] == "ack"
                    assert (await old.close_frame())["reason"] == "superseded"


@pytest.mark.usefixtures("ws_path")
async def test_ws_ping_pong_and_typing():
    with trio.fail_after(10):
        async with world() as w:
            async with (
                open_stream("ws", w.alice, ["general"]) as s,
                open_stream("ws", w.bob, ["general"]) as b,
            ):
                assert isinstance(s, WsConn)
                await s.ready()
                await b.ready()
                before = time.time() * 1000
                await s.send({"op": "ping", "ref": "r-1"})
                pong = await s.reply("r-1")
                after = time.time() * 1000
                assert set(pong) == {"type", "ref", "sent"}
                assert pong["type"] == "pong" and isinstance(pong["sent"], int)
                assert before - 1000 <= pong["sent"] <= after + 1000
                await s.send({"op": "typing", "flow": "general"})
                typing = await b.until(lambda o: o.get("type") == "typing")
                assert typing == {"type": "typing", "flow": "general", "user": "alice"}
                # the typist's own stream gets it too (PROTOCOL.md section 5)
                assert await s.until(lambda o: o.get("type") == "typing") == typing
                # a second typing within a second is dropped silently, and typing in an
                # unfollowed flow does not reach general's followers
                await s.send({"op": "typing", "flow": "general"})
                await b.send({"op": "typing", "flow": "other"})
                await b.send({"op": "ping", "ref": "sync"})
                assert (await b.reply("sync"))["type"] == "pong"
                event = await w.post(w.alice)
                obj = await b.until(lambda o: o.get("type") in ("typing", "message"))
                assert obj == event


BAD_FRAMES = [
    pytest.param({"op": "nope", "ref": "bad"}, "bad", id="unknown-op"),
    pytest.param({"ref": "bad"}, "bad", id="no-op"),
    pytest.param(
        {"op": "post", "ref": "bad", "flow": "general", "content": "x"},
        "bad",
        id="post-without-uuid",
    ),
    pytest.param({"op": "ping", "ref": "r" * 65}, None, id="ref-too-long"),
    pytest.param({"op": "ping", "ref": 7}, None, id="ref-not-a-string"),
    pytest.param("this is not json", None, id="not-json"),
    pytest.param("[1, 2]", None, id="not-an-object"),
    pytest.param("", None, id="empty-text"),
    pytest.param(b"", None, id="empty-binary"),
    pytest.param(b'{"op": "ping", "ref": "\xff"}', None, id="binary-not-utf8"),
]


@pytest.mark.usefixtures("ws_path")
@pytest.mark.parametrize(("frame", "ref"), BAD_FRAMES)
async def test_ws_bad_frame_gets_an_error_and_the_socket_stays_open(frame, ref):
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                await s.send(frame)
                error = await s.until(lambda o: o.get("type") == "error")
                assert set(error) == {"type", "ref", "code", "message", "retry"}
                assert error["ref"] == ref
                assert error["code"] == "bad_request"
                assert error["retry"] is False
                assert isinstance(error["message"], str) and error["message"]
                await s.send({"op": "ping", "ref": "alive"})
                assert (await s.reply("alive"))["type"] == "pong"


@pytest.mark.usefixtures("ws_path")
async def test_ws_ten_bad_frames_in_a_row_close_with_4400():
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                for round_ in range(2):  # nine failures, then a good frame resets the count
                    for i in range(9):
                        await s.send({"op": "nope", "ref": f"b{round_}-{i}"})
                        assert (await s.reply(f"b{round_}-{i}"))["type"] == "error"
                    await s.send({"op": "ping", "ref": f"ok{round_}"})
                    assert (await s.reply(f"ok{round_}"))["type"] == "pong"
                for i in range(10):
                    await s.send("not json" if i % 2 else {"op": "nope"})
                errors = 0
                with pytest.raises(StreamClosed) as end:
                    while True:
                        obj = await s.next()
                        if obj.get("type") == "error":
                            errors += 1
                assert errors == 10
                assert end.value.code == 4400


@pytest.mark.usefixtures("ws_path")
async def test_ws_rate_limited_ops_carry_retry_after_and_ten_close_with_4029():
    with trio.fail_after(10):
        async with world(ops_rate=0.5, ops_burst=1) as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                await s.send(
                    {"op": "post", "ref": "ok", "flow": "general", "content": "one", "uuid": uuid()}
                )
                assert (await s.reply("ok"))["type"] == "ack"
                for i in range(9):
                    await s.send(
                        {
                            "op": "post",
                            "ref": f"r{i}",
                            "flow": "general",
                            "content": "more",
                            "uuid": uuid(),
                        }
                    )
                for i in range(9):
                    error = await s.reply(f"r{i}")
                    assert error["type"] == "error" and error["code"] == "rate_limited"
                    assert error["retry"] is True
                    assert isinstance(error["retry_after"], int)
                    assert 0 < error["retry_after"] <= 2000
                await s.send({"op": "ping", "ref": "alive"})
                assert (await s.reply("alive"))["type"] == "pong"
                for i in range(10):
                    await s.send(
                        {
                            "op": "post",
                            "ref": f"q{i}",
                            "flow": "general",
                            "content": "more",
                            "uuid": uuid(),
                        }
                    )
                errors = 0
                with pytest.raises(StreamClosed) as end:
                    while True:
                        obj = await s.next()
                        if obj.get("type") == "error":
                            assert obj["code"] == "rate_limited"
                            errors += 1
                assert errors == 10
                assert end.value.code == 4029


@pytest.mark.usefixtures("ws_path")
async def test_ws_close_by_the_server_while_other_replies_are_due_is_clean(caplog):
    """Frames still failing while the server closes (4029): no send after close, no error.

    A raw client sends all its frames at once and then reads, so that it still
    reads the close frame however late it comes.
    """
    with trio.fail_after(10):
        async with world(ops_rate=0.5, ops_burst=1) as w:
            query = stream_query(["general"], client_id())
            raw = await RawWs.connect(w.server, query, w.alice.token)
            try:
                assert (await raw.next())["type"] == "ready"
                for i in range(30):
                    await raw.send(
                        {
                            "op": "post",
                            "ref": f"q{i}",
                            "flow": "general",
                            "content": "more",
                            "uuid": uuid(),
                        }
                    )
                errors = 0
                with pytest.raises(StreamClosed) as end:
                    while True:
                        obj = await raw.next()
                        if obj.get("type") == "error":
                            assert obj["code"] == "rate_limited"
                            errors += 1
                assert (end.value.code, end.value.reason) == (4029, "rate_limited")
                assert errors >= 10
            finally:
                await raw.abort()
            await w.wait_counts((0, 0))
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


@pytest.mark.usefixtures("ws_path")
@pytest.mark.parametrize("reply", [True, False])
async def test_ws_connection_closed_by_the_server_ends_while_the_client_floods(reply):
    """After a close for bad frames (4400) the TCP connection ends, however many frames
    the client still sent: with the client's close reply, or when it goes quiet."""
    with trio.fail_after(10):
        async with world(write_timeout=0.5) as w:
            query = stream_query(["general"], client_id())
            raw = await RawWs.connect(w.server, query, w.alice.token)
            try:
                assert (await raw.next())["type"] == "ready"
                await raw.stream.send_all(
                    b"".join(raw.ws.send(TextMessage(data="not json")) for _ in range(60))
                )
                with pytest.raises(StreamClosed) as end:
                    while True:
                        await raw.next()
                assert end.value.code == 4400
                if reply:
                    await raw.stream.send_all(raw.ws.send(end.value.event.response()))
                await w.wait_counts((0, 0))
                # the server closes its side: the client reads to EOF
                while await raw.stream.receive_some(65536):
                    pass
            finally:
                await raw.abort()


@pytest.mark.usefixtures("ws_path")
async def test_ws_frame_larger_than_max_body_closes_with_1009():
    with trio.fail_after(10):
        async with world(max_body=1024) as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                await s.send(
                    {
                        "op": "post",
                        "flow": "general",
                        "content": "x" * 900,
                        "uuid": uuid(),
                        "ref": "fits",
                    }
                )
                assert (await s.reply("fits"))["type"] == "ack"
                await s.send(
                    {"op": "post", "flow": "general", "content": "x" * 2000, "uuid": uuid()}
                )
                with pytest.raises(StreamClosed) as end:
                    while True:
                        await s.next()
                assert end.value.code == 1009
            await w.wait_counts((0, 0))


# -- refusals --------------------------------------------------------------------------


REFUSALS = [
    pytest.param(dict(auth="bad_ticket"), 4001, 401, "unauthorized", id="bad-ticket"),
    pytest.param(dict(auth="none"), 4001, 401, "unauthorized", id="no-credentials"),
    pytest.param(dict(auth="bad_token"), 4001, 401, "unauthorized", id="bad-token"),
    pytest.param(
        dict(auth="other_clients_ticket"), 4001, 401, "unauthorized", id="ticket-of-another-client"
    ),
    pytest.param(dict(flows=["nope"]), 4004, 404, "not_found", id="unknown-flow"),
    pytest.param(dict(flows=["general", "secret"]), 4003, 403, "forbidden", id="private-flow"),
    pytest.param(dict(client="short"), 4400, 400, "bad_request", id="bad-client-id"),
    pytest.param(dict(client=None), 4400, 400, "bad_request", id="no-client-id"),
    pytest.param(dict(params={"v": "2"}), 4400, 400, "bad_request", id="v2"),
    pytest.param(
        dict(params={"cursor": "-1", "epoch": "abcdefgh"}),
        4400,
        400,
        "bad_request",
        id="bad-cursor",
    ),
    pytest.param(dict(flows=["Bad Flow"]), 4400, 400, "bad_request", id="bad-flow-name"),
    pytest.param(
        dict(flows=[f"f{i}" for i in range(101)]), 4400, 400, "bad_request", id="too-many-flows"
    ),
    pytest.param(dict(flows=[]), 4400, 400, "bad_request", id="no-flows"),
    pytest.param(dict(auth="token_in_url"), 4400, 400, "bad_request", id="token-in-url"),
]


async def _refusal_request(w: World, spec: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    await new_flow(w.server, "secret", private=True, owner="bob", members=("bob",))
    client = spec.get("client", client_id())
    query: dict[str, Any] = {"flows": ",".join(spec.get("flows", ["general"]))}
    if client is not None:
        query["client"] = client
    query.update(spec.get("params", {}))
    headers: dict[str, str] = {}
    auth = spec.get("auth", "header")
    if auth == "header":
        headers["Authorization"] = f"Bearer {w.alice.token}"
    elif auth == "bad_token":
        headers["Authorization"] = "Bearer not-a-token"
    elif auth == "bad_ticket":
        query["ticket"] = "not-a-ticket"
    elif auth == "other_clients_ticket":
        query["ticket"] = await w.alice.ticket(client_id())
    elif auth == "token_in_url":
        query["token"] = w.alice.token
        headers["Authorization"] = f"Bearer {w.alice.token}"
    return query, headers


async def _ws_refusal(w: World, query: dict[str, Any], headers: dict[str, str]) -> StreamClosed:
    url = f"{w.server.ws_url}/stream/ws?{httpx.QueryParams(query)}"
    async with open_websocket_url(url, extra_headers=list(headers.items())) as conn:
        s = WsConn(conn)
        try:
            obj = await s.raw_next()
        except StreamClosed as end:
            return end
        raise AssertionError(f"a refused stream sent {obj}")


@pytest.mark.usefixtures("ws_path")
@pytest.mark.parametrize(("spec", "ws_code", "status", "code"), REFUSALS)
async def test_ws_refusal_is_an_accepted_upgrade_closed_before_ready(spec, ws_code, status, code):
    with trio.fail_after(10):
        async with world() as w:
            query, headers = await _refusal_request(w, spec)
            end = await _ws_refusal(w, query, headers)
            assert (end.code, end.reason) == (ws_code, code)
            await w.wait_counts((0, 0))


@pytest.mark.parametrize(("spec", "ws_code", "status", "code"), REFUSALS)
async def test_sse_refusal_is_an_http_status(spec, ws_code, status, code):
    with trio.fail_after(10):
        async with world() as w:
            query, headers = await _refusal_request(w, spec)
            async with http_client(w.server) as http:
                r = await http.get("/stream/sse", params=query, headers=headers)
            assert r.status_code == status, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == code
            await w.wait_counts((0, 0))


@pytest.mark.usefixtures("ws_path")
async def test_ws_origin_is_checked():
    with trio.fail_after(10):
        async with world(allow_origin=("https://app.example",)) as w:
            base = {"flows": "general", "client": client_id()}
            auth = {"Authorization": f"Bearer {w.alice.token}"}
            end = await _ws_refusal(w, base, {**auth, "Origin": "https://evil.example"})
            assert (end.code, end.reason) == (4003, "forbidden")
            for origin in ("https://app.example", f"http://{w.server.host}:{w.server.port}"):
                async with open_stream("ws", w.alice, ["general"], headers={"Origin": origin}) as s:
                    assert (await s.ready())["type"] == "ready"


# -- silence ---------------------------------------------------------------------------


@pytest.mark.usefixtures("ws_path")
async def test_ws_silent_client_is_closed_with_4408_without_close_frame():
    heartbeat = 0.3
    with trio.fail_after(10):
        async with world(heartbeat=heartbeat) as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                await s.ready()
                started = trio.current_time()
                end = await s.closed()  # fails on a `close` frame or anything but heartbeats
                waited = trio.current_time() - started
                assert end.code == 4408
                # 2.5 heartbeats after the last frame the client sent (its upgrade request)
                assert 2.5 * heartbeat * 0.8 <= waited <= 2.5 * heartbeat + heartbeat, waited
            await w.wait_counts((0, 0))


@pytest.mark.usefixtures("ws_path")
async def test_ws_client_that_pings_every_heartbeat_stays_open():
    heartbeat = 0.3
    with trio.fail_after(10):
        async with world(heartbeat=heartbeat) as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                started = trio.current_time()
                n = 0
                while trio.current_time() - started < 2.5 * heartbeat * 2:
                    n += 1
                    await s.send({"op": "ping", "ref": f"p{n}"})
                    assert (await s.reply(f"p{n}"))["type"] == "pong"
                    await trio.sleep(heartbeat)  # time must pass: one ping per heartbeat
                event = await w.post(w.bob)
                assert await s.stored() == event
                assert w.counts() == (1, 1)


@pytest.mark.usefixtures("ws_path")
async def test_ws_client_that_sends_ping_frames_stays_open():
    heartbeat = 0.3
    with trio.fail_after(10):
        async with world(heartbeat=heartbeat) as w:
            async with open_stream("ws", w.alice, ["general"]) as s:
                assert isinstance(s, WsConn)
                await s.ready()
                async with trio.open_nursery() as nursery:

                    async def drain() -> None:
                        while True:
                            await s.raw_next()

                    nursery.start_soon(drain)
                    started = trio.current_time()
                    while trio.current_time() - started < 2.5 * heartbeat * 2:
                        await s.conn.ping()
                        await trio.sleep(heartbeat)  # time must pass
                    assert not s.conn.closed
                    nursery.cancel_scope.cancel()
                assert w.counts() == (1, 1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_that_stops_reading_is_dropped_after_write_timeout(transport):
    write_timeout = 0.5
    with trio.fail_after(10):
        async with world(
            write_timeout=write_timeout, ops_rate=1e6, ops_burst=1e6, buffer_bytes=1 << 26
        ) as w:
            async with open_stream(transport, w.bob, ["general"]) as b:
                await b.ready()
                query = stream_query(["general"], client_id())
                if transport == "ws":
                    raw: Any = await RawWs.connect(w.server, query, w.alice.token, rcvbuf=4096)
                    assert (await raw.next())["type"] == "ready"
                else:
                    raw = await RawHttp.get(
                        w.server,
                        f"/stream/sse?{httpx.QueryParams(query)}",
                        {"Authorization": f"Bearer {w.alice.token}"},
                    )
                    await raw.read_until(lambda body: b"event: ready" in body)
                try:
                    await w.wait_counts((2, 2))
                    started = trio.current_time()
                    ids = await w.burst("bob", 400, content="x" * 16000)
                    # alice's stream is dropped; bob's, which reads, gets everything
                    got = [(await b.stored())["id"] for _ in ids]
                    assert got == ids
                    await w.wait_counts((1, 1), deadline=write_timeout * 2 + 2)
                    assert trio.current_time() - started >= write_timeout * 0.8
                finally:
                    await raw.abort()
            await w.wait_counts((0, 0))


# -- revocation, drain -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_revoked_token_ends_streams_with_unauthorized(transport):
    with trio.fail_after(10):
        async with world(presence_grace=30) as w:
            async with (
                open_stream(transport, w.alice, ["general"], ticket=transport == "sse") as s,
                open_stream("ws", w.bob, ["general"]) as b,
            ):
                await s.ready()
                await b.ready()
                await w.service.directory.revoke_tokens("alice")
                w.service.revalidate()
                close = await s.close_frame()
                assert close == {"type": "close", "reason": "unauthorized"}
                await expect_end(s, 4001, "unauthorized")
                # alice goes offline at once, not after the 30 s grace
                offline = await b.until(
                    lambda o: o.get("type") == "presence" and o.get("state") == "offline"
                )
                assert offline == {
                    "type": "presence",
                    "flow": "general",
                    "user": "alice",
                    "state": "offline",
                }
                event = await w.post(w.bob)
                assert await b.stored() == event
                await w.wait_counts((1, 1))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("remover", ["owner", "member"])
async def test_removed_member_stream_ends_with_unauthorized(transport, remover):
    with trio.fail_after(10):
        async with world() as w:
            r = await w.alice.http.post("/flows", json={"name": "secret", "private": True})
            assert r.status_code == 201, r.text
            r = await w.alice.http.post("/flows/secret/members", json={"user": "bob"})
            assert r.status_code == 204, r.text
            async with (
                open_stream(transport, w.bob, ["secret", "general"]) as s,
                open_stream("ws", w.alice, ["secret"]) as a,
            ):
                await s.ready()
                await a.ready()
                who = w.alice if remover == "owner" else w.bob
                r = await who.http.delete("/flows/secret/members/bob")
                assert r.status_code == 204, r.text
                close = await s.close_frame()
                assert close == {"type": "close", "reason": "unauthorized"}
                await expect_end(s, 4001, "unauthorized")
                offline = await a.until(
                    lambda o: o.get("type") == "presence" and o.get("user") == "bob"
                )
                # bob was online before alice connected, so the first presence about him
                # on alice's stream is his going offline
                assert offline["state"] == "offline" and offline["flow"] == "secret"
                event = await w.post(w.alice, "secret")
                assert await a.stored() == event
            query = {"flows": "secret", "client": client_id()}
            if transport == "ws":
                end = await _ws_refusal(w, query, {"Authorization": f"Bearer {w.bob.token}"})
                assert end.code == 4003
            else:
                r = await w.bob.http.get("/stream/sse", params=query)
                assert r.status_code == 403
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_graceful_drain_ends_streams_with_shutdown(transport):
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream(transport, w.alice, ["general"]) as s:
                await s.ready()
                w.service.begin_shutdown()
                close = await s.close_frame()
                assert close["type"] == "close" and close["reason"] == "shutdown"
                assert set(close) == {"type", "reason", "retry_ms"}
                assert 1000 <= close["retry_ms"] <= 5000
                await expect_end(s, 1001, "shutdown")
            await w.wait_counts((0, 0))
            # new streams are refused while draining
            query = {"flows": "general", "client": client_id()}
            if transport == "ws":
                end = await _ws_refusal(w, query, {"Authorization": f"Bearer {w.alice.token}"})
                assert end.code == 1001
            else:
                r = await w.alice.http.get("/stream/sse", params=query)
                assert r.status_code == 503
                assert r.headers.get("retry-after")


# -- presence --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_presence_once_per_user_and_flow_with_grace(transport):
    grace = 0.3
    with trio.fail_after(10):
        async with world(presence_grace=grace) as w:
            async with open_stream("ws", w.bob, ["general"]) as b:
                await b.ready()

                async def next_on_bob() -> dict[str, Any]:
                    """The next presence or message on bob's stream (his own skipped)."""
                    return await b.until(
                        lambda o: (
                            o.get("type") == "message"
                            or (o.get("type") == "presence" and o.get("user") == "alice")
                        )
                    )

                async with open_stream(transport, w.alice, ["general"]) as s1:
                    await s1.ready()
                    assert (await next_on_bob())["state"] == "online"
                    async with open_stream(transport, w.alice, ["general"]) as s2:
                        await s2.ready()
                        sentinel = await w.post(w.bob)
                        assert await next_on_bob() == sentinel, "a second tab announced online"
                # a reconnect within the grace does not flap
                async with open_stream(transport, w.alice, ["general"]) as s3:
                    await s3.ready()
                    await trio.sleep(grace * 1.5)  # time must pass: beyond the grace
                    sentinel = await w.post(w.bob)
                    assert await next_on_bob() == sentinel, "presence flapped on a reconnect"
                closed = trio.current_time()
                offline = await next_on_bob()
                assert offline == {
                    "type": "presence",
                    "flow": "general",
                    "user": "alice",
                    "state": "offline",
                }
                assert trio.current_time() - closed >= grace * 0.8
                sentinel = await w.post(w.bob)
                assert await next_on_bob() == sentinel, "offline announced twice"


# -- cleanup ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_that_goes_away_is_cleaned_up_at_once(transport, how):
    with trio.fail_after(10):
        async with world(presence_grace=0.2) as w:
            async with open_stream("ws", w.bob, ["general"]) as b:
                await b.ready()
                assert w.counts() == (1, 1)
                cid = client_id()
                query = stream_query(["general"], cid)
                auth = {"Authorization": f"Bearer {w.alice.token}"}
                if how == "close":
                    async with open_stream(transport, w.alice, ["general"], cid) as s:
                        await s.ready()
                        await w.wait_counts((2, 2))
                elif transport == "ws":
                    raw_ws = await RawWs.connect(w.server, query, w.alice.token)
                    assert (await raw_ws.next())["type"] == "ready"
                    await w.wait_counts((2, 2))
                    await raw_ws.abort()
                else:
                    target = f"/stream/sse?{httpx.QueryParams(query)}"
                    raw = await RawHttp.get(w.server, target, auth)
                    await raw.read_until(lambda body: b"event: ready" in body)
                    await w.wait_counts((2, 2))
                    await raw.abort()
                await w.wait_counts((1, 1), deadline=2.0)
                assert ("alice", cid) not in w.service.claims.by_key
                # alice's presence follows (after the short grace) on bob's stream
                offline = await b.until(
                    lambda o: (
                        o.get("type") == "presence"
                        and o.get("user") == "alice"
                        and o.get("state") == "offline"
                    )
                )
                assert offline["flow"] == "general"
            await w.wait_counts((0, 0))
