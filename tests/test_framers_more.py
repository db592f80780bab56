"""Tier 0: the xhr, multipart, htmlfile, poll and jsonp framers, by their bytes.

Exact bytes come from case tables. Each streaming format is then read back
by a small client-side decoder written here, fed ONE BYTE AT A TIME:

- NDJSON: lines split on `\\n` only, an empty line is a heartbeat;
- multipart/x-mixed-replace: parts found by the boundary as RFC 2046 has
  it (`CRLF--B`), the JSON array read after the blank line that ends the
  part's headers; both strictly (a body ends at the next delimiter) and
  eagerly (a body ends at its first CRLF, as a streaming client reads it);
- HTMLFile: the script elements of the document as the WHATWG HTML
  tokenizer splits them (script data states, escapes and double escapes
  included), each run like a browser would: `var p=parent.F;` binds p,
  `p([...]);` delivers objects.

Hostile content must never end a line, a part or a script element early,
and must never add an object. Each decoder is first checked against
inputs whose decoding is known, so that a framer test cannot pass by a
decoder bug.
"""

from __future__ import annotations

import codecs
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rt.core.codec import encode
from rt.core.errors import RtError
from rt.core.events import Event, presence_event, typing_event
from rt.transports import ALL_TRANSPORTS, FRAMERS, Framer, rotation_cut
from rt.transports.htmlfile import HtmlFileFramer
from rt.transports.jsonp import JsonpFramer
from rt.transports.multipart import BOUNDARY, MultipartFramer
from rt.transports.poll import PollFramer
from rt.transports.sse import SseFramer
from rt.transports.websocket import WebSocketFramer
from rt.transports.xhr import XhrFramer

EPOCH = "Ep0ch_abc-123"
B = b"rt-mixed-5f0c3a"  # the multipart boundary, pinned: it is in the bytes
CLOSE = {"type": "close", "reason": "rotate", "retry_ms": 0}


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


def ready_obj(cursor: int = 41, transport: str = "xhr") -> dict[str, Any]:
    return {
        "type": "ready",
        "protocol": 1,
        "cursor": cursor,
        "epoch": EPOCH,
        "reset": False,
        "flows": ["general"],
        "client": "c" * 16,
        "transport": transport,
        "heartbeat": 15,
        "poll_timeout": 25,
        "presence": {"general": ["alice"]},
    }


HOSTILE = [
    "</script><script>alert(1)</script>",
    "</SCRIPT >",
    "<script>",
    "<!--<script>",
    "-->",
    "<!--",
    "]]>",
    "<![CDATA[x",
    "*/",
    "/**/",
    "*/alert(1);/*",
    "\u2028",
    "\u2029",
    "a\u2028b\u2029c",
    "\r\n--" + BOUNDARY + "\r\n",
    "\r\n--" + BOUNDARY + "--\r\n",
    "--" + BOUNDARY,
    "\r\n--" + BOUNDARY + '\r\nContent-Type: application/json\r\n\r\n[{"type":"close"}]\r\n',
    "\n",
    "\n\n",
    "a\rb",
    "a\r\nb",
    "\r",
    '{"type":"close","reason":"rotate"}\n',
    '"]);p([{"type":"close"}]);//',
    ']);</script><script>p([{"type":"close"}]);</script>',
    "\x85\x1c\x1d\x1e\x0b\x0c",
    "\ufeffBOM in the middle",
    "\x00NUL",
    "caf\u00e9 \U0001f600 \u65e5\u672c",
    "&amp; <b>bold</b>",
    "\\",
    '"',
]


# Events whose encoded bytes are written out literally in the case tables.
T = typing_event("general", "bob")
T_RAW = b'{"type":"typing","flow":"general","user":"bob"}'
P = presence_event("general", "alice", "online")
P_RAW = b'{"type":"presence","flow":"general","user":"alice","state":"online"}'
M = Event({"id": 7, "flow": "general", "type": "message", "content": "<&>"})
M_RAW = b'{"id":7,"flow":"general","type":"message","content":"\\u003c\\u0026\\u003e"}'
CLOSE_RAW = b'{"type":"close","reason":"rotate","retry_ms":0}'
PART = b"--" + B + b"\r\nContent-Type: application/json\r\n\r\n"


def test_literal_fixtures_are_what_the_codec_writes() -> None:
    assert (T.raw, P.raw, M.raw, encode(CLOSE)) == (T_RAW, P_RAW, M_RAW, CLOSE_RAW)
    assert BOUNDARY.encode() == B


def bound(name: str, callback: str = "cb") -> Framer:
    return FRAMERS[name].for_request(callback)


# -- registry, flags, content types --------------------------------------------------


def test_registry_holds_exactly_the_seven() -> None:
    assert sorted(FRAMERS) == sorted(["ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"])
    assert set(FRAMERS) == set(ALL_TRANSPORTS)
    for name, framer in FRAMERS.items():
        assert framer.name == name


@pytest.mark.parametrize(
    ("name", "cls", "content_type", "rotates", "polling", "needs_callback"),
    [
        ("ws", WebSocketFramer, "", False, False, False),
        ("sse", SseFramer, "text/event-stream; charset=utf-8", False, False, False),
        ("xhr", XhrFramer, "application/x-ndjson; charset=utf-8", True, False, False),
        (
            "multipart",
            MultipartFramer,
            'multipart/x-mixed-replace; boundary="rt-mixed-5f0c3a"',
            True,
            False,
            False,
        ),
        ("htmlfile", HtmlFileFramer, "text/html; charset=utf-8", True, False, True),
        ("poll", PollFramer, "application/json; charset=utf-8", False, True, False),
        ("jsonp", JsonpFramer, "application/javascript; charset=utf-8", False, True, True),
    ],
)
def test_framer_kinds_and_content_types(
    name: str, cls: type, content_type: str, rotates: bool, polling: bool, needs_callback: bool
) -> None:
    framer = FRAMERS[name]
    assert type(framer) is cls
    assert framer.content_type == content_type
    assert (framer.rotates, framer.polling, framer.needs_callback) == (
        rotates,
        polling,
        needs_callback,
    )
    # Bound to a callback, a framer is still the same kind.
    mine = framer.for_request("cb")
    assert type(mine) is cls and mine.content_type == content_type
    assert (mine.rotates, mine.polling, mine.needs_callback) == (rotates, polling, needs_callback)


