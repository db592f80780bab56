"""Tier 0: rt.client's parsers of the seven framings, fed one byte at a time.

Each framing is written out as the exact bytes PROTOCOL.md section 3.1
says, then fed to the client's parser whole, one byte at a time and in
random cuts: the objects out must be the same, in order, every time. The
same is done with bytes made by the server's own framers (rt.transports),
so a change on either side that breaks the other fails here. And bytes
that break a framing raise ProtocolError (the client then reconnects)
rather than deliver anything half-parsed.
"""

from __future__ import annotations

import random

import orjson
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from rt.client.errors import NetworkError, ProtocolError
from rt.client.http import HttpConnection, Origin
from rt.client.parsers import (
    HtmlFileParser,
    JsonpParser,
    MultipartParser,
    NdjsonParser,
    PollParser,
    SseParser,
    boundary_of,
    ws_objects,
)
from rt.client.retry import Backoff, classify, parse_retry_after
from rt.client.websocket import Accepted, Closed, Message, Rejected, WsClientProtocol
from rt.core.codec import encode
from rt.core.events import Event
from rt.transports import FRAMERS

EPOCH = "Ep0ch_abc"
READY = {
    "type": "ready",
    "protocol": 1,
    "cursor": 5,
    "epoch": EPOCH,
    "reset": False,
    "flows": ["general"],
    "client": "c" * 16,
    "transport": "x",
    "heartbeat": 15,
    "poll_timeout": 25,
    "presence": {"general": ["alice"]},
}
# Content that needs every escape, and multi-byte UTF-8 that a byte-wise feed splits.
EVENT = {
    "id": 6,
    "flow": "general",
    "type": "message",
    "user": "bob",
    "sent": 1,
    "uuid": "u1234567",
    "content": "<b>&amp;</b> é 日本 😀 \u2028 \r\n --rt-mixed-5f0c3a",
}
EVENT2 = {
    "id": 7,
    "flow": "general",
    "type": "message",
    "user": "bob",
    "sent": 2,
    "uuid": "u7654321",
    "content": "</script><script>p([]);</script>",
}
PRESENCE = {"type": "presence", "flow": "general", "user": "bob", "state": "online"}
CLOSE = {"type": "close", "reason": "rotate", "retry_ms": 0}
OBJECTS = [READY, EVENT, EVENT2, PRESENCE, CLOSE]
CB = "rtClient.p"


def raw(obj) -> bytes:
    """OBJ as the server writes it (PROTOCOL.md 3.1: `<`, `>`, `&`, U+2028/9 escaped)."""
    return encode(obj)


def feeds(make, data: bytes) -> list:
    """The objects from feeding `data` whole, byte by byte and in random cuts (all equal)."""
    whole = make().feed(data)
    results = [whole]
    bytewise = make()
    results.append([o for i in range(len(data)) for o in bytewise.feed(data[i : i + 1])])
    rng = random.Random(7)
    for _ in range(5):
        parser, out, i = make(), [], 0
        while i < len(data):
            n = rng.randint(1, 9)
            out += parser.feed(data[i : i + n])
            i += n
        results.append(out)
    assert all(r == whole for r in results), results
    return whole


def test_escapes_are_what_the_server_sends() -> None:
    assert b"<" not in raw(EVENT) and b"\\u003c" in raw(EVENT)
    assert b"\n" not in raw(EVENT) and "\u2028".encode() not in raw(EVENT)


# -- ws ---------------------------------------------------------------------------------


def _server_handshake(client: WsClientProtocol) -> tuple[WSConnection, Request]:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.outgoing())
    request = next(server.events())
    assert isinstance(request, Request)
    return server, request


def test_ws_message_splits_objects() -> None:
    text = "\n".join(raw(o).decode() for o in OBJECTS)
    assert ws_objects(text) == OBJECTS
    assert ws_objects(raw(EVENT).decode()) == [EVENT]
    assert ws_objects(raw({"type": "heartbeat"}).decode()) == [{"type": "heartbeat"}]
    with pytest.raises(ProtocolError):
        ws_objects('{"id":1}\n[1]')


