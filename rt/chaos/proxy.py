"""The race lab's fault proxy: TCP between the clients and the rt server,
with network faults started and stopped while it runs.

    async with open_proxy(upstream=("127.0.0.1", 8000),
                          listeners=[("alice", "127.0.0.1", 0)]) as proxy:
        host, port = proxy.addresses["alice"]
        fault = proxy.start(window)          # a FaultWindow (rt/chaos/faults.py)
        ...
        proxy.stop(fault.id)

Each listener has a label: the lab gives every simulated client a listener
of its own, so it knows whose connection is whose. Connections get ids 1,
2, 3... in the order they are accepted, over all listeners.

Faults: `start(window)` applies a network window now and answers an
`ActiveFault`; lasting ones (everything but `cut`) hold their connections
until `stop(id)` (or `stop_after` seconds). What each fault does is
rt/chaos/connection.py's; which connections it takes is
`faults.choose_targets` at the start and `faults.takes_new` for those that
open while it lasts (`refuse` only has those). Process faults (kill, pause,
server) are the lab runner's: `run_schedule` hands them to its callback.

Records, for the lab's files and report (hooks are plain callables, called
in the proxy's task, so they must not block):

- `on_connection(record)`, once at accept and once at close:
  `{"t": unix_time, "conn": id, "label": label, "event": "open"|"close"}`
  (a connection refused by `refuse`, or whose upstream did not answer, is
  opened and closed at once);
- `on_fault(record)`, for every application:
  `{"t": unix_time, "fault": name, "action": "start"|"hit"|"stop",
  "conns": [ids], "id": fault id, "window": window id, "spec": the spec
  with every key spelled out}`; "start" lists the connections taken at the
  start, "hit" one taken later (a new connection under a lasting
  `scope=all` fault, or one refused), "stop" the ones it still held. An
  instant `cut` has a "start" only; process faults have "start" and, if
  they last, "stop", with no connections and no fault id.

Closing the proxy (leaving the `async with`) cancels every connection and
closes every socket at once; nothing it started outlives it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from rt.chaos.connection import Connection, abort, connection_record
from rt.chaos.faults import (
    FaultSpecError,
    FaultWindow,
    choose_targets,
    parse_fault,
    takes_new,
    window_now,
)
from rt.cluster.front import RoundRobin

Record = dict[str, Any]
Hook = Callable[[Record], None]
ProcessHook = Callable[[FaultWindow, str], Awaitable[None]]


@dataclass
class ActiveFault:
    """A fault the proxy applied: `conns` are every connection it took, in
    order; `active` is false once it stopped (or at once for an instant
    `cut`). `stops_at` (trio clock) is set when it stops by itself."""

    id: int
    window: FaultWindow
    started: float  # unix time
    conns: list[int] = field(default_factory=list)
    active: bool = True
    stops_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        w = self.window
        ends_in = None
        if self.active and self.stops_at is not None:
            ends_in = round(max(0.0, self.stops_at - trio.current_time()), 3)
        return {
            "id": self.id,
            "fault": w.name,
            "window": w.id,
            "spec": w.spec.text,
            "params": w.params,
            "scope": w.scope,
            "dir": w.dir,
            "p": w.p,
            "conns": list(self.conns),
            "active": self.active,
            "started": self.started,
            "ends_in": ends_in,
        }


class FaultProxy:
    """The running proxy (made by `open_proxy`). `addresses` maps each
    listener's label to the (host, port) it is bound to."""

    def __init__(
        self,
        upstream: tuple[str, int] | list[tuple[str, int]],
        nursery: trio.Nursery,
        *,
        on_connection: Hook | None,
        on_fault: Hook | None,
        connect_timeout: float,
    ) -> None:
        # One (host, port), or a list of them: a cluster's nodes, used round robin.
        self.upstreams: list[tuple[str, int]] = (
            list(upstream) if isinstance(upstream, list) else [upstream]
        )
        self.upstream = self.upstreams[0]
        self._balancer = RoundRobin(self.upstreams, connect_timeout)
        self.addresses: dict[str, tuple[str, int]] = {}
        self.connect_timeout = connect_timeout
        self._nursery = nursery
        self._on_connection = on_connection
        self._on_fault = on_fault
        self._conns: dict[int, Connection] = {}
        self._faults: dict[int, ActiveFault] = {}
        self._next_conn = 1
        self._next_fault = 1

    # -- looking ------------------------------------------------------------------------

    def connections(self) -> list[Connection]:
        """Every connection accepted and not yet closed, by id."""
        return [self._conns[i] for i in sorted(self._conns)]

    def connection(self, conn_id: int) -> Connection | None:
        return self._conns.get(conn_id)

    def faults(self) -> list[ActiveFault]:
        """The lasting faults in force now, by id."""
        return [self._faults[i] for i in sorted(self._faults)]

    # -- faults -------------------------------------------------------------------------

    def start(self, window: FaultWindow, *, stop_after: float | None = None) -> ActiveFault:
        """Apply a network window now. A lasting one stays until `stop`, or
        for `stop_after` seconds if given. Raises ValueError for a process
        window (the lab runner applies those, not the proxy)."""
        if window.kind != "network":
            raise ValueError(
                f"{window.name} is a process fault: the lab runner applies it "
                f"(rt chaos run), not the proxy"
            )
        fault = ActiveFault(self._next_fault, window, time.time())
        self._next_fault += 1
        open_ids = [c.id for c in self.connections() if c.state == "open"]
        fault.conns = choose_targets(window, open_ids)
        if not window.lasting:  # cut: now, and nothing to stop
            fault.active = False
            for conn_id in fault.conns:
                self._conns[conn_id].cut(window.spec.mode or "fin")
        else:
            self._faults[fault.id] = fault
            for conn_id in fault.conns:
                self._conns[conn_id].take(fault.id, window)
            if stop_after is not None:
                fault.stops_at = trio.current_time() + stop_after
                self._nursery.start_soon(self._stop_at, fault.id, fault.stops_at)
        self.record(window, "start", fault.conns, fault.id)
        return fault

    def start_spec(self, text: str, seed: int) -> ActiveFault:
        """Parse one fault of the `--faults` grammar and start it now, for its
        `for` (the control API). Raises FaultSpecError for a bad spec or a
        process fault."""
        spec = parse_fault(text)
        if spec.kind != "network":
            raise FaultSpecError(
                f"{spec.name} is a process fault: rt chaos run applies it to the server; "
                f"the proxy takes cut, stall, latency, bandwidth, slice, limit, slow_close, "
                f"refuse"
            )
        window = window_now(spec, seed, id=f"manual#{self._next_fault}")
        return self.start(window, stop_after=spec.duration if window.lasting else None)

    def stop(self, fault_id: int) -> ActiveFault | None:
        """Stop a lasting fault now; None if no such fault is in force."""
        fault = self._faults.pop(fault_id, None)
        if fault is None:
            return None
        fault.active = False
        held = []
        for conn_id in fault.conns:
            conn = self._conns.get(conn_id)
            if conn is not None and fault_id in conn.faults:
                conn.release(fault_id)
                held.append(conn_id)
        self.record(fault.window, "stop", held, fault.id)
        return fault

    def stop_all(self) -> list[ActiveFault]:
        """Stop every lasting fault now."""
        return [f for f in (self.stop(i) for i in sorted(self._faults)) if f is not None]

    async def _stop_at(self, fault_id: int, deadline: float) -> None:
        await trio.sleep_until(deadline)
        self.stop(fault_id)

    def record(
        self, window: FaultWindow, action: str, conns: Sequence[int], fault_id: int | None = None
    ) -> None:
        """Hand one application record to `on_fault` (see the module docstring)."""
        if self._on_fault is not None:
            self._on_fault(
                {
                    "t": time.time(),
                    "fault": window.name,
                    "action": action,
                    "conns": list(conns),
                    "id": fault_id,
                    "window": window.id,
                    "spec": window.spec.text,
                }
            )

    # -- connections ----------------------------------------------------------------------

    def _emit(self, conn: Connection, event: str) -> None:
        if self._on_connection is not None:
            self._on_connection(connection_record(conn, event))

    async def _handle(self, label: str, client: trio.SocketStream) -> None:
        try:
            peer = client.socket.getpeername()[:2]
        except OSError:  # gone already
            await trio.aclose_forcefully(client)
            return
        conn = Connection(self._next_conn, label, peer, client)
        self._next_conn += 1
        self._conns[conn.id] = conn
        self._emit(conn, "open")
        try:
            await self._serve(conn, client)
        finally:
            # No await in here: when the proxy shuts, this runs cancelled.
            del self._conns[conn.id]
            conn.close()
            self._emit(conn, "close")

    async def _serve(self, conn: Connection, client: trio.SocketStream) -> None:
        refusing = [
            f for f in self.faults() if f.window.name == "refuse" and takes_new(f.window, conn.id)
        ]
        if refusing:
            conn.state = conn.close_mode = "refused"
            for fault in refusing:
                fault.conns.append(conn.id)
                self.record(fault.window, "hit", [conn.id], fault.id)
            abort(client)
            return
        server = await self._balancer.connect()
        if server is None:
            # The server is down (killed, restarting): the client sees a
            # reset, as it would from the server's own port.
            conn.state = conn.close_mode = "failed"
            abort(client)
            return
        for fault in self.faults():
            if fault.window.name != "refuse" and takes_new(fault.window, conn.id):
                fault.conns.append(conn.id)
                conn.take(fault.id, fault.window)
                self.record(fault.window, "hit", [conn.id], fault.id)
        await conn.run(server)