@pytest.mark.parametrize("name", ["ws", "sse", "xhr", "multipart", "poll"])
@pytest.mark.parametrize("callback", [None, "cb", "1a", ""])
def test_for_request_without_callback_is_self(name: str, callback: str | None) -> None:
    framer = FRAMERS[name]
    assert framer.for_request(callback) is framer


@pytest.mark.parametrize(
    ("name", "epilogue"),
    [
        ("ws", b""),
        ("sse", b""),
        ("xhr", b""),
        ("multipart", b"--rt-mixed-5f0c3a--\r\n"),
        ("htmlfile", b"</body></html>\n"),
        ("poll", b""),
        ("jsonp", b""),
    ],
)
def test_epilogues(name: str, epilogue: bytes) -> None:
    assert bound(name).epilogue() == epilogue


@pytest.mark.parametrize("name", ["ws", "sse", "xhr", "multipart", "htmlfile"])
def test_streaming_framers_do_not_answer(name: str) -> None:
    with pytest.raises(NotImplementedError):
        bound(name).answer([T_RAW])


@pytest.mark.parametrize("name", ["poll", "jsonp"])
def test_polling_framers_have_no_heartbeat(name: str) -> None:
    with pytest.raises(NotImplementedError):
        bound(name).heartbeat()


def test_unbound_callback_framers_refuse_to_write_the_callback() -> None:
    # The shared instances have no callback: what needs F must fail loudly.
    with pytest.raises(RuntimeError):
        FRAMERS["htmlfile"].preamble()
    with pytest.raises(RuntimeError):
        FRAMERS["jsonp"].answer([])


# -- exact bytes ----------------------------------------------------------------------

Call = Callable[[Framer], bytes]

EXACT: list[Any] = [
    # xhr: OBJ\n per object, a lone \n as heartbeat
    ("xhr", lambda f: f.preamble(), b"", "preamble"),
    ("xhr", lambda f: f.frame([T], EPOCH), T_RAW + b"\n", "one"),
    (
        "xhr",
        lambda f: f.frame([T, P, M], EPOCH),
        T_RAW + b"\n" + P_RAW + b"\n" + M_RAW + b"\n",
        "three",
    ),
    ("xhr", lambda f: f.frame([], EPOCH), b"", "empty"),
    ("xhr", lambda f: f.control(CLOSE), CLOSE_RAW + b"\n", "close"),
    (
        "xhr",
        lambda f: f.ready({"type": "ready", "cursor": 5}, EPOCH),
        b'{"type":"ready","cursor":5}\n',
        "ready",
    ),
    ("xhr", lambda f: f.heartbeat(), b"\n", "heartbeat"),
    # multipart: one part per batch
    ("multipart", lambda f: f.preamble(), b"", "preamble"),
    ("multipart", lambda f: f.frame([T], EPOCH), PART + b"[" + T_RAW + b"]\r\n", "one"),
    (
        "multipart",
        lambda f: f.frame([T, P, M], EPOCH),
        PART + b"[" + T_RAW + b"," + P_RAW + b"," + M_RAW + b"]\r\n",
        "three",
    ),
    ("multipart", lambda f: f.frame([], EPOCH), b"", "empty"),
    ("multipart", lambda f: f.control(CLOSE), PART + b"[" + CLOSE_RAW + b"]\r\n", "close"),
    (
        "multipart",
        lambda f: f.ready({"type": "ready", "cursor": 5}, EPOCH),
        PART + b'[{"type":"ready","cursor":5}]\r\n',
        "ready",
    ),
    (
        "multipart",
        lambda f: f.heartbeat(),
        b"--rt-mixed-5f0c3a\r\nContent-Type: application/json\r\n\r\n[]\r\n",
        "heartbeat",
    ),
    ("multipart", lambda f: f.epilogue(), b"--rt-mixed-5f0c3a--\r\n", "epilogue"),
    # htmlfile: one script element per batch
    ("htmlfile", lambda f: f.frame([T], EPOCH), b"<script>p([" + T_RAW + b"]);</script>\n", "one"),
    (
        "htmlfile",
        lambda f: f.frame([T, P, M], EPOCH),
        b"<script>p([" + T_RAW + b"," + P_RAW + b"," + M_RAW + b"]);</script>\n",
        "three",
    ),
    ("htmlfile", lambda f: f.frame([], EPOCH), b"", "empty"),
    (
        "htmlfile",
        lambda f: f.control(CLOSE),
        b"<script>p([" + CLOSE_RAW + b"]);</script>\n",
        "close",
    ),
    (
        "htmlfile",
        lambda f: f.ready({"type": "ready", "cursor": 5}, EPOCH),
        b'<script>p([{"type":"ready","cursor":5}]);</script>\n',
        "ready",
    ),
    ("htmlfile", lambda f: f.heartbeat(), b"<script>p([]);</script>\n", "heartbeat"),
    ("htmlfile", lambda f: f.epilogue(), b"</body></html>\n", "epilogue"),
    # poll: one JSON array per response
    ("poll", lambda f: f.answer([]), b"[]", "answer-empty"),
    ("poll", lambda f: f.answer([T_RAW]), b"[" + T_RAW + b"]", "answer-one"),
    (
        "poll",
        lambda f: f.answer([T_RAW, P_RAW, M_RAW]),
        b"[" + T_RAW + b"," + P_RAW + b"," + M_RAW + b"]",
        "answer-three",
    ),
    ("poll", lambda f: f.frame([T, M], EPOCH), b"[" + T_RAW + b"," + M_RAW + b"]", "frame"),
    (
        "poll",
        lambda f: f.control({"type": "close", "reason": "superseded"}),
        b'[{"type":"close","reason":"superseded"}]',
        "close-superseded",
    ),
    (
        "poll",
        lambda f: f.ready({"type": "ready", "cursor": 5}, EPOCH),
        b'[{"type":"ready","cursor":5}]',
        "ready",
    ),
    ("poll", lambda f: f.preamble(), b"", "preamble"),
    # jsonp: /**/F([OBJ,...]);
    ("jsonp", lambda f: f.answer([]), b"/**/cb([]);", "answer-empty"),
    ("jsonp", lambda f: f.answer([T_RAW]), b"/**/cb([" + T_RAW + b"]);", "answer-one"),
    (
        "jsonp",
        lambda f: f.answer([T_RAW, P_RAW, M_RAW]),
        b"/**/cb([" + T_RAW + b"," + P_RAW + b"," + M_RAW + b"]);",
        "answer-three",
    ),
    (
        "jsonp",
        lambda f: f.frame([T, M], EPOCH),
        b"/**/cb([" + T_RAW + b"," + M_RAW + b"]);",
        "frame",
    ),
    ("jsonp", lambda f: f.control(CLOSE), b"/**/cb([" + CLOSE_RAW + b"]);", "close"),
    (
        "jsonp",
        lambda f: f.ready({"type": "ready", "cursor": 5}, EPOCH),
        b'/**/cb([{"type":"ready","cursor":5}]);',
        "ready",
    ),
    ("jsonp", lambda f: f.preamble(), b"", "preamble"),
]


