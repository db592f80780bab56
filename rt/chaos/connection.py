"""One proxied connection: the client's socket, the upstream's, and a pipe each way between them.

A `Pipe` carries one direction (`up` is client to server, `down` server to
client): a reader task reads its source into a queue of chunks stamped with
their arrival time (at most HOLD_LIMIT bytes held: past that it stops reading,
so the sender's writes block as on a slow network), and a writer task writes
them to its destination as the faults holding the connection allow right now.
The faults are read afresh before every write (`Connection.shaping`), so a
fault that starts or stops takes effect at the next chunk, and a write that is
waiting for the destination to drain is called off the moment a stall begins.
Nothing is dropped or reordered by a fault starting or stopping: the queue is
the only path, and it is first in, first out.

How an end travels (the contract the faults bend):

- A source's EOF goes on to the destination as a FIN, after every byte
  before it; the connection is over when both directions have passed their
  FIN on (half-closed connections work).
- A source's error (a reset) goes on as a reset, after every byte before it,
  and ends the connection. A write that fails counts as an error of the
  socket written to.
- `stall` holds everything in its directions, ends included. If a source
  ended while a stall held its direction, the far side is never told: when
  the stall ends the bytes held for it are dropped and it is left open and
  silent (what a peer that died behind a NAT leaves), until it sends a byte
  (answered with a reset) or closes.
- `slow_close` holds an end for its `for` before passing it on; a hold that
  has begun runs its course even if the fault stops meanwhile.
- `bandwidth` paces each direction on its own (`rate` each way, per
  connection), in pieces of 20 ms worth; `latency` holds each chunk read
  until its arrival time plus delay±jitter, never before the chunk ahead.
- `cut` and `limit` close both sockets at once: `fin` sends FIN both ways and
  reads what is left until the peers close too (at most FIN_LINGER seconds,
  so that unread bytes do not turn the close into a reset); `rst` resets both.

Everything a connection does runs in its own nursery inside `run()`; when
`run()` returns both sockets are closed.

Segments: trio's SocketStream turns TCP_NODELAY on for every socket it
wraps (accepted or connected), so each write here leaves as its own segment
at once; `slice` relies on that.
"""

from __future__ import annotations

import math
import random
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from rt.chaos.faults import FaultWindow

UP = "up"  # client to server
DOWN = "down"  # server to client
CHUNK = 65536  # bytes read at a time
HOLD_LIMIT = 1 << 20  # bytes a pipe holds before it stops reading its source
FIN_LINGER = 1.0  # seconds a `fin` close waits for the peers' own FIN
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_GONE = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