@asynccontextmanager
async def open_proxy(
    upstream: tuple[str, int] | list[tuple[str, int]],
    listeners: Sequence[tuple[str, str, int]],
    *,
    on_connection: Hook | None = None,
    on_fault: Hook | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[FaultProxy]:
    """Run a fault proxy to `upstream` with one listener per (label, host,
    port) (port 0: an ephemeral one; see `FaultProxy.addresses`).

    Labels must be unique. A host that resolves to several addresses binds
    them all on a given port; with port 0 only the first is kept, so each
    label has one address. Leaving the block closes every connection.
    """
    labels = [label for label, _, _ in listeners]
    if len(set(labels)) != len(labels):
        raise ValueError(f"listener labels must be unique, got {labels}")
    async with trio.open_nursery() as nursery:
        proxy = FaultProxy(
            upstream,
            nursery,
            on_connection=on_connection,
            on_fault=on_fault,
            connect_timeout=connect_timeout,
        )
        for label, host, port in listeners:
            sockets = await trio.open_tcp_listeners(port, host=host)
            if port == 0:
                for extra in sockets[1:]:
                    await extra.aclose()
                sockets = sockets[:1]
            proxy.addresses[label] = tuple(sockets[0].socket.getsockname()[:2])
            nursery.start_soon(
                partial(
                    trio.serve_listeners,
                    partial(proxy._handle, label),
                    sockets,
                    handler_nursery=nursery,
                )
            )
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


async def run_schedule(
    proxy: FaultProxy,
    windows: Sequence[FaultWindow],
    t0: float,
    *,
    on_process_fault: ProcessHook | None = None,
) -> None:
    """Apply every window at `t0 + window.start` (t0 on trio's clock) and stop
    the lasting ones at `t0 + window.end`; return when the last has ended.

    Process windows go to `await on_process_fault(window, "start")` at their
    start and, if they last (`pause`), `(window, "stop")` at their end, in a
    task of their own so a slow restart does not delay the others; they are
    recorded like the proxy's. A schedule with process windows and no
    callback is the caller's mistake: ValueError before anything starts. If
    the run is cancelled, the faults it started are stopped.
    """
    windows = sorted(windows, key=lambda w: w.start)
    process = [w.name for w in windows if w.kind == "process"]
    if process and on_process_fault is None:
        raise ValueError(
            f"the schedule has process faults ({', '.join(sorted(set(process)))})"
            f" but no on_process_fault to apply them"
        )
    started: list[int] = []

    async def stop_at(fault_id: int, deadline: float) -> None:
        await trio.sleep_until(deadline)
        proxy.stop(fault_id)

    async def process_window(window: FaultWindow) -> None:
        assert on_process_fault is not None
        proxy.record(window, "start", [])
        await on_process_fault(window, "start")
        if window.lasting:
            await trio.sleep_until(t0 + window.end)
            await on_process_fault(window, "stop")
            proxy.record(window, "stop", [])

    try:
        async with trio.open_nursery() as nursery:
            for window in windows:
                await trio.sleep_until(t0 + window.start)
                if window.kind == "process":
                    nursery.start_soon(process_window, window)
                    continue
                fault = proxy.start(window)
                if fault.active:
                    started.append(fault.id)
                    nursery.start_soon(stop_at, fault.id, t0 + window.end)
    finally:
        for fault_id in started:
            proxy.stop(fault_id)  # no-op for those already stopped