@pytest.mark.parametrize(
    ("name", "call", "expected"), [pytest.param(n, c, e, id=f"{n}-{i}") for n, c, e, i in EXACT]
)
def test_exact_bytes(name: str, call: Call, expected: bytes) -> None:
    assert call(bound(name)) == expected


@pytest.mark.parametrize(
    ("callback", "expected"),
    [
        ("$x.y_z", b"/**/$x.y_z([" + T_RAW + b"]);"),
        ("a1.b2", b"/**/a1.b2([" + T_RAW + b"]);"),
        ("CWSabc", b"/**/CWSabc([" + T_RAW + b"]);"),  # never the first bytes of the body
    ],
)
def test_jsonp_callbacks_exact(callback: str, expected: bytes) -> None:
    assert bound("jsonp", callback).answer([T_RAW]) == expected


# -- callback validation ----------------------------------------------------------------

GOOD_CALLBACKS = [
    "cb",
    "$x.y_z",
    "a1.b2",
    "_",
    "$",
    "A.B.C",
    "_rt.streams.s12",
    "a" * 64,
    "a." + "b" * 62,
]
BAD_CALLBACKS = [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("1a", id="leading-digit"),
    pytest.param("a..b", id="double-dot"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param(".a", id="leading-dot"),
    pytest.param("a.1b", id="segment-leading-digit"),
    pytest.param("a-b", id="dash"),
    pytest.param("alert(1)", id="call"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("a." + "b" * 63, id="65-chars-dotted"),
    pytest.param("caf\u00e9", id="non-ascii-letter"),
    pytest.param("\uff41", id="fullwidth-letter"),
    pytest.param("a\u0661", id="arabic-indic-digit"),
    pytest.param("a b", id="space"),
    pytest.param("a;b", id="semicolon"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a[0]", id="brackets"),
    pytest.param("a</script>", id="end-tag"),
    pytest.param("a\x00", id="nul"),
]


@pytest.mark.parametrize("name", ["htmlfile", "jsonp"])
@pytest.mark.parametrize("callback", GOOD_CALLBACKS)
def test_good_callbacks_bind_a_new_framer(name: str, callback: str) -> None:
    shared = FRAMERS[name]
    mine = shared.for_request(callback)
    assert mine is not shared and type(mine) is type(shared)
    assert mine.callback == callback  # type: ignore[attr-defined]
    assert shared.callback is None  # type: ignore[attr-defined]
    if name == "jsonp":
        assert mine.answer([]) == b"/**/" + callback.encode() + b"([]);"
    else:
        assert b"<script>var p=parent." + callback.encode() + b";</script>" in mine.preamble()


@pytest.mark.parametrize("name", ["htmlfile", "jsonp"])
@pytest.mark.parametrize("callback", BAD_CALLBACKS)
def test_bad_callbacks_are_bad_requests(name: str, callback: str | None) -> None:
    with pytest.raises(RtError) as info:
        FRAMERS[name].for_request(callback)
    assert info.value.code == "bad_request"
    assert info.value.status == 400
    assert "callback" in info.value.message


# -- NDJSON (xhr) ------------------------------------------------------------------------


@dataclass
class NdjsonDecoder:
    """Lines split on `\\n` only (as rt's client does); an empty line is a heartbeat."""

    objects: list[Any] = field(default_factory=list)
    heartbeats: int = 0
    _line: bytes = b""

    def feed(self, chunk: bytes) -> None:
        for byte in chunk:
            if byte == 0x0A:
                line, self._line = self._line, b""
                if line:
                    self.objects.append(json.loads(line.decode("utf-8")))
                else:
                    self.heartbeats += 1
            else:
                self._line += bytes([byte])

    @property
    def partial(self) -> bool:
        return bool(self._line)


def ndjson_bytewise(stream: bytes) -> NdjsonDecoder:
    decoder = NdjsonDecoder()
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
    return decoder


def test_ndjson_decoder_self_check() -> None:
    decoder = ndjson_bytewise('{"a":1}\n\n[2]\n{"b":"\u00e9\u2028"}\n{"c"'.encode())
    assert decoder.objects == [{"a": 1}, [2], {"b": "\u00e9\u2028"}]
    assert decoder.heartbeats == 1
    assert decoder.partial
    with pytest.raises(json.JSONDecodeError):
        ndjson_bytewise(b'{"a":\n1}\n')  # a raw newline inside an object breaks it


# -- multipart/x-mixed-replace -------------------------------------------------------------


@dataclass
class MultipartDecoder:
    """A multipart body reader, RFC 2046 section 5.1.1, fed bytes in any chunks.

    Strict: a part's body ends at the next delimiter `CRLF--B`, so a part is
    known only when the next one starts. Eager: a body ends at its first
    CRLF (rt's bodies hold none), so each part is handled on arrival, and
    the delimiter must follow. Parts must carry `Content-Type:
    application/json`; their JSON arrays are concatenated into `objects`,
    an empty array counting as a heartbeat.
    """

    boundary: bytes
    eager: bool = False
    objects: list[Any] = field(default_factory=list)
    parts: int = 0
    heartbeats: int = 0
    closed: bool = False
    epilogue: bytes = b""
    _buf: bytes = b""
    _state: str = "preamble"
    _headers: dict[str, str] = field(default_factory=dict)

    @property
    def _dash(self) -> bytes:
        return b"--" + self.boundary

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        buf, dash = self._buf, self._dash
        if self._state == "preamble":
            # rt sends no preamble: the body starts with the first dash-boundary.
            if len(buf) < len(dash):
                assert dash.startswith(buf), buf
                return False
            assert buf.startswith(dash), buf
            self._buf = buf[len(dash) :]
            self._state = "after-boundary"
            return True
        if self._state == "after-boundary":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.closed = True
                self._buf = buf[2:]
                self._state = "epilogue"
                return True
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            assert buf[:end].strip(b" \t") == b"", buf  # transport padding only
            self._buf = buf[end + 2 :]
            self._headers = {}
            self._state = "headers"
            return True
        if self._state == "headers":
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            line, self._buf = buf[:end], buf[end + 2 :]
            if line == b"":
                self._state = "body"
            else:
                name, colon, value = line.decode("ascii").partition(":")
                assert colon, line
                self._headers[name.strip().lower()] = value.strip()
            return True
        if self._state == "body":
            end = buf.find(b"\r\n" if self.eager else b"\r\n" + dash)
            if end < 0:
                return False
            self._part(buf[:end])
            if self.eager:
                self._buf = buf[end + 2 :]
                self._state = "delimiter"
            else:
                self._buf = buf[end + 2 + len(dash) :]
                self._state = "after-boundary"
            return True
        if self._state == "delimiter":
            if len(buf) < len(dash):
                assert dash.startswith(buf), buf
                return False
            assert buf.startswith(dash), buf
            self._buf = buf[len(dash) :]
            self._state = "after-boundary"
            return True
        assert self._state == "epilogue"
        self.epilogue += buf
        self._buf = b""
        return False

    def _part(self, body: bytes) -> None:
        assert self._headers == {"content-type": "application/json"}, self._headers
        value = json.loads(body.decode("utf-8"))
        assert isinstance(value, list)
        self.parts += 1
        if not value:
            self.heartbeats += 1
        self.objects.extend(value)


def multipart_bytewise(stream: bytes, eager: bool, boundary: bytes = B) -> MultipartDecoder:
    decoder = MultipartDecoder(boundary, eager)
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
    return decoder


MP_SAMPLE = (
    b"--XyZ\r\nContent-Type: application/json\r\n\r\n[1,2]\r\n"
    b"--XyZ \t\r\nContent-Type:application/json\r\n\r\n[]\r\n"
    b'--XyZ\r\ncontent-type: application/json\r\n\r\n["--XyZ"]\r\n'
    b"--XyZ--\r\n"
)


@pytest.mark.parametrize("eager", [False, True])
def test_multipart_decoder_self_check(eager: bool) -> None:
    decoder = multipart_bytewise(MP_SAMPLE, eager, b"XyZ")
    assert decoder.objects == [1, 2, "--XyZ"]
    assert (decoder.parts, decoder.heartbeats, decoder.closed) == (3, 1, True)
    assert decoder.epilogue == b"\r\n"


def test_multipart_strict_decoder_splits_on_crlf_dash_boundary_only() -> None:
    # Per RFC 2046 a body may hold a CRLF and even "--B" not after a CRLF.
    body = b'--XyZ\r\nContent-Type: application/json\r\n\r\n[1,\r\n2, "x--XyZ"]\r\n--XyZ--'
    decoder = multipart_bytewise(body, False, b"XyZ")
    assert decoder.objects == [1, 2, "x--XyZ"] and decoder.closed
    # ... and a CRLF--B inside a body ends the part there.
    broken = b'--XyZ\r\nContent-Type: application/json\r\n\r\n["a\r\n--XyZ\r\n"]\r\n--XyZ--'
    with pytest.raises((AssertionError, json.JSONDecodeError, UnicodeDecodeError)):
        multipart_bytewise(broken, False, b"XyZ")


def test_multipart_strict_decoder_lags_one_part_and_eager_does_not() -> None:
    one_part = b"--XyZ\r\nContent-Type: application/json\r\n\r\n[1]\r\n"
    assert multipart_bytewise(one_part, False, b"XyZ").objects == []
    assert multipart_bytewise(one_part, True, b"XyZ").objects == [1]


# -- HTMLFile: the WHATWG tokenizer's view of script elements --------------------------------

WS = "\t\n\f\r "


@dataclass
class HtmlScripts:
    """The parts of an HTML document that matter here, fed bytes in any chunks.

    Outside script elements a simplified tokenizer (tags with quoted
    attributes, comments, `<!DOCTYPE>`) collects the text a browser would
    render. After a `<script>` start tag it follows the HTML Living Standard
    tokenizer (section 13.2.5.4 and on): script data, its end tag states,
    and the escaped and double-escaped states that `<!--` and `<script`
    inside a script start. So a script element ends exactly where a browser
    ends it: at the first `</script` followed by whitespace, `/` or `>`,
    in any case, unless it is double-escaped.
    """

    scripts: list[str] = field(default_factory=list)
    text: str = ""
    tags: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("strict"))
    _state: str = "data"
    _script: str = ""
    _temp: str = ""
    _tag: str = ""
    _quote: str = ""
    _markup: str = ""

    def feed(self, chunk: bytes) -> None:
        for ch in self._decoder.decode(chunk):
            while self._consume(ch):
                pass  # reconsume in the new state

    @property
    def in_script(self) -> bool:
        return self._state.startswith("script")

    def _emit(self, text: str) -> None:
        self._script += text

    def _consume(self, c: str) -> bool:
        """Handle one character; True to reconsume it in the new state."""
        s = self._state
        # -- outside scripts (simplified) --
        if s == "data":
            if c == "<":
                self._state = "tag-open"
            else:
                self.text += c
        elif s == "tag-open":
            if c == "!":
                self._markup = ""
                self._state = "markup"
            elif c == "/":
                self._tag = "/"
                self._state = "tag-name"
            elif c.isascii() and c.isalpha():
                self._tag = c.lower()
                self._state = "tag-name"
            else:
                self.text += "<"
                self._state = "data"
                return True
        elif s == "tag-name":
            if c in WS or c == "/":
                self._state = "attributes"
            elif c == ">":
                self._start_or_end_tag()
            else:
                self._tag += c.lower()
        elif s == "attributes":
            if self._quote:
                if c == self._quote:
                    self._quote = ""
            elif c in "\"'":
                self._quote = c
            elif c == ">":
                self._start_or_end_tag()
        elif s == "markup":
            self._markup += c
            if self._markup == "--":
                self._state = "comment"
                self._markup = ""
            elif not "--".startswith(self._markup):
                self._state = "bogus"  # <!DOCTYPE ...>: skipped to ">"
                if c == ">":
                    self.tags.append("!")
                    self._state = "data"
        elif s == "bogus":
            if c == ">":
                self.tags.append("!")
                self._state = "data"
        elif s == "comment":
            self._markup += c
            if self._markup.endswith("-->"):
                self.comments.append(self._markup[:-3])
                self._state = "data"
        # -- script data (13.2.5.4 and on) --
        elif s == "script":
            if c == "<":
                self._state = "script-lt"
            else:
                self._emit(c)
        elif s == "script-lt":
            if c == "/":
                self._temp = ""
                self._state = "script-end-open"
            elif c == "!":
                self._emit("<!")
                self._state = "script-escape-start"
            else:
                self._emit("<")
                self._state = "script"
                return True
        elif s in ("script-end-open", "script-escaped-end-open"):
            back = "script" if s == "script-end-open" else "script-escaped"
            if c.isascii() and c.isalpha():
                self._state = back + "-end-name"
                return True
            self._emit("</")
            self._state = back
            return True
        elif s in ("script-end-name", "script-escaped-end-name"):
            back = "script" if s == "script-end-name" else "script-escaped"
            if self._temp.lower() == "script" and (c in WS or c in "/>"):
                # The appropriate end tag: the script element ends here.
                self.scripts.append(self._script)
                self._script = ""
                self._tag = "/script"
                if c == ">":
                    self._start_or_end_tag()
                else:
                    self._state = "attributes"
            elif c.isascii() and c.isalpha():
                self._temp += c
            else:
                self._emit("</" + self._temp)
                self._state = back
                return True
        elif s == "script-escape-start":
            if c == "-":
                self._emit("-")
                self._state = "script-escape-start-dash"
            else:
                self._state = "script"
                return True
        elif s == "script-escape-start-dash":
            if c == "-":
                self._emit("-")
                self._state = "script-escaped-dash-dash"
            else:
                self._state = "script"
                return True
        elif s == "script-escaped":
            if c == "-":
                self._emit("-")
                self._state = "script-escaped-dash"
            elif c == "<":
                self._state = "script-escaped-lt"
            else:
                self._emit(c)
        elif s == "script-escaped-dash":
            if c == "-":
                self._emit("-")
                self._state = "script-escaped-dash-dash"
            elif c == "<":
                self._state = "script-escaped-lt"
            else:
                self._emit(c)
                self._state = "script-escaped"
        elif s == "script-escaped-dash-dash":
            if c == "-":
                self._emit("-")
            elif c == "<":
                self._state = "script-escaped-lt"
            elif c == ">":
                self._emit(">")
                self._state = "script"
            else:
                self._emit(c)
                self._state = "script-escaped"
        elif s == "script-escaped-lt":
            if c == "/":
                self._temp = ""
                self._state = "script-escaped-end-open"
            elif c.isascii() and c.isalpha():
                self._temp = ""
                self._emit("<")
                self._state = "script-double-escape-start"
                return True
            else:
                self._emit("<")
                self._state = "script-escaped"
                return True
        elif s in ("script-double-escape-start", "script-double-escape-end"):
            if c in WS or c in "/>":
                inner = s == "script-double-escape-start"
                if self._temp == "script":
                    self._state = "script-double-escaped" if inner else "script-escaped"
                else:
                    self._state = "script-escaped" if inner else "script-double-escaped"
                self._emit(c)
            elif c.isascii() and c.isalpha():
                self._temp += c.lower()
                self._emit(c)
            else:
                self._state = (
                    "script-escaped"
                    if s == "script-double-escape-start"
                    else "script-double-escaped"
                )
                return True
        elif s == "script-double-escaped":
            if c == "-":
                self._emit("-")
                self._state = "script-double-escaped-dash"
            elif c == "<":
                self._emit("<")
                self._state = "script-double-escaped-lt"
            else:
                self._emit(c)
        elif s == "script-double-escaped-dash":
            if c == "-":
                self._emit("-")
                self._state = "script-double-escaped-dash-dash"
            elif c == "<":
                self._emit("<")
                self._state = "script-double-escaped-lt"
            else:
                self._emit(c)
                self._state = "script-double-escaped"
        elif s == "script-double-escaped-dash-dash":
            if c == "-":
                self._emit("-")
            elif c == "<":
                self._emit("<")
                self._state = "script-double-escaped-lt"
            elif c == ">":
                self._emit(">")
                self._state = "script"
            else:
                self._emit(c)
                self._state = "script-double-escaped"
        elif s == "script-double-escaped-lt":
            if c == "/":
                self._temp = ""
                self._emit("/")
                self._state = "script-double-escape-end"
            else:
                self._state = "script-double-escaped"
                return True
        else:  # pragma: no cover
            raise AssertionError(f"unknown state {s}")
        return False

    def _start_or_end_tag(self) -> None:
        tag = self._tag
        self.tags.append(tag)
        if tag == "script":
            self._script = ""
            self._state = "script"
        else:
            self._state = "data"


def html_bytewise(stream: bytes) -> HtmlScripts:
    parser = HtmlScripts()
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
    return parser


@pytest.mark.parametrize(
    ("html", "scripts", "text"),
    [
        pytest.param("<script>a=1</script>", ["a=1"], "", id="plain"),
        pytest.param('<script>x="</script>";</script>', ['x="'], '";', id="first-end-tag-wins"),
        pytest.param("<script>a</SCRIPT >b", ["a"], "b", id="upper-case-and-space"),
        pytest.param("<script>a</script/>b", ["a"], "b", id="end-tag-slash"),
        pytest.param("<script>a</scriptx>b</script>", ["a</scriptx>b"], "", id="not-script-end"),
        pytest.param("<script>a</scrip</script>", ["a</scrip"], "", id="partial-end"),
        pytest.param("<script>a<b</script>", ["a<b"], "", id="lt"),
        pytest.param("<script><!--a--></script>", ["<!--a-->"], "", id="escaped"),
        pytest.param(
            "<script><!--<script></script>x</script>y",
            ["<!--<script></script>x"],
            "y",
            id="double-escaped-end-tag-does-not-end",
        ),
        pytest.param(
            "<script><!--<script>--></script>",
            ["<!--<script>-->"],
            "",
            id="double-escape-closed-by-arrow",
        ),
        pytest.param("<script><!--</script>-->", ["<!--"], "-->", id="escaped-end-tag-ends"),
        pytest.param(
            '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
            "<!-- c --> <p title='a>b'>hi</p>",
            [],
            " hi",
            id="outside-scripts",
        ),
        pytest.param("<script>'\u00e9\U0001f600'</script>", ["'\u00e9\U0001f600'"], "", id="utf-8"),
    ],
)
def test_html_tokenizer_self_check(html: str, scripts: list[str], text: str) -> None:
    for parser in (html_bytewise(html.encode()), _html_whole(html.encode())):
        assert parser.scripts == scripts
        assert parser.text == text


def _html_whole(stream: bytes) -> HtmlScripts:
    parser = HtmlScripts()
    parser.feed(stream)
    return parser


@dataclass
class HtmlFileClient:
    """Runs the scripts of an htmlfile document as a browser would, for this shape.

    The first script must be `var p=parent.F;`; each later one must be a
    single call `p(ARRAY);` whose argument is JSON (the objects delivered).
    """

    callback: str | None = None
    objects: list[Any] = field(default_factory=list)
    calls: int = 0
    heartbeats: int = 0

    def run(self, script: str) -> None:
        if self.callback is None:
            match = re.fullmatch(r"var p=parent\.([A-Za-z0-9_$.]+);", script)
            assert match, script
            self.callback = match.group(1)
            return
        match = re.fullmatch(r"p\((.*)\);", script, re.DOTALL)
        assert match, script
        value = json.loads(match.group(1))
        assert isinstance(value, list)
        self.calls += 1
        if not value:
            self.heartbeats += 1
        self.objects.extend(value)


def htmlfile_run(stream: bytes) -> tuple[HtmlScripts, HtmlFileClient]:
    parser = html_bytewise(stream)
    client = HtmlFileClient()
    for script in parser.scripts:
        client.run(script)
    return parser, client


# -- the htmlfile preamble ------------------------------------------------------------------


@pytest.mark.parametrize("callback", ["cb", "$x.y_z", "a" * 64, "a." + "b" * 62])
def test_htmlfile_preamble(callback: str) -> None:
    preamble = bound("htmlfile", callback).preamble()
    assert len(preamble) >= 1024
    head = (
        b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        b"<script>var p=parent." + callback.encode() + b";</script><!--"
    )
    assert preamble.startswith(head)
    assert preamble.endswith(b"-->\n")
    assert set(preamble[len(head) : -4]) == {ord(" ")}  # padding: spaces in a comment
    # The encoding declaration is within the first 1024 bytes (HTML prescan).
    assert preamble.index(b'<meta charset="utf-8">') + 22 <= 1024
    parser, client = htmlfile_run(preamble)
    assert client.callback == callback
    assert parser.scripts == [f"var p=parent.{callback};"]
    assert parser.text.strip() == ""  # renders nothing
    assert not parser.in_script


# -- whole streams, decoded one byte at a time ---------------------------------------------

HEARTBEAT = object()


def script_of_batches() -> list[Any]:
    """Batches of hostile content, some mixed with ephemeral events, and heartbeats."""
    items: list[Any] = []
    next_id = 42
    for i, text in enumerate(HOSTILE):
        batch: list[Event] = [stored(next_id, text)]
        next_id += 1
        if i % 3 == 0:
            batch.append(presence_event("general", "alice", "online"))
        if i % 4 == 1:
            batch.append(stored(next_id, text + text, flow="random"))
            next_id += 1
        if i % 5 == 2:
            batch.insert(0, typing_event("general", "bob"))
        items.append(batch)
        if i % 2:
            items.append(HEARTBEAT)
    return items


@dataclass
class Decoded:
    objects: list[Any]
    heartbeats: int
    complete: bool


def decode_stream(name: str, stream: bytes) -> Decoded:
    """The objects a client of transport `name` reads from `stream`, byte by byte."""
    if name == "xhr":
        nd = ndjson_bytewise(stream)
        return Decoded(nd.objects, nd.heartbeats, not nd.partial)
    if name == "multipart":
        strict = multipart_bytewise(stream, eager=False)
        eager = multipart_bytewise(stream, eager=True)
        assert (strict.objects, strict.heartbeats, strict.parts, strict.closed) == (
            eager.objects,
            eager.heartbeats,
            eager.parts,
            eager.closed,
        )
        assert strict.closed and strict.epilogue == b"\r\n"
        return Decoded(strict.objects, strict.heartbeats, strict.closed)
    assert name == "htmlfile"
    parser, client = htmlfile_run(stream)
    assert parser.text.strip() == ""
    assert parser.tags[-2:] == ["/body", "/html"]
    return Decoded(client.objects, client.heartbeats, not parser.in_script)


STREAMING = ["xhr", "multipart", "htmlfile"]


@pytest.mark.parametrize("name", STREAMING)
def test_whole_stream_decodes_byte_by_byte(name: str) -> None:
    framer = bound(name, "rt_cb.s1")
    parts = [framer.preamble()]
    ready = ready_obj(transport=name)
    parts.append(framer.ready(ready, EPOCH))
    expected: list[Any] = [ready]
    heartbeats = 0
    frames = 1
    for item in script_of_batches():
        if item is HEARTBEAT:
            parts.append(framer.heartbeat())
            heartbeats += 1
        else:
            parts.append(framer.frame(item, EPOCH))
            expected.extend(e.data for e in item)
        frames += 1
    parts.append(framer.control(CLOSE))
    frames += 1
    expected.append(CLOSE)
    parts.append(framer.epilogue())
    stream = b"".join(parts)

    decoded = decode_stream(name, stream)
    assert decoded.objects == expected
    assert decoded.heartbeats == heartbeats
    assert decoded.complete
    if name == "htmlfile":
        parser, _ = htmlfile_run(stream)
        # One script element per frame, each exactly the one framed.
        assert len(parser.scripts) == 1 + frames
        for script, part in zip(parser.scripts[1:], parts[1:-1], strict=True):
            assert b"<script>" + script.encode() + b"</script>\n" == part
    # The framing never holds these raw, whatever the content.
    assert "\u2028".encode() not in stream and "\u2029".encode() not in stream


@pytest.mark.parametrize("name", STREAMING)
def test_each_frame_is_decoded_on_arrival(name: str) -> None:
    """A streaming client handles a batch when its bytes arrive, not later."""
    framer = bound(name)
    ndjson = NdjsonDecoder()
    multipart = MultipartDecoder(B, eager=True)
    html = HtmlScripts()
    client = HtmlFileClient()
    chunks = [framer.preamble(), framer.ready(ready_obj(), EPOCH)]
    expected = [[], [ready_obj()]]
    for item in script_of_batches()[:12]:
        if item is HEARTBEAT:
            chunks.append(framer.heartbeat())
            expected.append(list(expected[-1]))
        else:
            chunks.append(framer.frame(item, EPOCH))
            expected.append(expected[-1] + [e.data for e in item])
    ran = 0
    for chunk, objects in zip(chunks, expected, strict=True):
        for i in range(len(chunk)):
            byte = chunk[i : i + 1]
            if name == "xhr":
                ndjson.feed(byte)
            elif name == "multipart":
                multipart.feed(byte)
            else:
                html.feed(byte)
        if name == "xhr":
            assert ndjson.objects == objects and not ndjson.partial
        elif name == "multipart":
            assert multipart.objects == objects
        else:
            for script in html.scripts[ran:]:
                client.run(script)
            ran = len(html.scripts)
            assert client.objects == objects and not html.in_script


@pytest.mark.parametrize("name", STREAMING)
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_content_is_one_object(name: str, text: str) -> None:
    framer = bound(name)
    event = stored(9, text)
    body = framer.frame([event], EPOCH)
    for forbidden in (b"\n", b"\r", b"<", b">"):
        # The object's bytes hold none of what ends a line, a part or a script.
        assert forbidden not in event.raw
    if name == "xhr":
        assert body.count(b"\n") == 1
    elif name == "multipart":
        assert body.count(b"\r\n") == 4 and body.count(b"\r\n--" + B) == 0
    else:
        assert body.count(b"<") == 2 and body.lower().count(b"</script") == 1
    stream = framer.preamble() + body + framer.epilogue()
    decoded = decode_stream(name, stream)
    assert [o["content"] for o in decoded.objects] == [text]
    assert decoded.objects == [event.data]


# -- polling bodies --------------------------------------------------------------------------


def jsonp_call(body: bytes) -> tuple[str, Any]:
    """The callback and argument of a JSONP body `/**/F(ARG);`."""
    match = re.fullmatch(rb"/\*\*/([A-Za-z0-9_$.]+)\((.*)\);", body, re.DOTALL)
    assert match, body
    return match.group(1).decode(), json.loads(match.group(2))


@pytest.mark.parametrize("text", HOSTILE)
def test_polling_bodies_hold_hostile_content_as_one_object(text: str) -> None:
    events = [stored(1, text), typing_event("general", "bob"), stored(2, text + text)]
    parts = [encode(ready_obj(transport="poll"))] + [e.raw for e in events]
    expected = [ready_obj(transport="poll")] + [e.data for e in events]

    poll = bound("poll").answer(parts)
    assert json.loads(poll) == expected

    jsonp = bound("jsonp", "$x.y_z").answer(parts)
    assert jsonp.startswith(b"/**/$x.y_z([")
    assert jsonp.endswith(b"]);")
    assert jsonp_call(jsonp) == ("$x.y_z", expected)
    for body in (poll, jsonp):
        assert b"\n" not in body and b"\r" not in body
        assert "\u2028".encode() not in body and "\u2029".encode() not in body


@pytest.mark.parametrize("count", [0, 1, 2, 500])
def test_polling_answers_of_any_length(count: int) -> None:
    events = [stored(i + 1, f"m{i}") for i in range(count)]
    raws = [e.raw for e in events]
    assert json.loads(bound("poll").answer(raws)) == [e.data for e in events]
    assert jsonp_call(bound("jsonp").answer(raws)) == ("cb", [e.data for e in events])


def test_poll_and_jsonp_answer_and_frame_agree() -> None:
    events = [stored(1, "a"), presence_event("general", "alice", "offline")]
    for name in ("poll", "jsonp"):
        framer = bound(name)
        assert framer.frame(events, EPOCH) == framer.answer([e.raw for e in events])
        assert framer.control(CLOSE) == framer.answer([CLOSE_RAW])


# -- rotation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        pytest.param([], 100, 0, id="empty-batch"),
        pytest.param([], 0, 0, id="empty-batch-no-budget"),
        pytest.param([10], 0, 0, id="budget-zero"),
        pytest.param([10, 10], -5, 0, id="budget-negative"),
        pytest.param([10, 10, 10], 30, 3, id="exact-fit-whole-batch"),
        pytest.param([10, 10, 10], 20, 2, id="exact-fit-at-object-boundary"),
        pytest.param([10, 10, 10], 10, 1, id="exact-fit-first-object"),
        pytest.param([10, 10, 10], 25, 3, id="last-object-crosses"),
        pytest.param([10, 10, 10], 15, 2, id="one-crossing-object"),
        pytest.param([10, 10, 10], 1, 1, id="budget-one"),
        pytest.param([10, 10, 10], 31, 3, id="all-below-mark"),
        pytest.param([1] * 100, 10, 10, id="many-small"),
        pytest.param([1] * 100, 1000, 100, id="many-small-all-fit"),
        pytest.param([10**6], 10, 1, id="one-huge"),
        pytest.param([10**6, 5, 5], 10, 1, id="huge-first"),
        pytest.param([5, 10**6, 5], 10, 2, id="huge-crosses"),
        pytest.param([0, 0, 0], 1, 3, id="zero-sizes"),
        pytest.param([10, 0, 0], 10, 1, id="nothing-after-the-mark"),
    ],
)
def test_rotation_cut_table(sizes: list[int], budget: int, expected: int) -> None:
    assert rotation_cut(sizes, budget) == expected


