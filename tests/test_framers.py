"""Tier 0: the sans-IO framers of rt/transports, fed and decoded byte by byte.

The SSE output is read back with a small decoder that follows the WHATWG
"event stream" interpretation rules (HTML Living Standard, section 9.2.6),
fed ONE BYTE AT A TIME, so that a framing that only works when a chunk
holds a whole line, or a line break hidden in content, is caught.
"""

from __future__ import annotations

import codecs
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from rt.core.codec import encode
from rt.core.events import Event, presence_event, typing_event
from rt.transports import ALL_TRANSPORTS, FRAMERS, STREAM_HEADERS
from rt.transports.sse import SseFramer, parse_last_event_id
from rt.transports.websocket import WebSocketFramer

EPOCH = "Ep0ch_abc-123"


def stored(event_id: int, content: str = "hi", flow: str = "general") -> Event:
    return Event(
        {
            "id": event_id,
            "flow": flow,
            "type": "message",
            "user": "alice",
            "sent": 1_700_000_000_000,
            "uuid": f"uuid-{event_id:04d}",
            "content": content,
        }
    )


def ready_obj(cursor: int = 41) -> dict[str, Any]:
    return {
        "type": "ready",
        "protocol": 1,
        "cursor": cursor,
        "epoch": EPOCH,
        "reset": False,
        "flows": ["general"],
        "client": "c" * 16,
        "transport": "sse",
        "heartbeat": 15,
        "poll_timeout": 25,
        "presence": {"general": ["alice"]},
    }


HOSTILE = [
    "</script><script>alert(1)</script>",
    "-->",
    "<!--",
    "]]>",
    "\u2028",
    "\u2029",
    "a\rb",
    "a\r\nb",
    "\r",
    "\n\ndata: injected\n\nevent: close\n",
    "id: evil:999",
    ": hb",
    "\x85\x1c\x1d\x1e\x0b\x0c",
    "\ufeffBOM in the middle",
    "\x00NUL",
    "caf\u00e9 \U0001f600 \u65e5\u672c",
    "&amp; <b>bold</b>",
]


# -- a WHATWG-conformant event stream decoder -------------------------------------


@dataclass
class SseEvent:
    type: str
    data: str
    last_event_id: str


@dataclass
class SseDecoder:
    """Feed bytes in chunks of any size; collect dispatched events.

    Implements the parsing and interpretation rules of the event stream
    format: UTF-8 with a leading BOM stripped, lines ended by CRLF, LF or CR
    (a CR at the end of one chunk and an LF at the start of the next are one
    line end), comments, `field: value` with one leading space stripped,
    `event`, `data`, `id` (ignored if it holds NUL) and `retry` (ASCII
    digits only), dispatch on a blank line, and no dispatch of an event
    whose data buffer is empty.
    """

    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_event_id: str = ""
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _buffer: str = ""
    _started: bool = False
    _pending_cr: bool = False
    _event_type: str = ""
    _data: str = ""
    _lines: int = 0

    def feed(self, chunk: bytes) -> None:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        for ch in text:
            if self._pending_cr:
                self._pending_cr = False
                if ch == "\n":
                    continue  # the LF of a CRLF
            if ch == "\r":
                self._pending_cr = True
                self._line()
            elif ch == "\n":
                self._line()
            else:
                self._buffer += ch

    def _line(self) -> None:
        line, self._buffer = self._buffer, ""
        self._lines += 1
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)
        # other field names are ignored

    def _dispatch(self) -> None:
        if self._data == "":
            self._event_type = ""
            return
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        self.events.append(SseEvent(self._event_type or "message", data, self.last_event_id))
        self._event_type = ""
        self._data = ""

    @property
    def partial(self) -> bool:
        """Whether anything is held that a further blank line would dispatch or complete."""
        return bool(self._buffer or self._data or self._event_type)


def decode_bytewise(stream: bytes) -> SseDecoder:
    decoder = SseDecoder()
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
    return decoder


