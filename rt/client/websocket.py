"""A WebSocket client on wsproto: a sans-I/O protocol object, and a thin trio wrapper.

`WsClientProtocol` takes the bytes the server sent, cut anywhere, and
returns events: `Accepted`, `Rejected` (an HTTP answer instead of the
upgrade), `Message` (one whole text message, however many frames and
pieces it came in) and `Closed` (the server's close frame, or the end of
the connection). It answers Pings and the close handshake by itself: what
it needs to send waits in `outgoing()`. No extensions, no subprotocol.

`WebSocket` runs one over a trio stream, with every wait bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from rt.client.errors import NetworkError, ProtocolError
from rt.client.http import Origin, open_stream, receive_some, send_all

MAX_MESSAGE = 16 * 1024 * 1024  # rt writes frames of at most 1 MiB unless one object is bigger
NO_STATUS = 1005  # RFC 6455: a close frame without a code
ABNORMAL = 1006  # RFC 6455: the connection ended without a close frame


@dataclass(frozen=True)
class Accepted:
    pass


@dataclass(frozen=True)
class Rejected:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Message:
    text: str


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str = ""


WsEvent = Accepted | Rejected | Message | Closed


@dataclass
class _Reject:
    status: int
    headers: dict[str, str]
    body: list[bytes] = field(default_factory=list)


class WsClientProtocol:
    """The client side of one WebSocket connection, without I/O."""

    def __init__(self, host: str, target: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._out = bytearray(
            self._ws.send(
                Request(
                    host=host,
                    target=target,
                    extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                )
            )
        )
        self._text: list[str] = []
        self._size = 0
        self._reject: _Reject | None = None
        self.closed = False

    def outgoing(self) -> bytes:
        """Bytes to send now (the handshake, Pongs, close replies); empties the queue."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def send_text(self, text: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(TextMessage(data=text))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=reason))

    def receive(self, data: bytes) -> list[WsEvent]:
        """The events completed by `data` from the server (b"": the connection ended)."""
        if self.closed:
            return []
        try:
            self._ws.receive_data(data or None)
            return self._events(eof=not data)
        except (RemoteProtocolError, LocalProtocolError) as error:
            self.closed = True
            raise ProtocolError(f"WebSocket: {error}") from None

    def _events(self, eof: bool) -> list[WsEvent]:
        out: list[WsEvent] = []
        for event in self._ws.events():
            if isinstance(event, TextMessage):
                self._size += len(event.data)
                if self._size > MAX_MESSAGE:
                    raise ProtocolError(f"WebSocket: a message over {MAX_MESSAGE} bytes")
                self._text.append(event.data)
                if event.message_finished:
                    out.append(Message("".join(self._text)))
                    self._text = []
                    self._size = 0
            elif isinstance(event, BytesMessage):
                pass  # rt sends text only; ignore (forward compatibility)
            elif isinstance(event, Ping):
                self._out += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._out += self._ws.send(event.response())
                self.closed = True
                out.append(Closed(event.code, event.reason or ""))
                return out
            elif isinstance(event, AcceptConnection):
                out.append(Accepted())
            elif isinstance(event, RejectConnection):
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers
                }
                self._reject = _Reject(event.status_code, headers)
                if not event.has_body:
                    out.append(self._rejected())
                    return out
            elif isinstance(event, RejectData):
                assert self._reject is not None
                self._reject.body.append(event.data)
                if event.body_finished:
                    out.append(self._rejected())
                    return out
            # Pong and anything newer: nothing to do.
        if eof and not self.closed:
            self.closed = True
            if self._reject is not None:
                out.append(self._rejected())
            else:
                out.append(Closed(ABNORMAL, "the connection ended without a close frame"))
        return out

    def _rejected(self) -> Rejected:
        assert self._reject is not None
        self.closed = True
        reject = self._reject
        return Rejected(reject.status, reject.headers, b"".join(reject.body))


class WebSocket:
    """One client WebSocket over trio: bounded writes, reads until a deadline.

    `last_byte` is the trio time at which the last byte arrived (the read
    watchdog's clock). One task reads; others may send (`send_text`) at the
    same time. A read is only cut short by its deadline when the caller is
    giving the connection up (over TLS a cancelled read may break the stream).
    """

    def __init__(self, stream: trio.abc.Stream, protocol: WsClientProtocol, what: str) -> None:
        self._stream = stream
        self._proto = protocol
        self._what = what
        self._pending: list[WsEvent] = []
        self._send_lock = trio.Lock()  # the reader (Pongs) and a pinger may both send
        self.last_byte = trio.current_time()

    @classmethod
    async def connect(
        cls,
        origin: Origin,
        target: str,
        headers: Iterable[tuple[str, str]],
        *,
        connect_timeout: float,
        write_timeout: float,
    ) -> WebSocket:
        """Open the TCP connection and send the upgrade request (its answer comes as an event)."""
        stream = await open_stream(origin, connect_timeout)
        proto = WsClientProtocol(origin.host_header, origin.prefix + target, headers)
        ws = cls(stream, proto, f"WebSocket {target.split('?', 1)[0]}")
        try:
            await ws._flush(write_timeout)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return ws

    async def _flush(self, timeout: float) -> None:
        async with self._send_lock:
            data = self._proto.outgoing()
            if data:
                await send_all(self._stream, data, timeout, self._what)

    async def next_event(self, deadline: float, write_timeout: float) -> WsEvent | None:
        """The next event, or None if none came by trio time `deadline`."""
        while not self._pending:
            if self._proto.closed:
                raise NetworkError(f"{self._what}: read after the close")
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return None
            try:
                data = await receive_some(self._stream, remaining, self._what)
            except NetworkError:
                if trio.current_time() >= deadline:
                    return None  # the deadline, not a failure: the caller decides
                raise
            if data:
                self.last_byte = trio.current_time()
            self._pending.extend(self._proto.receive(data))
            await self._flush(write_timeout)  # Pongs, close replies
        return self._pending.pop(0)

    async def send_text(self, text: str, timeout: float) -> None:
        self._proto.send_text(text)
        await self._flush(timeout)

    async def aclose(self, code: int = 1000, timeout: float = 1.0) -> None:
        """Send a close frame if we may (briefly: never waits for the reply), then close."""
        try:
            self._proto.close(code)
            with trio.move_on_after(timeout):
                await self._flush(timeout)
        except NetworkError:
            pass
        finally:
            await trio.aclose_forcefully(self._stream)