def test_ws_protocol_byte_by_byte() -> None:
    client = WsClientProtocol(
        "127.0.0.1:8000", "/stream/ws?flows=general&client=c", [("Authorization", "Bearer tok")]
    )
    server, request = _server_handshake(client)
    assert request.target == "/stream/ws?flows=general&client=c"
    assert (b"authorization", b"Bearer tok") in request.extra_headers
    ready = raw(READY).decode()
    batch = "\n".join(raw(o).decode() for o in (EVENT, EVENT2, PRESENCE))
    data = server.send(AcceptConnection())
    data += server.send(TextMessage(data=ready))
    # One message in three frames, a Ping between two of them.
    data += server.send(TextMessage(data=batch[:10], message_finished=False))
    data += server.send(Ping(payload=b"hb"))
    data += server.send(TextMessage(data=batch[10:40], message_finished=False))
    data += server.send(TextMessage(data=batch[40:], message_finished=True))
    data += server.send(CloseConnection(code=4009, reason="superseded"))
    events = []
    for i in range(len(data)):
        events += client.receive(data[i : i + 1])
    assert events == [Accepted(), Message(ready), Message(batch), Closed(4009, "superseded")]
    assert ws_objects(events[2].text) == [EVENT, EVENT2, PRESENCE]
    # The client answered the Ping and the close by itself.
    server.receive_data(client.outgoing())
    answers = list(server.events())
    assert isinstance(answers[0], Pong) and answers[0].payload == b"hb"
    assert isinstance(answers[1], CloseConnection)


def test_ws_the_servers_own_frames() -> None:
    from rt.transports.websocket import text_frame

    client = WsClientProtocol("h", "/stream/ws")
    server, _ = _server_handshake(client)
    framer = FRAMERS["ws"]
    data = server.send(AcceptConnection())
    data += text_frame(framer.ready(READY, EPOCH))
    data += text_frame(framer.frame([Event(EVENT), Event(EVENT2)], EPOCH))
    data += text_frame(framer.heartbeat())
    data += text_frame(framer.control(CLOSE))
    events = []
    for i in range(len(data)):
        events += client.receive(data[i : i + 1])
    objects = [o for e in events if isinstance(e, Message) for o in ws_objects(e.text)]
    assert objects == [READY, EVENT, EVENT2, {"type": "heartbeat"}, CLOSE]


def test_ws_refused_upgrade_and_a_cut_connection() -> None:
    client = WsClientProtocol("h", "/stream/ws")
    server, _ = _server_handshake(client)
    body = b'{"error":{"code":"forbidden","message":"no"}}'
    data = server.send(
        RejectConnection(
            status_code=403, headers=[(b"content-length", b"%d" % len(body))], has_body=True
        )
    )
    data += server.send(RejectData(data=body))
    events = []
    for i in range(len(data)):
        events += client.receive(data[i : i + 1])
    assert events == [Rejected(403, {"content-length": str(len(body))}, body)]

    client = WsClientProtocol("h", "/stream/ws")
    server, _ = _server_handshake(client)
    events = client.receive(server.send(AcceptConnection()))
    events += client.receive(b"")  # the connection ended without a close frame
    assert events[0] == Accepted() and isinstance(events[1], Closed) and events[1].code == 1006


# -- sse --------------------------------------------------------------------------------


def sse_body(line_end: bytes = b"\n") -> bytes:
    n = line_end
    return (
        b"retry: 2345"
        + n
        + n
        + b"id: "
        + EPOCH.encode()
        + b":5"
        + n
        + b"event: ready"
        + n
        + b"data: "
        + raw(READY)
        + n
        + n
        + b"id: "
        + EPOCH.encode()
        + b":6"
        + n
        + b"data: "
        + raw(EVENT)
        + n
        + n
        + b": hb"
        + n
        + n
        + b"id: "
        + EPOCH.encode()
        + b":7"
        + n
        + b"data: "
        + raw(EVENT2)
        + n
        + n
        + b"event: presence"
        + n
        + b"data: "
        + raw(PRESENCE)
        + n
        + n
        + b"event: close"
        + n
        + b"data: "
        + raw(CLOSE)
        + n
        + n
    )


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_sse_byte_by_byte(line_end: bytes) -> None:
    assert feeds(SseParser, sse_body(line_end)) == OBJECTS
    parser = SseParser()
    for b in sse_body(line_end):
        parser.feed(bytes([b]))
    assert parser.retry == 2345 and parser.last_event_id == f"{EPOCH}:7"
    assert parser.comments == 1 and parser.last_event_type == "close"


def test_sse_bom_and_the_servers_own_bytes() -> None:
    assert feeds(SseParser, b"\xef\xbb\xbf" + sse_body()) == OBJECTS
    framer = FRAMERS["sse"]
    body = (
        framer.preamble()
        + framer.ready(READY, EPOCH)
        + framer.frame([Event(EVENT)], EPOCH)
        + framer.heartbeat()
        + framer.frame([Event(EVENT2), Event(PRESENCE)], EPOCH)
        + framer.control(CLOSE)
    )
    assert feeds(SseParser, body) == OBJECTS