def test_rotation_cut_rejects_negative_sizes() -> None:
    with pytest.raises(ValueError):
        rotation_cut([5, -1], 100)


def test_rotation_cut_contract_randomised() -> None:
    rng = random.Random(2026)
    for _ in range(5000):
        sizes = [rng.choice([0, 1, 2, 40, 300, 5000]) for _ in range(rng.randint(0, 8))]
        budget = rng.randint(-50, 6000)
        n = rotation_cut(sizes, budget)
        assert 0 <= n <= len(sizes)
        if budget <= 0 or not sizes:
            assert n == 0
            continue
        assert n >= 1
        # Every object sent starts before the mark ...
        assert all(sum(sizes[:k]) < budget for k in range(n))
        # ... and a batch is cut only once it has reached the mark.
        if n < len(sizes):
            assert sum(sizes[:n]) >= budget


@pytest.mark.parametrize("name", STREAMING)
def test_object_sizes_are_where_objects_start(name: str) -> None:
    framer = bound(name)
    batch = [stored(1, "a"), typing_event("general", "bob"), stored(2, "\u2028</script>")]
    body = framer.frame(batch, EPOCH)
    sizes = framer.object_sizes(batch)
    assert sizes[0] == framer.batch_prefix + len(batch[0].raw) + 1
    for k, event in enumerate(batch):
        start = sum(sizes[:k]) if k else framer.batch_prefix
        assert body[start : start + len(event.raw)] == event.raw
        assert sum(sizes[: k + 1]) == start + len(event.raw) + 1
    # ... and the last one's separator ends at their sum.
    assert body[sum(sizes) - 1 : sum(sizes)] in (b"\n", b"]")


