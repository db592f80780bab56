"""The raw routes: requests rt serves on the connection itself, without the ASGI stack.

The TCP layer (rt/web/hypercorn_guard.py) reads a new plain-TCP
connection's first request head and asks `raw_routes(service)` in turn;
the first route whose `matches(head)` serves the connection. Today there is
one, `/stream/ws`, rt's fast path for WebSocket connections:

Hypercorn and Quart put five Trio tasks, two memory channels and a Quart
request context between a WebSocket and rt's handler, and every message
crosses them (bench/RESULTS.md has the profiles). For `/stream/ws` rt does
not need them: the hypercorn guard reads a new connection's first request
head, and when it is a WebSocket upgrade for `/stream/ws` it hands the
connection to `serve_raw` here instead of to hypercorn
(`hypercorn_guard.GuardedTCPServer._serve_raw_route`). Every other request,
and every TLS connection, goes to hypercorn and Quart as before, and
`/stream/ws` itself stays routed in Quart (for TLS, and for upgrades that
arrive on a reused connection).

`RawWebSocket` is the part of Quart's websocket object that
`serve_websocket` uses (`headers`, `args`, `scheme`, `scope`, `accept`,
`send`, `receive`, `close`), built on wsproto over the guarded connection,
so both paths run the same handler and are held to the same tests. What
hypercorn did for us is done here, the same way: the handshake (wsproto,
no extensions, no subprotocol), Pong replies to Ping, the close handshake,
and messages over `max-body` closed with 1009. Writes go through the guard
(bounded by the write timeout, after pending direct bytes), reads count as
liveness for the silence watchdog.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import trio
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from rt.web.connection import Connection

# A GET of /stream/ws (with or without a query) that asks for a WebSocket upgrade.
_REQUEST_LINE = re.compile(rb"GET /stream/ws[? ]")
_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)


def is_websocket_stream_request(head: bytes) -> bool:
    """Whether a request head (through its blank line) is an upgrade to `/stream/ws`."""
    end = head.index(b"\r\n\r\n") + 2
    return _REQUEST_LINE.match(head) is not None and _UPGRADE.search(head, 0, end) is not None


_REASONS = {400: b"Bad Request", 426: b"Upgrade Required"}


class _Headers(dict):
    """The request headers `serve_websocket` reads, by lower-case name, with a case-blind `get`.

    Only those (first value of each): the object lives as long as the connection.
    """

    KEPT = frozenset({b"origin", b"authorization"})

    def __init__(self, request: Request) -> None:
        super().__init__()
        for name, value in request.extra_headers:
            name = name.lower()
            if name in self.KEPT:
                self.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self["host"] = request.host

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class Disconnected(Exception):
    """The WebSocket is closed (by either side) or its connection failed."""


class RawWebSocket:
    """One WebSocket on a raw connection, with the interface `serve_websocket` uses."""

    scheme = "ws"  # raw routes are plain TCP only (the guard sends TLS to hypercorn)

    def __init__(
        self,
        conn: Connection,
        ws: WSConnection,
        request: Request,
        max_message: int,
        early: bytes = b"",
    ) -> None:
        """`early`: bytes that came after the request head, before the handshake's answer."""
        self._conn = conn
        self._ws = ws
        self._early = early
        self._max_message = max_message
        self.scope: dict[str, Any] = {"client": tuple(conn.peer.rsplit(":", 1))}
        self.headers = _Headers(request)
        _, _, query = request.target.partition("?")
        # Like Quart's request.args: the first value of a repeated name wins.
        args: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            args.setdefault(name, value)
        self.args = args
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._size = 0

    async def _send(self, event: Any) -> None:
        if self._ws.state in (ConnectionState.CLOSED, ConnectionState.LOCAL_CLOSING):
            return  # nothing may follow our close frame
        if not await self._conn.write(self._ws.send(event)):
            raise Disconnected("the connection failed")

    async def accept(self) -> None:
        await self._send(AcceptConnection())
        # Keep only the frame protocol: the handshake's h11 state is ~2 KB a connection.
        self._ws = self._ws.connection  # type: ignore[assignment]
        if self._early:
            # Frames the client sent right behind its request (wsproto's server side
            # would drop them: the trap of hypercorn issue 225).
            self._ws.receive_data(self._early)
            self._early = b""

    async def send(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (once); the peer's reply ends `receive` with Disconnected."""
        if self._ws.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code=code, reason=reason))

    async def receive(self) -> str | bytes:
        """The next whole message; Disconnected once the WebSocket is closed."""
        ws = self._ws
        while True:
            for event in ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            try:
                data = await self._conn.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise Disconnected("the peer closed the connection")
            ws.receive_data(data)

    async def _handle(self, event: Any) -> str | bytes | None:
        if isinstance(event, TextMessage | BytesMessage):
            self._size += len(event.data)
            if self._size > self._max_message:
                await self.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                raise Disconnected("message too big")
            if isinstance(event, TextMessage):
                self._text.append(event.data)
            else:
                self._bytes.append(bytes(event.data))
            if not event.message_finished:
                return None
            self._size = 0
            if isinstance(event, TextMessage):
                text, self._text = "".join(self._text), []
                return text
            data, self._bytes = b"".join(self._bytes), []
            return data
        if isinstance(event, Ping):
            await self._send(event.response())
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._conn.write(self._ws.send(event.response()))
            raise Disconnected(f"closed by the peer ({event.code})")
        return None


async def serve_raw(conn: Connection, head: bytes, *, handler: Any, max_message: int) -> None:
    """Run one raw `/stream/ws` connection: handshake, then `handler(ws)` to the end.

    `head` is what the guard read: the request head and any bytes after it.
    A handshake wsproto refuses is answered with an HTTP status and closed:
    400, or 426 with `Sec-WebSocket-Version: 13` for another version (RFC
    6455 section 4.4; hypercorn answers 400 to both).
    """
    ws = WSConnection(ConnectionType.SERVER)
    end = head.index(b"\r\n\r\n") + 4
    try:
        ws.receive_data(head[:end])
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except RemoteProtocolError as error:
        hint = error.event_hint
        if not isinstance(hint, RejectConnection):
            hint = RejectConnection(status_code=400)
        # RFC 6455 section 4.4: a version we do not speak is 426 with the one we do.
        extra = b"".join(b"%s: %s\r\n" % (k, v) for k, v in hint.headers)
        await conn.write(
            b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
            % (hint.status_code, _REASONS.get(hint.status_code, b"Bad Request"), extra)
        )
        return
    if request is None:
        return
    socket = RawWebSocket(conn, ws, request, max_message, head[end:])
    del ws, request, head  # held for the connection's life otherwise (~2 KB)
    try:
        await handler(socket)
    except* Disconnected:
        pass


def raw_routes(service: Any, *, websocket: Any) -> list[tuple[Any, Any]]:
    """The app's raw routes, in the order they are asked: `(matches(head), serve)`.

    `websocket(service, ws)` is the `/stream/ws` handler (rt/web/wsconn.py).
    """
    from functools import partial

    return [
        (
            is_websocket_stream_request,
            partial(
                serve_raw, handler=partial(websocket, service), max_message=service.config.max_body
            ),
        )
    ]