# The decoder is test code: check it against the spec's own examples first,
# so that the framer tests below cannot pass by a decoder bug.


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(
            b"data: YHOO\ndata: +2\ndata: 10\n\n",
            [("message", "YHOO\n+2\n10", "")],
            id="multi-line-data",
        ),
        pytest.param(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
            b"data:  third event\n\n",
            [
                ("message", "first event", "1"),
                ("message", "second event", ""),
                ("message", " third event", ""),
            ],
            id="spec-example-ids",
        ),
        pytest.param(
            b"data\n\ndata\ndata\n\ndata:",
            [("message", "", ""), ("message", "\n", "")],
            id="spec-example-empty-data",
        ),
        pytest.param(
            b"data:test\n\ndata: test\n\n", [("message", "test", "")] * 2, id="spec-example-space"
        ),
        pytest.param(
            b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n",
            [("a", "1", ""), ("b", "2", ""), ("message", "3", "")],
            id="crlf-cr-lf",
        ),
        pytest.param(b"\xef\xbb\xbfdata: x\n\n", [("message", "x", "")], id="leading-bom"),
        pytest.param(
            b"id: 7\n\nevent: x\n\ndata: y\n\n",
            [("message", "y", "7")],
            id="no-dispatch-without-data",
        ),
        pytest.param(b"id: a\x00b\ndata: y\n\n", [("message", "y", "")], id="id-with-nul-ignored"),
        pytest.param(b"data: \xc3\xa9\n\n", [("message", "\u00e9", "")], id="utf-8-split"),
    ],
)
def test_decoder_follows_the_spec(stream: bytes, expected: list[tuple[str, str, str]]) -> None:
    # The spec examples decode "data" with no value as an empty line; the
    # first event of "spec-example-empty-data" has data "" and is still
    # dispatched because its data buffer holds "\n" before trimming.
    for decoded in (decode_bytewise(stream), _decode_whole(stream)):
        assert [(e.type, e.data, e.last_event_id) for e in decoded.events] == expected


def _decode_whole(stream: bytes) -> SseDecoder:
    decoder = SseDecoder()
    decoder.feed(stream)
    return decoder


def test_decoder_retry_and_comments() -> None:
    decoder = decode_bytewise(b"retry: 1234\n\n: hb\n\nretry: 12x\n\nretry: -5\n\n")
    assert decoder.retry == 1234
    assert decoder.comments == [" hb"]
    assert decoder.events == []


def test_decoder_cr_at_chunk_boundary_is_one_line_end() -> None:
    decoder = SseDecoder()
    decoder.feed(b"data: a\r")
    decoder.feed(b"\ndata: b\r")
    decoder.feed(b"\n\r")
    decoder.feed(b"\n")
    assert [(e.data) for e in decoder.events] == ["a\nb"]


# -- SSE framer ----------------------------------------------------------------------


def test_sse_preamble_retry_is_randomised_in_range() -> None:
    framer = SseFramer(random.Random(1234))
    values = []
    for _ in range(3000):
        preamble = framer.preamble()
        match = re.fullmatch(rb"retry: (\d+)\n\n", preamble)
        assert match, preamble
        values.append(int(match.group(1)))
        decoder = decode_bytewise(preamble)
        assert decoder.retry == values[-1]
        assert decoder.events == []
    assert min(values) >= 1000
    assert max(values) <= 5000
    assert len(set(values)) > 1000  # spread, not one value
    assert min(values) < 1100 and max(values) > 4900  # the whole range is used


def test_sse_preamble_default_rng_in_range() -> None:
    framer = SseFramer()
    values = {
        int(re.fullmatch(rb"retry: (\d+)\n\n", framer.preamble()).group(1)) for _ in range(500)
    }
    assert all(1000 <= v <= 5000 for v in values)
    assert len(values) > 10


def test_sse_registry_framer_is_sse() -> None:
    framer = FRAMERS["sse"]
    assert isinstance(framer, SseFramer)
    assert framer.name == "sse"
    assert framer.content_type.startswith("text/event-stream")


def test_sse_ready_exact() -> None:
    obj = ready_obj(cursor=41)
    out = SseFramer().ready(obj, EPOCH)
    assert out == b"id: " + EPOCH.encode() + b":41\nevent: ready\ndata: " + encode(obj) + b"\n\n"


def test_sse_stored_events_exact() -> None:
    events = [stored(42, "one"), stored(43, "two", flow="random")]
    out = SseFramer().frame(events, EPOCH)
    assert out == (
        b"id: "
        + EPOCH.encode()
        + b":42\ndata: "
        + events[0].raw
        + b"\n\n"
        + b"id: "
        + EPOCH.encode()
        + b":43\ndata: "
        + events[1].raw
        + b"\n\n"
    )


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(presence_event("general", "alice", "online"), id="presence"),
        pytest.param(typing_event("general", "bob"), id="typing"),
    ],
)
def test_sse_ephemeral_exact(event: Event) -> None:
    out = SseFramer().frame([event], EPOCH)
    assert out == b"event: " + event.type.encode() + b"\ndata: " + event.raw + b"\n\n"
    assert b"id:" not in out