def rotating_response(
    framer: Framer, items: list[Any], rotate_bytes: int
) -> tuple[bytes, list[Any], list[tuple[int, list[tuple[int, int]]]]]:
    """What a server sends on one rotating response, by the rule of section 3.1.

    Returns the body, the objects sent, and for each batch its start and
    the (start, end) of each object in it (end after its separator).
    """
    body = framer.preamble() + framer.ready(ready_obj(), EPOCH)
    sent: list[Any] = [ready_obj()]
    batches: list[tuple[int, list[tuple[int, int]]]] = []
    for item in items:
        if len(body) >= rotate_bytes:
            break
        if item is HEARTBEAT:
            body += framer.heartbeat()
            continue
        sizes = framer.object_sizes(item)
        n = rotation_cut(sizes, rotate_bytes - len(body))
        assert n >= 1  # the batch starts before the mark
        start = len(body)
        spans = [
            (
                start + sum(sizes[:k]) + (framer.batch_prefix if k == 0 else 0),
                start + sum(sizes[: k + 1]),
            )
            for k in range(n)
        ]
        body += framer.frame(item[:n], EPOCH)
        for (a, b), event in zip(spans, item[:n], strict=True):
            assert body[a : b - 1] == event.raw
        batches.append((start, spans))
        sent.extend(e.data for e in item[:n])
        if n < len(item):
            assert len(body) >= rotate_bytes
            break
    else:
        raise AssertionError("the script ended before the response rotated")
    assert len(body) >= rotate_bytes
    body += framer.control(CLOSE) + framer.epilogue()
    sent.append(CLOSE)
    return body, sent, batches


