"""`Connection`: one TCP connection as rt sees it, found through a context variable.

rt's TCP layer (rt/web/hypercorn_guard.py) makes one per accepted
connection and sets `current_connection` for the connection's task, so every
handler that runs for it (hypercorn's protocol, the Quart app, a raw route)
finds its own connection with `current_connection.get()`: no table keyed by
peer address. The connection is also the stream hypercorn reads from and
closes (everything it does not define passes through to the socket stream).

Contract:

* `receive_some` notes when bytes last arrived (`last_receive`, Trio's
  clock), every byte counted, WebSocket Ping and Pong frames included,
  which the ASGI app never sees; rt's silence watchdog reads it. Bytes
  handed back with `push_back` come first.
* `write(data)` writes everything, after any pending direct bytes, under
  hypercorn's send lock, shielded (an outer cancellation must not tear a
  frame) but bounded: a chunk of `WRITE_CHUNK_SIZE` bytes that the kernel
  does not take within `write_timeout` aborts the connection (the socket is
  closed, `on_stall` is called, False is returned), as does a broken or
  closed socket (False).
* `try_write(data)` is the direct write: synchronous, it returns True when
  `data` now belongs to the connection (written to the kernel in full, or in
  part with the rest kept as `pending`, which goes out before any later
  byte), and False, writing nothing, while another write holds the send
  lock, while bytes are pending, after a WebSocket close frame went out,
  when the kernel's buffer is full, on a TLS connection, or when the socket
  failed or closed; the caller then takes the ordinary path, which queues
  behind the write in progress and so keeps the order. Only whole protocol
  units (a WebSocket frame, an HTTP chunk) may be passed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import trio

#: Writes are handed to the stream in chunks of at most this many bytes, each
#: with its own deadline, so "no progress for `write_timeout`" means "not even
#: this many bytes accepted by the kernel in `write_timeout` seconds", and a
#: large body to a slow but live client is not cut off for its size.
WRITE_CHUNK_SIZE: int = 16 * 1024

current_connection: ContextVar[Connection | None] = ContextVar("rt_connection", default=None)


class _WriteStalled(Exception):
    """A chunk was not accepted by the stream within the write timeout."""


class Connection:
    """One TCP connection (see the module docstring)."""

    __slots__ = (
        "_stream",
        "_send_lock",
        "_write_timeout",
        "_socket",
        "_fd",
        "_back",
        "_pending",
        "_closed_frame",
        "last_receive",
        "peer",
        "on_stall",
        "stalled",
    )

    def __init__(
        self, stream: Any, send_lock: trio.Lock, write_timeout: Callable[[], float]
    ) -> None:
        self._stream = stream
        self._send_lock = send_lock
        self._write_timeout = write_timeout
        self._socket: Any = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._fd = self._socket.fileno() if self._socket is not None else -1
        self._back = b""
        self._pending = b""
        self._closed_frame = False
        self.last_receive = trio.current_time()
        self.peer = _peer_of(stream)
        # Called once if a write stalls and the connection is dropped (metrics).
        self.on_stall: Callable[[], None] | None = None
        self.stalled = False

    # -- what hypercorn sees: a stream -------------------------------------------

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @property
    def plain_tcp(self) -> bool:
        """Whether direct writes are possible (not TLS: bytes would need encrypting)."""
        return self._fd >= 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._back:
            data, self._back = self._back, b""
            return data
        data = await self._stream.receive_some(max_bytes)
        self.last_receive = trio.current_time()
        return data

    def push_back(self, data: bytes) -> None:
        """Have the next `receive_some` return `data` (bytes read ahead) first."""
        self._back = data + self._back

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)

    def cut(self) -> None:
        """Close the socket under everyone's feet at once (benchmarks' SIGUSR1 cut)."""
        try:
            self._stream.socket.close()
        except (AttributeError, OSError):
            pass

    # -- bounded writes ---------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether part of a direct write still waits for `flush` (or the next write)."""
        return bool(self._pending)

    async def flush(self) -> None:
        """Write the pending bytes, bounded like every write (may abort the connection)."""
        if self._pending:
            await self.write(b"")

    async def write(self, data: bytes) -> bool:
        """Write `data` in full after pending bytes, bounded; False if the connection is gone."""
        async with self._send_lock:
            if data[:1] == b"\x88":
                # A WebSocket close frame (no HTTP head or chunk starts with this
                # byte): no direct data frame may follow it.
                self._closed_frame = True
            if self._pending:  # the rest of a direct write goes first
                data, self._pending = self._pending + data, b""
            stalled = False
            try:
                with trio.CancelScope(shield=True):
                    try:
                        await self._send_with_deadline(data)
                    except _WriteStalled:
                        stalled = True
                        # Wakes the reader blocked in receive_some and makes every
                        # later send_all raise ClosedResourceError.
                        await trio.aclose_forcefully(self._stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if stalled:
                self.stalled = True
                if self.on_stall is not None:
                    self.on_stall()
                return False
            return True

    async def _send_with_deadline(self, data: bytes) -> None:
        timeout = self._write_timeout()
        with memoryview(data) as view:
            for start in range(0, len(view), WRITE_CHUNK_SIZE):
                with trio.move_on_after(timeout) as timer:
                    await self._stream.send_all(view[start : start + WRITE_CHUNK_SIZE])
                if timer.cancelled_caught:
                    raise _WriteStalled

    def try_write(self, data: bytes) -> bool:
        """The direct write (see the module docstring)."""
        if self._pending or self._closed_frame or self._fd < 0 or self._send_lock.locked():
            return False
        if self._socket.fileno() != self._fd:  # closed (and the number maybe reused)
            self._fd = -1
            return False
        try:
            written = os.write(self._fd, data)
        except OSError:  # full (BlockingIOError), reset, closed: the ordinary path decides
            return False
        if written < len(data):
            self._pending = data[written:]
        return True


def _peer_of(stream: Any) -> str:
    """`host:port` of the peer, read once (a closed socket no longer knows it)."""
    try:
        # SSLStream forwards unknown attributes, .socket included, to its transport.
        host, port, *_ = stream.socket.getpeername()
    except (AttributeError, OSError, ValueError, TypeError):
        return "an unknown peer"
    return f"{host}:{port}"
