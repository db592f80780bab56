"""A small, pinned patch of hypercorn's trio TCP server (hypercorn==0.18.0).

It fixes the traps of the stack (docs/architecture.md section 3a) at the one place
they can be fixed, the connection's own task:

1. **Unbounded writes.** Upstream writes with `send_all` inside a shielded
   cancel scope with no deadline: a client that stops reading blocks its
   handler for ever, and graceful shutdown with it. Every write here goes
   through the connection's bounded write (rt/web/connection.py).
2. **Hypercorn issue 225.** One malformed WebSocket upgrade makes h11 raise
   out of the connection's task and kills the whole worker. Any exception
   that escapes one connection is contained and logged here.
3. **Connections that never end** (issue 10). Upstream closes the socket, and
   starts the keep-alive timer, from inside the app's task, which Quart-Trio
   cancels as soon as the response is sent: both were cancelled, and
   connections stayed open after `Connection: close`, HTTP/1.0 answers and
   idle keep-alive. Here they are shielded (neither waits on the peer).
4. **No HTTP/2 in clear text**: its streams wait on flow control where the
   write deadline cannot see them. The h2c upgrade is ignored and the
   HTTP/2 preface refused.

Around those, each connection gets what rt needs before any HTTP is parsed:
admission (rt/web/admission.py: caps, the first head's timeout and size),
its `Connection` object set as `current_connection` for its task, and the
app's raw routes (rt/web/raw_routes.py), which may serve it instead of
hypercorn.

Call `install` once before `hypercorn.trio.serve` starts; it checks the
upstream sources first (`check_upstream`) and refuses to patch a hypercorn
whose patched or relied-on functions changed.
"""

from __future__ import annotations

import hashlib
import inspect
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
from rt.web.connection import Connection, current_connection

__all__ = [
    "DEFAULT_WRITE_TIMEOUT",
    "UPSTREAM_SHA256",
    "GuardedTCPServer",
    "admit_with",
    "check_upstream",
    "cut_all",
    "install",
    "installed",
    "uninstall",
]

#: Write timeout used until :func:`install` is given another one, in seconds.
DEFAULT_WRITE_TIMEOUT: float = 30.0

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
    # Relied on: keeps the ASGI app as ``.app``, where _serve_raw_routes looks
    # for the app's raw routes.
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