@pytest.mark.parametrize("name", STREAMING)
@pytest.mark.parametrize("rotate_bytes", [1, 1025, 1100, 1500, 2048, 3000, 4096, 6000])
def test_rotating_response_follows_the_rule(name: str, rotate_bytes: int) -> None:
    framer = bound(name)
    rng = random.Random(rotate_bytes)
    items = script_of_batches() * 3
    items = [
        it
        if it is HEARTBEAT
        else it + [stored(900 + i, "x" * rng.randint(0, 300)) for i in range(rng.randint(0, 6))]
        for it in items
    ]
    body, sent, batches = rotating_response(framer, items, rotate_bytes)
    # The close comes at the first batch boundary at or after the mark:
    # every batch but the last started before it ...
    opening = len(framer.preamble() + framer.ready(ready_obj(), EPOCH))
    assert all(start < rotate_bytes for start, _ in batches)
    if opening >= rotate_bytes:
        assert batches == []
    for _start, spans in batches:
        # ... and none runs more than one object past it.
        past = [span for span in spans if span[1] > rotate_bytes]
        assert len(past) <= 1
        assert past in ([], [spans[-1]])
        assert all(a < rotate_bytes for a, _ in spans[1:])
    decoded = decode_stream(name, body)
    assert decoded.objects == sent
    assert decoded.objects[-1] == CLOSE and decoded.complete


@pytest.mark.parametrize("name", STREAMING)
def test_a_mark_inside_the_opening_rotates_before_any_batch(name: str) -> None:
    framer = bound(name)
    opening = framer.preamble() + framer.ready(ready_obj(), EPOCH)
    body, sent, batches = rotating_response(framer, script_of_batches(), len(opening))
    assert batches == [] and sent == [ready_obj(), CLOSE]
    assert body == opening + framer.control(CLOSE) + framer.epilogue()
    assert rotation_cut(framer.object_sizes([stored(1)]), 0) == 0


def test_the_htmlfile_preamble_counts_toward_rotation() -> None:
    framer = bound("htmlfile")
    body, sent, batches = rotating_response(framer, script_of_batches(), 1024)
    assert batches == [] and sent == [ready_obj(), CLOSE]
    body, sent, batches = rotating_response(framer, script_of_batches(), 1025 + 500)
    assert batches[0][0] == 1024 + len(framer.ready(ready_obj(), EPOCH))