def test_sse_heartbeat_exact() -> None:
    assert SseFramer().heartbeat() == b": hb\n\n"
    decoder = decode_bytewise(SseFramer().heartbeat())
    assert decoder.events == [] and decoder.comments == [" hb"]


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"type": "close", "reason": "lagging", "retry_ms": 250}, id="close-lagging"),
        pytest.param({"type": "close", "reason": "superseded"}, id="close-superseded"),
        pytest.param({"type": "error", "code": "bad_request", "message": "<b>&"}, id="error"),
    ],
)
def test_sse_control_exact(obj: dict[str, Any]) -> None:
    out = SseFramer().control(obj)
    assert out == b"event: " + obj["type"].encode() + b"\ndata: " + encode(obj) + b"\n\n"
    decoder = decode_bytewise(out)
    assert [(e.type, json.loads(e.data)) for e in decoder.events] == [(obj["type"], obj)]


def test_sse_empty_batch_is_nothing() -> None:
    assert SseFramer().frame([], EPOCH) == b""


def _expected_lines(out: bytes) -> int:
    return out.count(b"\n")


def test_sse_whole_stream_decodes_byte_by_byte() -> None:
    """A whole response, hostile content included, decodes to exactly its frames."""
    framer = SseFramer(random.Random(7))
    parts: list[bytes] = []
    expected: list[tuple[str, Any, str]] = []
    last_id = ""

    parts.append(framer.preamble())
    obj = ready_obj(cursor=41)
    parts.append(framer.ready(obj, EPOCH))
    last_id = f"{EPOCH}:41"
    expected.append(("ready", obj, last_id))

    next_id = 42
    for i, text in enumerate(HOSTILE):
        batch: list[Event] = [stored(next_id, text)]
        if i % 3 == 0:
            batch.append(presence_event("general", "alice", "online"))
        if i % 4 == 1:
            batch.append(stored(next_id + 1, text + text, flow="random"))
        if i % 5 == 2:
            batch.insert(0, typing_event("general", "bob"))
        for event in batch:
            if event.id is not None:
                last_id = f"{EPOCH}:{event.id}"
                next_id = event.id + 1
            # EventSource: an event without an id line keeps the last event id.
            expected.append((event.type if event.id is None else "message", event.data, last_id))
        out = framer.frame(batch, EPOCH)
        assert b"\r" not in out
        # Three lines per stored event, three per ephemeral: no extra line.
        assert _expected_lines(out) == 3 * len(batch)
        parts.append(out)
        if i % 2:
            parts.append(framer.heartbeat())

    close = {"type": "close", "reason": "rotate", "retry_ms": 0}
    parts.append(framer.control(close))
    expected.append(("close", close, last_id))

    stream = b"".join(parts)
    decoder = decode_bytewise(stream)
    decoded = [(e.type, json.loads(e.data), e.last_event_id) for e in decoder.events]
    assert decoded == expected
    assert decoder.retry is not None and 1000 <= decoder.retry <= 5000
    assert decoder.comments == [" hb"] * (len(HOSTILE) // 2)
    assert not decoder.partial
    # The data line of each event is the one encoded object, byte for byte.
    for event, raw_event in zip(decoder.events[1:], _raw_in_order(parts), strict=True):
        assert event.data.encode() == raw_event
    # Resuming from the last id line is what Last-Event-ID would carry.
    assert parse_last_event_id(decoder.last_event_id) == (EPOCH, next_id - 1)


def _raw_in_order(parts: list[bytes]) -> list[bytes]:
    return [m.group(1) for part in parts for m in re.finditer(rb"data: ([^\n]*)\n", part)][1:]


@pytest.mark.parametrize("text", HOSTILE)
def test_sse_hostile_content_one_event_each(text: str) -> None:
    event = stored(9, text)
    out = SseFramer().frame([event], EPOCH)
    assert out.count(b"\n") == 3
    assert b"\r" not in out
    decoder = decode_bytewise(out)
    assert len(decoder.events) == 1
    assert decoder.events[0].type == "message"
    assert json.loads(decoder.events[0].data)["content"] == text
    assert decoder.events[0].last_event_id == f"{EPOCH}:9"
    assert decoder.comments == []


# -- Last-Event-ID -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("abcdefgh:0", ("abcdefgh", 0), id="zero"),
        pytest.param("abcdefgh:123", ("abcdefgh", 123), id="number"),
        pytest.param(f"{EPOCH}:42", (EPOCH, 42), id="framer-epoch"),
        pytest.param(" abc_-XYZ:5 ", ("abc_-XYZ", 5), id="surrounding-space"),
        pytest.param("E" * 32 + ":7", ("E" * 32, 7), id="32-char-epoch"),
        pytest.param("abcdefgh:" + "9" * 18, ("abcdefgh", int("9" * 18)), id="18-digits"),
    ],
)
def test_parse_last_event_id_good(value: str, expected: tuple[str, int]) -> None:
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("abcdefgh", id="no-colon"),
        pytest.param("abcdefgh:", id="no-cursor"),
        pytest.param(":5", id="no-epoch"),
        pytest.param("short:5", id="epoch-too-short"),
        pytest.param("E" * 33 + ":5", id="epoch-too-long"),
        pytest.param("abc:defgh:5", id="colon-in-epoch"),
        pytest.param("abcdefgh:-1", id="negative"),
        pytest.param("abcdefgh:1.5", id="decimal"),
        pytest.param("abcdefgh:5x", id="trailing-junk"),
        pytest.param("abcdefgh: 5", id="space-before-cursor"),
        pytest.param("abcdefgh:" + "9" * 19, id="19-digits"),
        pytest.param("abcdefgh:\uff11", id="fullwidth-digit"),
        # Latin-1 superscripts: what a header decoded as ISO-8859-1 can hold.
        pytest.param("abcdefgh:\u00b2", id="superscript-two"),
        pytest.param("abcdefgh:1\u00b9", id="superscript-one"),
        pytest.param("abcd\u00e9fgh:5", id="non-ascii-epoch"),
    ],
)
def test_parse_last_event_id_bad_names_no_cursor(value: str) -> None:
    # None: an untrusted cursor, which resets the stream instead of failing it (issue 9).
    assert parse_last_event_id(value) is None


