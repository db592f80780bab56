"""A small, pinned patch of hypercorn's trio TCP server (hypercorn==0.18.0).

It fixes two traps of the stack (DESIGN.md, section 3a):

1. **Unbounded writes.** Upstream ``TCPServer.protocol_send`` writes with
   ``send_all`` inside a shielded cancel scope with no deadline. A client that
   stops reading fills the socket buffers, the write never finishes, the
   connection's handler blocks for ever, cancellation cannot reach it, and a
   graceful shutdown hangs for as long as that client stays connected.
   :class:`GuardedTCPServer` keeps the shield (an outer cancellation must not
   tear a frame in half) but gives every write a deadline: a write that makes
   no progress for ``write_timeout`` seconds aborts the connection.

2. **Hypercorn issue 225.** One malformed WebSocket upgrade (an
   ``Upgrade: websocket`` GET followed by trailing bytes in the same packet)
   makes h11 raise out of the connection's task; the exception reaches
   ``trio.serve_listeners``' handler nursery and kills the whole worker, so
   one request is a remote denial of service. :class:`GuardedTCPServer`
   contains and logs any exception (never a cancellation) that escapes one
   connection's ``run()``.

It also gives rt's hot path a way around the ASGI send chain:
:func:`direct_writer` returns a :class:`DirectWriter` for an open plain-TCP
connection, which writes already-framed bytes straight to the socket when no
other write is in progress (see its contract).

Use :func:`install` once before ``hypercorn.trio.serve`` starts; it checks
the upstream sources with :func:`check_upstream` first and refuses to patch a
hypercorn whose patched or depended-on functions changed.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import trio
from hypercorn import protocol as _hypercorn_protocol
from hypercorn.app_wrappers import ASGIWrapper as _ASGIWrapper
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol as _H11Protocol
from hypercorn.trio import run as _hypercorn_run
from hypercorn.trio import tcp_server as _hypercorn_tcp_server

from rt.web.admission import Admission, AdmissionLimits, head_problem

__all__ = [
    "DEFAULT_WRITE_TIMEOUT",
    "UPSTREAM_SHA256",
    "WRITE_CHUNK_SIZE",
    "GuardedTCPServer",
    "DirectWriter",
    "RawConnection",
    "admit_with",
    "check_upstream",
    "cut_all",
    "direct_writer",
    "install",
    "installed",
    "last_receive",
    "stall_listeners",
    "uninstall",
]

#: Write timeout used until :func:`install` is given another one, in seconds.
DEFAULT_WRITE_TIMEOUT: float = 30.0

#: Writes are handed to the stream in chunks of at most this many bytes, each
#: with its own deadline, so "no progress for ``write_timeout``" means "not
#: even this many bytes accepted by the kernel in ``write_timeout`` seconds"
#: and a large body to a slow but live client is not cut off for its size.
WRITE_CHUNK_SIZE: int = 16 * 1024

#: SHA-256 of ``inspect.getsource`` of every upstream function this module
#: overrides or relies on, as shipped in hypercorn 0.18.0. If one changes,
#: the patch may be wrong: :func:`check_upstream` (and so :func:`install`)
#: fails, and the pin in pyproject.toml must not be moved without reviewing
#: this module against the new source.
UPSTREAM_SHA256: dict[str, str] = {
    # Overridden: the write path (trap 1).
    "hypercorn.trio.tcp_server.TCPServer.protocol_send": (
        "225856426bff7be02990c0badb90f51f801db14ac5db0f3d0c210cafbeb528ab"
    ),
    # Wrapped: the per-connection task (trap 2).
    "hypercorn.trio.tcp_server.TCPServer.run": (
        "fd34b021d1a86c9859514de9472306ea47f4a6763732b26b7a5945278ded0e08"
    ),
    # Relied on: sets the stream, protocol and send_lock used here.
    "hypercorn.trio.tcp_server.TCPServer.__init__": (
        "4c1d42457bc197b22f41b54b7dd6a79e195cdc037f9cc55f50e3e4332ebf6988"
    ),
    # Relied on: looks ``TCPServer`` up in its module globals per call,
    # which is where install() puts the subclass.
    "hypercorn.trio.run.worker_serve": (
        "8dc8347a9fc357ca334f8c3e4bcf0368176510a96d434f21a5eb4c9ec4103726"
    ),
    # Relied on: the close that protocol_send shields (issue 10).
    "hypercorn.trio.tcp_server.TCPServer._close": (
        "bc73c4ae25a1ceec1d535639443b57b3d3dea8b03c5375d58bf9702b8056ee15"
    ),
    # Replaced: the h2c upgrade and HTTP/2 preface checks (no HTTP/2 in clear text).
    "hypercorn.protocol.h11.H11Protocol._check_protocol": (
        "f95f6b38f43c62aaedddec0bb7c86d84e9a583ed22461293f8fcf249251d96ea"
    ),
    # Relied on: looks ``H11Protocol`` up in its module globals, where install() puts ours.
    "hypercorn.protocol.ProtocolWrapper.__init__": (
        "df25e181b9e2e64d6d5dbfee9e9a33108c1f04b966dd344899365f429806acbc"
    ),
    # Relied on: keeps the ASGI app as ``.app``, where _serve_raw_route looks
    # for the app's raw route.
    "hypercorn.app_wrappers.ASGIWrapper.__init__": (
        "083c68a005998cf04c0142c02665dd8ff265b9cd28fdf75cc8122a62bca209ce"
    ),
}

_UpstreamTCPServer = _hypercorn_tcp_server.TCPServer

_UPSTREAM_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "hypercorn.trio.tcp_server.TCPServer.protocol_send": _UpstreamTCPServer.protocol_send,
    "hypercorn.trio.tcp_server.TCPServer.run": _UpstreamTCPServer.run,
    "hypercorn.trio.tcp_server.TCPServer.__init__": _UpstreamTCPServer.__init__,
    "hypercorn.trio.run.worker_serve": _hypercorn_run.worker_serve,
    "hypercorn.app_wrappers.ASGIWrapper.__init__": _ASGIWrapper.__init__,
    "hypercorn.trio.tcp_server.TCPServer._close": _UpstreamTCPServer._close,
    "hypercorn.protocol.h11.H11Protocol._check_protocol": _H11Protocol._check_protocol,
    "hypercorn.protocol.ProtocolWrapper.__init__": _hypercorn_protocol.ProtocolWrapper.__init__,
}


def _source_sha256(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode("utf-8")).hexdigest()


def check_upstream() -> None:
    """Check that hypercorn's patched functions are the ones this patch was written for.

    Raises ``RuntimeError`` naming the first function whose source no longer
    hashes to the value recorded in :data:`UPSTREAM_SHA256`. Call it (tests
    do, and :func:`install` does) so that a hypercorn upgrade cannot silently
    run with a patch that no longer matches the code it replaces.
    """
    for name, expected in UPSTREAM_SHA256.items():
        function = _UPSTREAM_FUNCTIONS.get(name)
        if function is None:
            raise RuntimeError(f"rt.web.hypercorn_guard: no upstream function is known as {name}")
        actual = _source_sha256(function)
        if actual != expected:
            raise RuntimeError(
                f"rt.web.hypercorn_guard: the source of {name} changed "
                f"(sha256 {actual}, patch written for {expected}). "
                "rt patches hypercorn 0.18.0's trio TCP server; review "
                "rt/web/hypercorn_guard.py against the new source, then update "
                "UPSTREAM_SHA256 and the hypercorn pin together."
            )


# (host, port) of each open connection's peer -> trio time its last bytes arrived.
_last_receive: dict[tuple[Any, ...], float] = {}


def last_receive(peer: tuple[Any, ...]) -> float:
    """When bytes last arrived from `peer` (an ASGI scope's `client`), on Trio's clock.

    Counts every byte, WebSocket Ping and Pong frames included, which the
    ASGI app never sees: rt's silence watchdog uses it. 0.0 if unknown.
    """
    return _last_receive.get(tuple(peer), 0.0)


# Every connection being served (for cut_all, which `rt bench storm` uses).
_open_servers: set[GuardedTCPServer] = set()

# (host, port) of each open plain-TCP connection's peer -> its server (for direct_writer).
_servers_by_peer: dict[tuple[Any, ...], GuardedTCPServer] = {}


class DirectWriter:
    """Writes pre-framed bytes to one connection's socket without the ASGI send chain.

    Contract:

    * ``try_write(data)`` is synchronous. It returns True when ``data`` now
      belongs to the connection: written to the kernel in full, or written in
      part with the rest kept as :attr:`pending`, which goes out before any
      later byte of the connection (every hypercorn write, and :meth:`flush`,
      sends it first). It returns False, writing nothing, while another write
      holds the connection (hypercorn's send lock), while bytes are pending,
      after a WebSocket close frame went out (nothing may follow it), when
      the kernel's buffer is full, or when the socket has failed or closed:
      the caller then takes the ordinary (awaiting) path, which queues behind
      the write in progress and so keeps the order.
    * Only whole protocol units may be passed (a complete WebSocket frame, a
      complete HTTP chunk), after the response head has been written: the
      bytes go to the socket as they are.
    """

    __slots__ = ("_server",)

    def __init__(self, server: GuardedTCPServer) -> None:
        self._server = server

    @property
    def pending(self) -> bool:
        """Whether part of a direct write still waits for :meth:`flush`."""
        return bool(self._server._pending)

    def try_write(self, data: bytes) -> bool:
        return self._server._try_write(data)

    async def flush(self) -> None:
        """Write the pending bytes, bounded like every write (may abort the connection).

        A failure needs no report here: the connection's reader then finds the
        stream closed or broken (hypercorn's, or rt's raw route's).
        """
        if self._server._pending:
            await self._server._guarded_write(b"")



class RawConnection:
    """A plain-TCP connection handed to an app's raw route instead of hypercorn.

    Reads count as liveness (:func:`last_receive`); writes go through the
    same guard as hypercorn's (send lock, pending direct bytes first, the
    write timeout, stall accounting), so :class:`DirectWriter` works on it.
    """

    __slots__ = ("_server", "peer")

    def __init__(self, server: GuardedTCPServer) -> None:
        self._server = server
        self.peer: tuple[Any, ...] = getattr(server.stream, "_key", ())

    async def receive_some(self) -> bytes:
        """The next bytes from the peer; b"" once it closed or the connection failed."""
        try:
            return await self._server.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def write(self, data: bytes) -> bool:
        """Write ``data`` in full (bounded); False if the connection is gone."""
        return await self._server._guarded_write(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._server.stream)


def direct_writer(peer: Any) -> DirectWriter | None:
    """The :class:`DirectWriter` of the open plain-TCP connection from `peer`, if any.

    None for an unknown peer and for TLS connections (bytes must be encrypted).
    """
    server = _servers_by_peer.get(tuple(peer or ()))
    return None if server is None else DirectWriter(server)


async def cut_all() -> int:
    """Force-close every open TCP connection at once (benchmarks only); returns how many.

    Each socket is closed under the handler's feet: the peer sees the
    connection end mid-stream, without a WebSocket close frame, a `close`
    object or a final chunk, as after a network failure, and every task
    reading from it wakes with ``ClosedResourceError``. Reachable only
    through `rt serve --bench-cut-signal` and SIGUSR1.
    """
    servers = list(_open_servers)
    # Every socket in one step, without yielding in between: a loop of
    # aclose() calls would checkpoint after each close and, on a busy server,
    # spread the "storm" over many seconds.
    for server in servers:
        try:
            server.stream.socket.close()  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass
    await trio.lowlevel.checkpoint()
    return len(servers)


# Called with the peer (host, port) of every connection dropped for a stalled write.
stall_listeners: list[Callable[[tuple[Any, ...]], None]] = []


def _notify_stall(stream: Any) -> None:
    key = getattr(stream, "_key", None)
    if key is not None:
        for listener in stall_listeners:
            listener(key)


class _StampingStream:
    """Forwards everything to the real stream, noting when data was received."""

    def __init__(self, stream: Any, key: tuple[Any, ...]) -> None:
        self._stream = stream
        self._key = key
        self._back = b""

    def push_back(self, data: bytes) -> None:
        """Have the next ``receive_some`` return ``data`` (bytes read ahead) first."""
        self._back = data + self._back

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._back:
            data, self._back = self._back, b""
            return data
        data = await self._stream.receive_some(max_bytes)
        _last_receive[self._key] = trio.current_time()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _WriteStalled(Exception):
    """A chunk was not accepted by the stream within the write timeout."""


class GuardedTCPServer(_UpstreamTCPServer):
    """Hypercorn's trio ``TCPServer`` with bounded writes and a per-connection guard.

    Contract, on top of upstream's:

    * ``protocol_send(RawData)`` returns within about ``write_timeout``
      seconds of the last progress of the write, even when the peer stops
      reading and even under an outer cancellation (the write is shielded, so
      an outer cancellation takes effect only once it returns). A stalled
      write aborts the connection: the stream is closed at once (the reader
      task wakes with ``ClosedResourceError``), the protocol is told
      ``Closed()`` (the ASGI app receives ``http.disconnect`` or
      ``websocket.disconnect``) and the call returns normally, exactly like
      upstream treats ``BrokenResourceError``. Senders queued on
      ``send_lock`` behind the stalled one then find the stream closed and
      return at once.
    * ``run()`` never lets an exception (an ``Exception``, bare or in an
      exception group) escape one connection: it is logged on hypercorn's
      error log and the connection, already closed by upstream's ``finally``,
      ends. Cancellations and other ``BaseException`` leaves propagate
      unchanged.

    ``write_timeout`` is a class attribute set by :func:`install` and read on
    every write, so changing it also applies to open connections.
    """

    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    _peer: str | None = None
    _pending: bytes = b""  # the unwritten rest of a direct write; goes out first
    _direct_stopped: bool = False
    _fd: int = -1  # the socket's descriptor for direct writes; -1 if none (TLS)
    _socket: Any = None  # the trio socket behind _fd

    async def run(self) -> None:
        admission: Admission | None = getattr(self.config, "rt_admission", None)
        address = self._peer_for_log().rpartition(":")[0]
        if admission is not None:
            refusal = admission.admit(address)
            if refusal is not None:
                await self._refuse(refusal)
                return
        try:
            await self._run_admitted()
        finally:
            if admission is not None:
                admission.release(address)

    async def _refuse(self, response: bytes) -> None:
        """Answer `response` (bounded by the write timeout) and close, reading nothing."""
        with trio.move_on_after(self.write_timeout):
            try:
                await self.stream.send_all(response)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self.stream)

    async def _run_admitted(self) -> None:
        peer = self._peer_for_log()
        _open_servers.add(self)
        key = _peer_key(self.stream)
        if key is not None:
            _last_receive[key] = trio.current_time()
            if isinstance(self.stream, trio.SocketStream):
                self._socket = self.stream.socket
                self._fd = self._socket.fileno()
                _servers_by_peer[key] = self
            self.stream = _StampingStream(self.stream, key)  # type: ignore[assignment]
        try:
            if not await self._serve_raw_route():
                await super().run()
        except* Exception as group:
            # Upstream's finally has already closed the stream, and the
            # connection's TaskGroup has cancelled its app tasks; only this
            # connection is lost. (hypercorn issue 225)
            await self.config.log.error(
                "rt: an error escaped the connection from %s; closed that connection only",
                peer,
                exc_info=group,
            )
        finally:
            _open_servers.discard(self)
            if key is not None:
                _last_receive.pop(key, None)
                if _servers_by_peer.get(key) is self:
                    del _servers_by_peer[key]

    async def _serve_raw_route(self) -> bool:
        """Read the first request head; serve the connection here if it is done with.

        On a plain-TCP connection the first request head is read here, bounded
        by the admission limits (`rt.web.admission`: the head timeout, the
        head size, no HTTP/2 preface); a connection that fails them is
        answered and closed, and True is returned. Then, if the app (the ASGI
        app hypercorn wraps) has an ``rt_raw_route`` ``(matches, serve)`` and
        ``matches(head)``, ``serve(RawConnection, head_and_what_followed)``
        runs the connection instead of hypercorn, and True is returned.
        Otherwise the bytes read are handed back for hypercorn to read again.
        """
        stream = self.stream
        if self._fd < 0 or not isinstance(stream, _StampingStream):
            return False
        admission: Admission | None = getattr(self.config, "rt_admission", None)
        limits = admission.limits if admission is not None else AdmissionLimits()
        data = b""
        with trio.move_on_after(limits.head_timeout):
            try:
                while b"\r\n\r\n" not in data and len(data) < limits.max_head:
                    chunk = await stream.receive_some(limits.max_head)
                    if not chunk:
                        break
                    data += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if not data:  # nothing within the head timeout, or gone
            await trio.aclose_forcefully(stream)
            return True
        refusal = head_problem(data, limits)
        if refusal is not None:
            await self._refuse(refusal)
            return True
        route = getattr(getattr(self.app, "app", None), "rt_raw_route", None)
        if route is not None and route[0](data):
            try:
                await route[1](RawConnection(self), data)
            finally:
                await trio.aclose_forcefully(stream)
            return True
        stream.push_back(data)
        return False

    def _try_write(self, data: bytes) -> bool:
        """:meth:`DirectWriter.try_write` (its contract)."""
        if self._pending or self._direct_stopped or self.send_lock.locked() or self._fd < 0:
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

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Closed):
            # Upstream closes the socket from inside the app's task, which
            # Quart-Trio cancels as soon as the response is sent: the close
            # was cancelled and the socket stayed open for ever, after
            # `Connection: close` and after HTTP/1.0 answers (issue 10).
            # Closing never waits on the peer, so it is shielded.
            with trio.CancelScope(shield=True):
                await self._close()
            await self.protocol.handle(Closed())
            return
        if isinstance(event, Updated):
            # The same cancellation killed the keep-alive timer before it
            # started (TrioSingleTask.restart awaits in the cancelled task):
            # idle connections were never closed. Starting or stopping the
            # timer is quick and never waits on the peer.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        if not await self._guarded_write(event.data):
            await self.protocol.handle(Closed())

    async def _guarded_write(self, data: bytes) -> bool:
        """Write `data` after any pending direct bytes, bounded by the write timeout.

        False when the connection is gone: broken, closed, or just aborted
        because the write stalled (then logged and counted).
        """
        async with self.send_lock:
            if data[:1] == b"\x88":
                # A WebSocket close frame (no HTTP head or chunk starts with this
                # byte): no direct data frame may follow it.
                self._direct_stopped = True
            if self._pending:  # the rest of a direct write goes first
                data, self._pending = self._pending + data, b""
            stalled = False
            try:
                with trio.CancelScope(shield=True):
                    try:
                        await self._send_with_deadline(data)
                    except _WriteStalled:
                        stalled = True
                        self._peer_for_log()  # while the socket can still tell
                        # Wakes the reader blocked in receive_some and makes
                        # every later send_all raise ClosedResourceError.
                        await trio.aclose_forcefully(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if stalled:
                _notify_stall(self.stream)
                await self.config.log.info(
                    "rt: a write to %s made no progress for %ss; closed the connection",
                    self._peer_for_log(),
                    self.write_timeout,
                )
                return False
            return True

    async def _send_with_deadline(self, data: bytes) -> None:
        """Write ``data``, giving each chunk ``write_timeout`` seconds to be accepted.

        Raises ``_WriteStalled`` when a chunk is not accepted in time (the
        stream is then in an unknown state and must be closed), and lets the
        stream's ``BrokenResourceError`` and ``ClosedResourceError`` through.
        """
        timeout = self.write_timeout
        with memoryview(data) as view:
            for start in range(0, len(view), WRITE_CHUNK_SIZE):
                with trio.move_on_after(timeout) as timer:
                    await self.stream.send_all(view[start : start + WRITE_CHUNK_SIZE])
                if timer.cancelled_caught:
                    raise _WriteStalled

    def _peer_for_log(self) -> str:
        """``host:port`` of the peer, remembered (a closed socket no longer knows it)."""
        if self._peer is None:
            stream: Any = self.stream
            try:
                # SSLStream forwards unknown attributes, .socket included, to its transport.
                host, port, *_ = stream.socket.getpeername()
            except (AttributeError, OSError, ValueError, TypeError):
                return "an unknown peer"
            self._peer = f"{host}:{port}"
        return self._peer


class _Http1OnlyProtocol(_H11Protocol):
    """Hypercorn's HTTP/1 protocol without its switches to HTTP/2 in clear text.

    Upstream answers ``Upgrade: h2c`` with 101 and ``PRI * HTTP/2.0`` by
    switching to HTTP/2, whose streams wait on flow control where rt's write
    deadline cannot see them: a client that never reads grew the server
    without bound (issue 10). Here the upgrade is ignored (RFC 9110 section
    7.8 lets a server serve the request as it is), and the preface is
    refused before hypercorn sees it (`rt.web.admission`); a ``PRI`` request
    later on a connection is just an unknown method.
    """

    async def _check_protocol(self, event: Any) -> None:
        return None


def _peer_key(stream: Any) -> tuple[Any, ...] | None:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    return (host, port)


def install(write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
    """Make hypercorn's trio worker serve TCP connections with :class:`GuardedTCPServer`.

    Checks the upstream sources first (:func:`check_upstream` raises
    ``RuntimeError`` if they changed), then sets the write timeout (seconds,
    > 0; ``math.inf`` disables the bound) and assigns the subclass to
    ``hypercorn.trio.run.TCPServer``, where ``worker_serve`` looks it up when
    it starts listening. Idempotent; call it again to change the timeout,
    which also applies to connections already open. Call it before
    ``hypercorn.trio.serve`` (or ``worker_serve``) starts.
    """
    if not (isinstance(write_timeout, int | float) and write_timeout > 0):
        raise ValueError(f"write_timeout must be a number of seconds > 0, not {write_timeout!r}")
    check_upstream()
    GuardedTCPServer.write_timeout = float(write_timeout)
    _hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[misc]
    _hypercorn_protocol.H11Protocol = _Http1OnlyProtocol  # type: ignore[misc]


def admit_with(config: Any, limits: AdmissionLimits) -> Admission:
    """Bound the connections of the server run with hypercorn config `config`.

    The :class:`Admission` lives on that config, so each server counts its
    own connections (tests run several in one process).
    """
    admission = Admission(limits)
    config.rt_admission = admission
    return admission


def uninstall() -> None:
    """Put hypercorn's own ``TCPServer`` and protocol back (for tests that probe upstream)."""
    _hypercorn_run.TCPServer = _UpstreamTCPServer  # type: ignore[misc]
    _hypercorn_protocol.H11Protocol = _H11Protocol  # type: ignore[misc]


def installed() -> bool:
    """Whether hypercorn's trio worker currently uses :class:`GuardedTCPServer`."""
    return _hypercorn_run.TCPServer is GuardedTCPServer
