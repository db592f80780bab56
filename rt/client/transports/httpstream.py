"""The streaming HTTP transports: `sse`, `xhr`, `multipart`, `htmlfile`.

One GET per connection, its body read piece by piece into the transport's
parser (rt/client/parsers.py). Each read waits at most `link.read_timeout()`
(2.5 heartbeats once `ready` came: the server sends a heartbeat when idle,
so a longer silence is a half-open connection). A body that ends without a
`close` frame was cut: the client resumes from its cursor.
"""

from __future__ import annotations

import trio

from rt.client.errors import ProtocolError
from rt.client.http import HttpConnection, Response
from rt.client.parsers import (
    HtmlFileParser,
    MultipartParser,
    NdjsonParser,
    SseParser,
    boundary_of,
)
from rt.client.transports.base import End, Link, Lost, Refused

ACCEPT = {
    "sse": "text/event-stream",
    "xhr": "application/x-ndjson",
    "multipart": "multipart/x-mixed-replace",
    "htmlfile": "text/html",
}
MAX_ERROR_BODY = 64 * 1024


def make_parser(transport: str, content_type: str | None, callback: str):
    """The body parser for `transport`, after checking the response's Content-Type."""
    ctype = (content_type or "").lower()
    expected = ACCEPT[transport]
    if not ctype.startswith(expected):
        raise ProtocolError(
            f"{transport} stream: Content-Type {content_type!r}, expected {expected}"
        )
    if transport == "sse":
        return SseParser()
    if transport == "xhr":
        return NdjsonParser()
    if transport == "multipart":
        boundary = boundary_of(content_type)
        if boundary is None:
            raise ProtocolError(f"multipart stream: no boundary in {content_type!r}")
        return MultipartParser(boundary)
    return HtmlFileParser(callback)


async def run_http_stream(link: Link) -> End:
    t = link.timeouts
    conn = await HttpConnection.open(link.origin, t.connect)
    try:
        headers = [*link.headers, ("Accept", ACCEPT[link.transport])]
        await conn.send_request("GET", link.target(), headers, None, t.write)
        head = await conn.receive_head(link.read_timeout())
        if head.status != 200:
            body = await conn.read_body(t.request, MAX_ERROR_BODY)
            return Refused.of(Response(head.status, head.headers, body))
        parser = make_parser(link.transport, head.header("content-type"), link.callback)
        while True:
            data = await conn.receive_data(link.read_timeout())
            if not data:
                return Lost(f"the {link.transport} response ended without a close frame")
            end = link.feed(parser.feed(data))
            if end is not None:
                return end
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()