class GuardedTCPServer(_UpstreamTCPServer):
    """Hypercorn's trio `TCPServer` with the fixes of the module docstring.

    Contract, on top of upstream's:

    * `protocol_send(RawData)` returns within about `write_timeout` seconds
      of the last progress of the write, even when the peer stops reading and
      under an outer cancellation (the write is shielded: an outer
      cancellation takes effect once it returns). A stalled write aborts the
      connection and tells the protocol `Closed()` (the ASGI app receives
      `http.disconnect` or `websocket.disconnect`), as upstream treats
      `BrokenResourceError`; senders queued behind it return at once.
    * `run()` never lets an exception (an `Exception`, bare or in a group)
      escape one connection: it is logged on hypercorn's error log and only
      that connection ends. Cancellations propagate unchanged.

    `write_timeout` is a class attribute set by `install` and read on every
    write, so changing it also applies to open connections.
    """

    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    @property
    def connection(self) -> Connection:
        """This connection's `Connection` (made at the first use)."""
        connection = self.__dict__.get("_rt_connection")
        if connection is None:
            cls = type(self)
            connection = Connection(self.stream, self.send_lock, lambda: cls.write_timeout)
            self.__dict__["_rt_connection"] = connection
            self.stream = connection  # type: ignore[assignment]
        return connection

    async def run(self) -> None:
        connection = self.connection
        admission: Admission | None = getattr(self.config, "rt_admission", None)
        address = connection.peer.rpartition(":")[0]
        if admission is not None:
            refusal = admission.admit(address, connection)
            if refusal is not None:
                await self._refuse(refusal)
                return
        token = current_connection.set(connection)
        try:
            if not await self._serve_raw_routes(admission):
                await super().run()
        except* Exception as group:
            # Upstream's finally has already closed the stream, and the
            # connection's TaskGroup has cancelled its app tasks; only this
            # connection is lost. (hypercorn issue 225)
            await self.config.log.error(
                "rt: an error escaped the connection from %s; closed that connection only",
                connection.peer,
                exc_info=group,
            )
        finally:
            current_connection.reset(token)
            if admission is not None:
                admission.release(address, connection)

    async def _refuse(self, response: bytes) -> None:
        """Answer `response` (bounded by the write timeout) and close, reading nothing."""
        await self.connection.write(response)
        await self.connection.aclose()

    async def _serve_raw_routes(self, admission: Admission | None) -> bool:
        """Read the first request head; True if the connection was served here.

        On a plain-TCP connection the first request head is read here, bounded
        by the admission limits (the head timeout and size, no HTTP/2
        preface); a connection that fails them is answered and closed. Then
        the app's raw routes (`rt_raw_routes` on the ASGI app: `(matches,
        serve)` pairs) are asked in turn; the first whose `matches(head)`
        runs the connection with `serve(connection, head_and_what_followed)`.
        Otherwise the bytes read are handed back for hypercorn to read again.
        """
        connection = self.connection
        if not connection.plain_tcp:
            return False
        limits = admission.limits if admission is not None else AdmissionLimits()
        data = b""
        with trio.move_on_after(limits.head_timeout):
            try:
                while b"\r\n\r\n" not in data and len(data) < limits.max_head:
                    chunk = await connection.receive_some(limits.max_head)
                    if not chunk:
                        break
                    data += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if not data:  # nothing within the head timeout, or gone
            await connection.aclose()
            return True
        refusal = head_problem(data, limits)
        if refusal is not None:
            await self._refuse(refusal)
            return True
        for matches, serve in getattr(getattr(self.app, "app", None), "rt_raw_routes", ()):
            if matches(data):
                try:
                    await serve(connection, data)
                finally:
                    await connection.aclose()
                return True
        connection.push_back(data)
        return False

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not await self.connection.write(event.data):
                if self.connection.stalled:
                    await self.config.log.info(
                        "rt: a write to %s made no progress for %ss; closed the connection",
                        self.connection.peer,
                        self.write_timeout,
                    )
                await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            # Upstream closes from inside the app's task, which Quart-Trio cancels
            # as soon as the response is sent (issue 10). Closing never waits on
            # the peer: shielded.
            with trio.CancelScope(shield=True):
                await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            # The same cancellation killed the keep-alive timer before it started;
            # starting or stopping it is quick and never waits on the peer.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)


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


async def cut_all(admission: Admission) -> int:
    """Force-close every connection `admission` counts, at once (benchmarks); how many.

    Each socket is closed under the handler's feet: the peer sees the
    connection end mid-stream, without a close frame or a final chunk, as
    after a network failure. Reachable only through `rt serve --chaos signal`
    and SIGUSR1.
    """
    connections = admission.connections()
    # Every socket in one step, without yielding in between: a loop of aclose()
    # calls would checkpoint after each and spread the "storm" over seconds.
    for connection in connections:
        connection.cut()
    await trio.lowlevel.checkpoint()
    return len(connections)


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


def admit_with(config: Any, admission: Admission) -> None:
    """Bound the connections of the server run with hypercorn config `config`.

    The :class:`Admission` lives on that config, so each server counts its
    own connections (tests run several in one process).
    """
    config.rt_admission = admission


def uninstall() -> None:
    """Put hypercorn's own ``TCPServer`` and protocol back (for tests that probe upstream)."""
    _hypercorn_run.TCPServer = _UpstreamTCPServer  # type: ignore[misc]
    _hypercorn_protocol.H11Protocol = _H11Protocol  # type: ignore[misc]


def installed() -> bool:
    """Whether hypercorn's trio worker currently uses :class:`GuardedTCPServer`."""
    return _hypercorn_run.TCPServer is GuardedTCPServer