def test_sse_data_that_is_not_an_object() -> None:
    with pytest.raises(ProtocolError):
        SseParser().feed(b"data: [1,2]\n\n")


# -- xhr --------------------------------------------------------------------------------


def test_xhr_byte_by_byte() -> None:
    body = (
        raw(READY)
        + b"\n"
        + raw(EVENT)
        + b"\n\n"
        + raw(EVENT2)
        + b"\n"
        + b"\n"
        + raw(PRESENCE)
        + b"\r\n"
        + raw(CLOSE)
        + b"\n"
    )
    assert feeds(NdjsonParser, body) == OBJECTS
    framer = FRAMERS["xhr"]
    body = (
        framer.ready(READY, EPOCH)
        + framer.frame([Event(EVENT)], EPOCH)
        + framer.heartbeat()
        + framer.frame([Event(EVENT2), Event(PRESENCE)], EPOCH)
        + framer.control(CLOSE)
    )
    assert feeds(NdjsonParser, body) == OBJECTS
    with pytest.raises(ProtocolError):
        NdjsonParser().feed(b"{not json}\n")


# -- multipart --------------------------------------------------------------------------

B = "rt-mixed-5f0c3a"


def part(*objs) -> bytes:
    return (
        b"--"
        + B.encode()
        + b"\r\nContent-Type: application/json\r\n\r\n["
        + b",".join(raw(o) for o in objs)
        + b"]\r\n"
    )


def test_multipart_byte_by_byte() -> None:
    body = (
        part(READY)
        + part(EVENT, EVENT2)
        + part()
        + part(PRESENCE)
        + part(CLOSE)
        + b"--"
        + B.encode()
        + b"--\r\n"
    )
    assert feeds(lambda: MultipartParser(B), body) == OBJECTS
    parser = MultipartParser(B)
    for b in body:
        parser.feed(bytes([b]))
    assert parser.closed
    framer = FRAMERS["multipart"]
    body = (
        framer.preamble()
        + framer.ready(READY, EPOCH)
        + framer.frame([Event(EVENT)], EPOCH)
        + framer.heartbeat()
        + framer.frame([Event(EVENT2), Event(PRESENCE)], EPOCH)
        + framer.control(CLOSE)
        + framer.epilogue()
    )
    assert feeds(lambda: MultipartParser(boundary_of(framer.content_type)), body) == OBJECTS


def test_multipart_hands_a_part_over_at_its_crlf() -> None:
    parser = MultipartParser(B)
    assert parser.feed(part(READY)) == [READY]  # before the next delimiter arrives


@pytest.mark.parametrize("transport", ["xhr", "sse", "multipart", "htmlfile"])
def test_a_big_batch_a_byte_at_a_time_is_read_in_linear_time(transport) -> None:
    """A catch-up batch of 500 events (~125 KB) in single bytes (the lab's `slice` fault):
    each parser scans on from where it stopped, not from the start of the batch at every
    byte (that was 7 s of CPU for one multipart part, against 0.15 s now)."""
    import time

    events = [Event({**EVENT, "id": i, "content": "x" * 150}) for i in range(1, 501)]
    framer = FRAMERS[transport].for_request(CB)
    data = framer.preamble() + framer.frame(events, EPOCH)
    make = {
        "xhr": NdjsonParser,
        "sse": SseParser,
        "htmlfile": lambda: HtmlFileParser(CB),
        "multipart": lambda: MultipartParser(boundary_of(framer.content_type)),
    }[transport]
    parser = make()
    started = time.perf_counter()
    out = [o for i in range(len(data)) for o in parser.feed(data[i : i + 1])]
    elapsed = time.perf_counter() - started
    assert [o["id"] for o in out] == list(range(1, 501))
    assert elapsed < 3.0, f"{transport}: {len(data)} bytes took {elapsed:.2f} s"


def test_multipart_boundary_and_bad_bytes() -> None:
    assert boundary_of(f'multipart/x-mixed-replace; boundary="{B}"') == B
    assert boundary_of("multipart/x-mixed-replace;boundary=abc") == "abc"
    assert boundary_of("text/plain") is None
    with pytest.raises(ProtocolError):
        MultipartParser(B).feed(part(READY)[:-2] + b"\r\nmore\r\n--" + B.encode())


# -- htmlfile ---------------------------------------------------------------------------


def htmlfile_body() -> bytes:
    head = (
        b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        b"<script>var p=parent." + CB.encode() + b";</script>"
    )
    preamble = head + b"<!--" + b" " * (1024 - len(head) - 8) + b"-->\n"
    assert len(preamble) == 1024

    def script(*objs) -> bytes:
        return b"<script>p([" + b",".join(raw(o) for o in objs) + b"]);</script>\n"

    return (
        preamble
        + script(READY)
        + script(EVENT, EVENT2)
        + script()
        + script(PRESENCE)
        + script(CLOSE)
        + b"</body></html>\n"
    )