# -- WebSocket framer ----------------------------------------------------------------


def test_ws_registry_framer_is_ws() -> None:
    assert isinstance(FRAMERS["ws"], WebSocketFramer)
    assert FRAMERS["ws"].name == "ws"


def test_ws_single_event_is_its_raw_bytes() -> None:
    event = stored(1, "hello")
    out = WebSocketFramer().frame([event], EPOCH)
    assert out is event.raw


def test_ws_batch_is_one_object_per_line() -> None:
    events = [
        stored(1, "a"),
        presence_event("general", "alice", "online"),
        stored(2, "b"),
        typing_event("general", "bob"),
    ]
    out = WebSocketFramer().frame(events, EPOCH)
    assert out == b"\n".join(e.raw for e in events)
    lines = out.decode("utf-8").split("\n")
    assert [json.loads(line) for line in lines] == [e.data for e in events]


@pytest.mark.parametrize("text", HOSTILE)
def test_ws_hostile_content_never_adds_a_line(text: str) -> None:
    events = [stored(1, text), stored(2, text + "\n" + text)]
    out = WebSocketFramer().frame(events, EPOCH)
    assert out.count(b"\n") == 1
    # Clients split on "\n" only; a split on any Unicode line break
    # (str.splitlines) would break U+2028 or NEL content if they were raw.
    lines = out.decode("utf-8").split("\n")
    assert [json.loads(line)["content"] for line in lines] == [text, text + "\n" + text]
    assert "\u2028".encode() not in out and "\u2029".encode() not in out


def test_ws_heartbeat_exact() -> None:
    assert WebSocketFramer().heartbeat() == b'{"type":"heartbeat"}'


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(ready_obj(), id="ready"),
        pytest.param({"type": "pong", "ref": "<r>", "sent": 5}, id="pong"),
        pytest.param({"type": "close", "reason": "lagging", "retry_ms": 10}, id="close"),
    ],
)
def test_ws_control_and_ready_are_the_encoded_object(obj: dict[str, Any]) -> None:
    framer = WebSocketFramer()
    assert framer.control(obj) == encode(obj)
    assert framer.ready(obj, EPOCH) == encode(obj)
    assert b"\n" not in framer.control(obj)


# -- registry and headers ------------------------------------------------------------


def test_stream_headers_are_the_four_of_the_protocol() -> None:
    assert STREAM_HEADERS == {
        "Cache-Control": "no-store, no-transform",
        "X-Accel-Buffering": "no",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def test_all_transports_are_the_seven() -> None:
    assert ALL_TRANSPORTS == ("ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile")
    assert set(FRAMERS) <= set(ALL_TRANSPORTS)
    for name, framer in FRAMERS.items():
        assert framer.name == name