def abort(stream: trio.SocketStream) -> None:
    """Close a socket abortively (the peer gets RST), ignoring a socket that is gone already."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    stream.socket.close()


def connection_record(conn: Connection, event: str) -> dict[str, Any]:
    """The `on_connection` record: `{"t", "conn", "label", "event"}` (event: open, close)."""
    return {"t": time.time(), "conn": conn.id, "label": conn.label, "event": event}


@dataclass(frozen=True)
class Shaping:
    """What the faults holding a connection ask of one direction right now (all off: CLEAN)."""

    stalled: bool = False
    latency: tuple[float, float, random.Random] | None = None  # delay, jitter, its random
    rate: int | None = None  # bytes a second
    slice: int | None = None  # bytes a write
    slice_pause: float = 0.0  # seconds after each slice
    limits: tuple[tuple[list[int], str], ...] = ()  # (bytes left, close mode) per `limit`
    slow_close: float = 0.0  # seconds to hold an end


CLEAN = Shaping()


class Pipe:
    """One direction of a connection: `src` to `dst`, shaped by the connection's faults."""

    def __init__(
        self, conn: Connection, direction: str, src: trio.SocketStream, dst: trio.SocketStream
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.queue: deque[list[Any]] = deque()  # [arrival time, memoryview, due time or None]
        self.held = 0
        self.end: str | None = None  # how src ended: "eof" or "error"
        self.end_behind_stall = False  # src ended while a stall held this direction
        self.done = False  # nothing more will be written to dst
        self.close_held = False  # slow_close has held this end already
        self.wake = trio.lowlevel.ParkingLot()  # the writer waits here: bytes, end, fault change
        self.space = trio.lowlevel.ParkingLot()  # the reader waits here while HOLD_LIMIT is held
        self.reading: trio.CancelScope | None = None
        self.sending: trio.CancelScope | None = None
        self.reader_exited = trio.Event()
        self.last_due = -math.inf  # latency keeps chunks in order: no chunk due before the last
        self.next_send = -math.inf  # bandwidth: when the next write may go

    # -- the reader ------------------------------------------------------------------------

    async def read(self) -> None:
        try:
            with trio.CancelScope() as self.reading:
                if self.end is not None or self.done:
                    return
                while True:
                    while self.held >= HOLD_LIMIT:
                        await self.space.park()
                    try:
                        data = await self.src.socket.recv(CHUNK)
                    except _GONE:
                        self.source_ended("error")
                        return
                    if not data:
                        self.source_ended("eof")
                        return
                    self.queue.append([trio.current_time(), memoryview(data), None])
                    self.held += len(data)
                    self.wake.unpark_all()
        finally:
            self.reader_exited.set()

    def source_ended(self, how: str) -> None:
        """src is at its end (read EOF or an error, or a write to it failed): stop reading it."""
        if self.end is not None:
            return
        self.end = how
        self.end_behind_stall = self.conn.shaping(self.direction).stalled
        if self.reading is not None:
            self.reading.cancel()
        self.wake.unpark_all()

    # -- the writer ------------------------------------------------------------------------

    async def write(self) -> None:
        conn = self.conn
        while not self.done:
            shaping = conn.shaping(self.direction)
            if shaping.stalled:
                await self._park()
            elif self.end_behind_stall:
                self._drop()
                self.done = True
                conn.source_died_behind_stall(self)
            elif self.queue:
                await self._forward(shaping)
            elif self.end is not None:
                if shaping.slow_close and not self.close_held:
                    self.close_held = True
                    await trio.sleep(shaping.slow_close)
                    continue  # a stall may have begun meanwhile: it holds the end too
                self._pass_end()
            else:
                await self._park()

    async def _forward(self, shaping: Shaping) -> None:
        """Write (some of) the head chunk, if the faults let it go now."""
        item = self.queue[0]
        now = trio.current_time()
        if shaping.latency is not None:
            if item[2] is None:
                delay, jitter, rng = shaping.latency
                due = item[0] + max(0.0, delay + rng.uniform(-jitter, jitter))
                item[2] = self.last_due = max(due, self.last_due)
            if now < item[2]:
                await self._park(until=item[2])
                return
        data: memoryview = item[1]
        size = len(data)
        if shaping.rate is not None:
            if now < self.next_send:
                await self._park(until=self.next_send)
                return
            size = min(size, max(1, shaping.rate // 50))  # pieces of 20 ms at that rate
        if shaping.slice is not None:
            size = min(size, shaping.slice)
        for left, _ in shaping.limits:
            size = min(size, left[0])
        if size <= 0:
            # The other direction used up a shared limit: the cut it made is
            # on its way, and not one byte more may go.
            await self._park()
            return
        sent = await self._send(data[:size])
        if not sent:
            return  # a stall began, or dst is gone: the loop sees which
        if sent == len(data):
            self.queue.popleft()
        else:
            item[1] = data[sent:]
        self.held -= sent
        self.space.unpark_all()
        self.conn.carried(self.direction, sent)
        if shaping.rate is not None:
            self.next_send = max(self.next_send, now) + sent / shaping.rate
        for left, mode in shaping.limits:
            left[0] -= sent
            if left[0] <= 0:
                self.done = True
                self.conn.cut(mode)
                return
        if shaping.slice is not None and shaping.slice_pause and self.queue:
            # Without a pause the kernel may coalesce pieces the peer has
            # not read yet: the far end would read them together.
            await trio.sleep(shaping.slice_pause)

    async def _send(self, data: memoryview) -> int:
        """Send what dst takes now; 0 when a stall called the send off or dst failed."""
        with trio.CancelScope() as self.sending:
            try:
                return await self.dst.socket.send(data)
            except _GONE:
                if not self.done:
                    self.conn.destination_failed(self)
                return 0
            finally:
                self.sending = None
        # Cancelled by a stall before a byte went: a trio socket's send is all
        # or nothing with respect to cancellation.
        return 0

    def _pass_end(self) -> None:
        self.done = True
        if self.end == "eof":
            try:
                self.dst.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.conn.pipe_done()
        else:
            abort(self.dst)
            self.conn.finish("reset")

    async def _park(self, until: float = math.inf) -> None:
        with trio.move_on_at(until):
            await self.wake.park()

    def _drop(self) -> None:
        self.queue.clear()
        self.held = 0
        self.space.unpark_all()


class Connection:
    """A client's connection through the proxy: its identity, counters, faults and two pipes.

    `faults` maps the id of every lasting fault holding it now to its window
    (the proxy calls `take` and `release`); `cut(mode)` ends it at once.
    `state`: connecting, open, silent (its upstream died behind a stall),
    closing, closed; or refused / failed (never forwarded: `refuse`, or no
    upstream). `close_mode` says how it ended: None while it lives, then
    "close" (both sides closed), "reset" (one side reset), "fin" or "rst"
    (a cut or a limit), "silent" (the stall rule), "proxy" (the proxy shut).
    """

    def __init__(
        self, conn_id: int, label: str, peer: tuple[str, int], client: trio.SocketStream
    ) -> None:
        self.id = conn_id
        self.label = label
        self.peer = peer
        self.opened = time.time()
        self.started = trio.current_time()
        self.bytes_up = 0
        self.bytes_down = 0
        self.state = "connecting"
        self.faults: dict[int, FaultWindow] = {}
        self.close_mode: str | None = None
        self.client = client
        self.upstream: trio.SocketStream | None = None
        self.up: Pipe | None = None
        self.down: Pipe | None = None
        self._limits: dict[int, list[int]] = {}  # fault id -> bytes left before `limit` cuts
        self._rngs: dict[int, random.Random] = {}  # fault id -> latency's jitter draws
        self._done = trio.Event()
        self._nursery: trio.Nursery | None = None

    def info(self) -> dict[str, Any]:
        """The connection as the control API lists it."""
        return {
            "id": self.id,
            "label": self.label,
            "peer": f"{self.peer[0]}:{self.peer[1]}",
            "opened": self.opened,
            "age": round(trio.current_time() - self.started, 3),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "state": self.state,
            "faults": sorted(self.faults),
        }

    # -- faults ----------------------------------------------------------------------------

    def take(self, fault_id: int, window: FaultWindow) -> None:
        """A lasting fault holds this connection from now until `release(fault_id)`."""
        self.faults[fault_id] = window
        if window.name == "limit":
            self._limits[fault_id] = [window.bytes or 0]
        if window.name == "latency":
            # Jitter draws seeded by the window and the connection: a replay
            # delays the same chunks alike.
            self._rngs[fault_id] = random.Random(f"rt-chaos-latency:{window.seed}:{self.id}")
        self.changed()

    def release(self, fault_id: int) -> None:
        if self.faults.pop(fault_id, None) is not None:
            self._limits.pop(fault_id, None)
            self._rngs.pop(fault_id, None)
            self.changed()

    def changed(self) -> None:
        """The faults changed: wake both writers, and call off a send a stall now forbids."""
        for pipe in (self.up, self.down):
            if pipe is None:
                continue
            if pipe.sending is not None and self.shaping(pipe.direction).stalled:
                pipe.sending.cancel()
            pipe.wake.unpark_all()

    def shaping(self, direction: str) -> Shaping:
        """The faults' demands on one direction; where two of a kind hold, the harsher wins."""
        if not self.faults:
            return CLEAN
        stalled = False
        latency = None
        rate = piece = None
        pause = 0.0
        limits = []
        hold = 0.0
        for fault_id, window in self.faults.items():
            spec = window.spec
            if not window.covers(direction):
                continue
            if spec.name == "stall":
                stalled = True
            elif spec.name == "latency":
                if latency is None or (spec.delay or 0.0) > latency[0]:
                    latency = (spec.delay or 0.0, spec.jitter or 0.0, self._rngs[fault_id])
            elif spec.name == "bandwidth" and spec.rate:
                rate = spec.rate if rate is None else min(rate, spec.rate)
            elif spec.name == "slice" and window.bytes:
                piece = window.bytes if piece is None else min(piece, window.bytes)
                pause = max(pause, spec.delay or 0.0)
            elif spec.name == "limit":
                limits.append((self._limits[fault_id], spec.mode or "fin"))
            elif spec.name == "slow_close":
                hold = max(hold, spec.duration)
        return Shaping(
            stalled=stalled,
            latency=latency,
            rate=rate,
            slice=piece,
            slice_pause=pause,
            limits=tuple(limits),
            slow_close=hold,
        )

    # -- ends ------------------------------------------------------------------------------

    def cut(self, mode: str) -> None:
        """End the connection now: "fin" closes both sockets gracefully, "rst" resets both."""
        self.finish(mode)

    def finish(self, how: str = "close") -> None:
        if self.close_mode is None:
            self.close_mode = how
            self.state = "closing"
        self._done.set()

    def carried(self, direction: str, count: int) -> None:
        if direction == UP:
            self.bytes_up += count
        else:
            self.bytes_down += count

    def pipe_done(self) -> None:
        if self.up is not None and self.down is not None and self.up.done and self.down.done:
            self.finish()

    def other(self, pipe: Pipe) -> Pipe:
        assert self.up is not None and self.down is not None
        return self.down if pipe is self.up else self.up

    def destination_failed(self, pipe: Pipe) -> None:
        """A write to pipe.dst failed: that socket is gone, as if it had sent a reset."""
        pipe.done = True
        pipe._drop()
        if pipe.reading is not None:
            pipe.reading.cancel()  # what its src sends has nowhere to go now
        self.other(pipe).source_ended("error")
        self.pipe_done()

    def source_died_behind_stall(self, pipe: Pipe) -> None:
        """pipe.src ended while a stall hid it: leave pipe.dst open and silent (see the module)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._keep_silent, pipe)

    async def _keep_silent(self, dead: Pipe) -> None:
        live = self.other(dead)  # the pipe that reads the side left open
        live.done = True  # nothing goes to the dead side again
        if live.reading is not None:
            live.reading.cancel()
        live.wake.unpark_all()
        dead.src.socket.close()  # it has ended already; closing it frees the peer's side
        self.state = "silent"
        await live.reader_exited.wait()  # then this task is the only reader of live.src
        heard = live.held > 0
        if not heard and live.end is None:
            try:
                heard = bool(await live.src.socket.recv(CHUNK))
            except _GONE:
                heard = False
        if heard:
            # A byte from the side left open: the far end answers it with a
            # reset, once it can get through.
            while self.shaping(live.direction).stalled:
                await live._park()
            abort(live.src)
        self.finish("silent")

    # -- the task --------------------------------------------------------------------------

    async def run(self, upstream: trio.SocketStream) -> None:
        """Forward between the client and `upstream` (connected) until the
        connection ends, then close both sockets as it ended."""
        self.upstream = upstream
        self.up = Pipe(self, UP, self.client, upstream)
        self.down = Pipe(self, DOWN, upstream, self.client)
        self.state = "open"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for pipe in (self.up, self.down):
                    nursery.start_soon(pipe.read)
                    nursery.start_soon(pipe.write)
                await self._done.wait()
                nursery.cancel_scope.cancel()
            await self._close_as_asked()
        finally:
            self.close()

    def close(self) -> None:
        """Close both sockets now (idempotent); what is unsaid is dropped."""
        if self.close_mode is None:
            self.close_mode = "proxy"
        for stream in (self.client, self.upstream):
            if stream is not None:
                stream.socket.close()
        if self.state not in ("refused", "failed"):
            self.state = "closed"
        # Wake whoever waits on the pipes; their tasks are gone with the nursery.
        self._done.set()

    async def _close_as_asked(self) -> None:
        streams = [s for s in (self.client, self.upstream) if s is not None]
        if self.close_mode == "rst":
            for stream in streams:
                abort(stream)
        elif self.close_mode == "fin":
            for stream in streams:
                try:
                    stream.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            with trio.move_on_after(FIN_LINGER):
                async with trio.open_nursery() as nursery:
                    for stream in streams:
                        nursery.start_soon(_read_to_end, stream)


async def _read_to_end(stream: trio.SocketStream) -> None:
    try:
        while await stream.socket.recv(CHUNK):
            pass
    except _GONE:
        pass