def test_htmlfile_byte_by_byte() -> None:
    assert feeds(lambda: HtmlFileParser(CB), htmlfile_body()) == OBJECTS
    framer = FRAMERS["htmlfile"].for_request(CB)
    body = (
        framer.preamble()
        + framer.ready(READY, EPOCH)
        + framer.frame([Event(EVENT)], EPOCH)
        + framer.heartbeat()
        + framer.frame([Event(EVENT2), Event(PRESENCE)], EPOCH)
        + framer.control(CLOSE)
        + framer.epilogue()
    )
    parser = HtmlFileParser(CB)
    assert [o for b in body for o in parser.feed(bytes([b]))] == OBJECTS
    assert parser.closed


def test_htmlfile_refuses_what_is_not_its_framing() -> None:
    with pytest.raises(ProtocolError):  # a preamble bound to another callback
        HtmlFileParser("other.cb").feed(htmlfile_body())
    with pytest.raises(ProtocolError):  # something rendered between scripts
        HtmlFileParser().feed(b"<script>p([]);</script>\nhello<script>p([]);</script>")
    with pytest.raises(ProtocolError):
        HtmlFileParser().feed(b"<script>p([]);alert(1)</script>")


# -- poll, jsonp ------------------------------------------------------------------------


def test_poll_and_jsonp_byte_by_byte() -> None:
    body = b"[" + b",".join(raw(o) for o in OBJECTS) + b"]"

    def whole(make, data):
        parser = make()
        for b in data:
            assert parser.feed(bytes([b])) == []
        return parser.end()

    assert whole(PollParser, body) == OBJECTS
    assert whole(PollParser, b"[]") == []
    jsonp = b"/**/" + CB.encode() + b"(" + body + b");"
    assert whole(lambda: JsonpParser(CB), jsonp) == OBJECTS
    framer = FRAMERS["jsonp"].for_request(CB)
    assert whole(lambda: JsonpParser(CB), framer.answer([raw(o) for o in OBJECTS])) == OBJECTS
    assert whole(PollParser, FRAMERS["poll"].answer([raw(o) for o in OBJECTS])) == OBJECTS
    with pytest.raises(ProtocolError):
        whole(lambda: JsonpParser("other"), jsonp)
    with pytest.raises(ProtocolError):
        whole(PollParser, b'{"type":"ready"}')


# -- HTTP: h11 removes the chunked framing, whatever the cuts ---------------------------


async def test_http_chunked_response_byte_by_byte() -> None:
    with trio.fail_after(5):
        client_side, server_side = trio.testing.memory_stream_pair()
        conn = HttpConnection(client_side, Origin.parse("http://h:1"))
        await conn.send_request("GET", "/stream/xhr?x=1", [], None, timeout=1)
        request = await server_side.receive_some()
        assert request.startswith(b"GET /stream/xhr?x=1 HTTP/1.1\r\n")
        body = raw(READY) + b"\n" + raw(EVENT) + b"\n"
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 50]), body[i : i + 50])
            for i in range(0, len(body), 50)
        )
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )

        async def send_bytewise() -> None:
            for i in range(len(response)):
                await server_side.send_all(response[i : i + 1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_bytewise)
            head = await conn.receive_head(timeout=1)
            assert head.status == 200
            parser = NdjsonParser()
            objects = []
            while data := await conn.receive_data(timeout=1):
                objects += parser.feed(data)
        assert objects == [READY, EVENT]


async def test_http_a_silent_response_times_out() -> None:
    with trio.fail_after(5):
        client_side, _server_side = trio.testing.memory_stream_pair()
        conn = HttpConnection(client_side, Origin.parse("http://h:1"))
        await conn.send_request("GET", "/x", [], None, timeout=1)
        with pytest.raises(NetworkError, match="no byte"):
            await conn.receive_head(timeout=0.05)


# -- retry rules ------------------------------------------------------------------------


def test_retry_rules() -> None:
    assert [classify(s) for s in (200, 201, 400, 401, 403, 404, 409, 413, 408, 429, 500, 503)] == [
        "ok",
        "ok",
    ] + ["fail"] * 6 + ["retry"] * 4
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    backoff = Backoff(0.2, 5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] <= 0.2 and delays[1] <= 0.4 and max(delays) <= 5.0
    backoff.opened()
    assert backoff.n == 2
    assert orjson.loads(raw(EVENT)) == EVENT
