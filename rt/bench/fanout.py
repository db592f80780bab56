"""`rt bench fanout`: N subscribers on one flow, one publisher at R messages a second.

Subscribers (WebSocket or SSE) live in several load-generator processes;
the publisher is one more process that posts over a WebSocket (ops, not
waiting for acks) with its send time on CLOCK_MONOTONIC in the content
(`t<ns>`), so a subscriber's receipt time minus the stamp is the end-to-end
latency on the same machine clock. Server CPU (utime+stime) and peak RSS
(VmHWM) come from /proc/<server pid>.

Before the cells, the load generator's own receive capacity is measured
against a trivial local fan-out (a Python process that blasts pre-framed
events at the same number of connections); a cell that offers more events a
second than that is skipped, marked "skipped: load generator limit". The
same trivial fan-out, writing one event per write, gives the write floor:
the CPU one delivery costs when it is one write (`write_floor`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from rt.bench import common
from rt.bench.common import STAMPS, Report, Server

WORKERS = 3  # subscriber processes


# -- subscriber worker (a separate process) -------------------------------------------------


def subscriber_worker(port: int, token: str, transport: str, n: int, conn) -> None:
    """Open `n` streams, then for each phase the parent sends, count and time deliveries."""
    common.pin_load_generator()
    common.raise_nofile()
    trio.run(_subscriber_main, port, token, transport, n, conn)


async def _subscriber_main(port, token, transport, n, conn) -> None:
    state: dict[str, Any] = {"count": 0, "lat": [], "on": False, "errors": 0}
    limit = trio.Semaphore(64)
    ready = [0]

    async def one(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with limit:
            try:
                stream = await common.open_stream(port, token, transport, common.query(), 60)
            except Exception:
                state["errors"] += 1
                task_status.started()
                return
            buf = b""
            while b'"ready"' not in buf:
                data = await stream.receive()
                if not data:
                    state["errors"] += 1
                    task_status.started()
                    return
                buf += data
        ready[0] += 1
        task_status.started()
        tail = b""
        while True:
            data = await stream.receive()
            if not data:
                state["errors"] += 1
                return
            if not state["on"]:
                continue
            now = time.monotonic_ns()
            if transport != "ws":
                data = tail + data
                cut = data.rfind(b"\n")
                data, tail = data[: cut + 1], data[cut + 1 :]
            stamps = STAMPS.findall(data)
            if stamps:
                state["count"] += len(stamps)
                lat = state["lat"]
                if len(lat) < 400_000:
                    lat.extend(now - int(s) for s in stamps)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await nursery.start(one)
        conn.send(("ready", ready[0], state["errors"]))
        while True:
            message = await trio.to_thread.run_sync(conn.recv)
            if message[0] == "stop":
                break
            _, start_at, end_at = message  # a phase, on time.monotonic()
            state.update(count=0, lat=[])
            await trio.sleep_until(start_at - time.monotonic() + trio.current_time())
            state["on"] = True
            await trio.sleep_until(end_at - time.monotonic() + trio.current_time())
            state["on"] = False
            conn.send(("done", state["count"], state["lat"], state["errors"]))
        nursery.cancel_scope.cancel()


# -- publisher (a separate process) -----------------------------------------------------------


def publisher_worker(port: int, token: str, rate: float, seconds: float, conn) -> None:
    common.pin_load_generator()
    conn.send(trio.run(_publish, port, token, rate, seconds, conn))


async def _publish(port, token, rate, seconds, conn) -> int:
    stream = await common.open_stream(port, token, "ws", common.query(flows="pub"))
    conn.send("ready")
    start_at = conn.recv()
    await trio.sleep_until(trio.current_time() + start_at - time.monotonic())
    sent = 0
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            while await stream.receive():
                pass

        nursery.start_soon(drain)
        start = time.monotonic()
        total = max(1, int(rate * seconds))
        for i in range(total):
            await trio.sleep_until(trio.current_time() + (start + i / rate - time.monotonic()))
            uid = f"p{i:08d}{os.getpid()}"
            await stream.send_text(
                b'{"op":"post","flow":"bench","content":"t%d","uuid":"%s"}'
                % (time.monotonic_ns(), uid.encode())
            )
            sent += 1
        await trio.sleep(0.5)  # let the acks come before the socket closes
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return sent


# -- the load generator's own limit ------------------------------------------------------------

TRIVIAL_FANOUT = r"""
import socket, sys, time, os, select
n, transport, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
conns = []
while len(conns) < n:
    c, _ = s.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += c.recv(4096)
    if transport == "ws":
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                  + bytes([0x81, 16]) + b'{"type":"ready"}')
    else:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                  b'data: {"type":"ready"}\n\n')
    c.setblocking(False)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as trio sets on rt's sockets
    conns.append(c)
sys.stdin.readline()  # go
BATCH = int(sys.argv[4])
writes = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    ev = []
    for i in range(BATCH):
        obj = b'{"id":%d,"flow":"bench","type":"message","user":"bench","uuid":"u0123456789abcdef","content":"t%d","sent":1795702363092}' % (i, time.monotonic_ns())
        ev.append(obj)
    if transport == "ws":
        payload = b"\n".join(ev)
        frame = bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload
    else:
        frame = b"".join(b"id: E:1\ndata: " + e + b"\n\n" for e in ev)
    for c in conns:
        try:
            c.send(frame)  # a partial send would break framing: drop such connections' extra
            writes += 1
        except BlockingIOError:
            pass
print(writes, flush=True)
sys.stdin.readline()  # the parent reads this process's CPU time first
"""


def _trivial_fanout(transport: str, n: int, seconds: float, batch: int) -> tuple[float, float]:
    """Run the trivial fan-out to `n` subscribers for `seconds`, `batch` events a write.

    Returns (events a second the subscriber processes received, the fan-out's
    CPU µs per write). It runs pinned to the server's core, like `rt serve`.
    """
    server_cores, _ = common.cores()
    proc = subprocess.Popen(
        [sys.executable, "-c", TRIVIAL_FANOUT, str(n), transport, str(seconds), str(batch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=common.raise_nofile,
    )
    if server_cores:
        os.sched_setaffinity(proc.pid, server_cores)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        pool = Pool(port, "", transport, n)
        cpu0 = common.proc_cpu_seconds(proc.pid)
        start = time.monotonic() + 0.3
        proc.stdin.write("go\n")
        proc.stdin.flush()
        count, _ = pool.phase(start, start + seconds)
        writes = int(proc.stdout.readline())
        cpu = common.proc_cpu_seconds(proc.pid) - cpu0
        pool.close()
        return count / seconds, (cpu / writes * 1e6 if writes else float("nan"))
    finally:
        proc.kill()
        proc.wait()


def load_generator_limit(transport: str, n: int, seconds: float) -> float:
    """Events a second the subscriber processes can receive from a trivial fan-out."""
    return _trivial_fanout(transport, n, seconds, batch=20)[0]


def write_floor(transport: str, n: int, seconds: float) -> float:
    """CPU µs per write of the trivial fan-out writing one event per write to `n` sockets.

    What the kernel and the least Python cost to deliver one event to one
    loopback TCP connection on this machine, measured like the server (its
    own CPU time, pinned to the server's core, TCP_NODELAY as on rt's
    sockets): the floor for rt's "server CPU per delivered event", which
    needs one write per event per connection when events come one at a
    time. Written back to back, so the floor is if anything low: a socket
    with unacknowledged data may take the next write more cheaply than one
    written to 10 ms later.
    """
    return _trivial_fanout(transport, n, seconds, batch=1)[1]


# -- the parent side ----------------------------------------------------------------------------


class Pool:
    """Subscriber worker processes holding `n` streams between them."""

    def __init__(self, port: int, token: str, transport: str, n: int) -> None:
        ctx = common.spawn_context()
        self.workers = []
        self.connected = 0
        for share in common.split(n, min(WORKERS, n)):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=subscriber_worker, args=(port, token, transport, share, child), daemon=True
            )
            p.start()
            self.workers.append((p, parent))
        for _p, parent in self.workers:
            if not parent.poll(120):
                raise TimeoutError("subscribers did not connect within 120 s")
            _, ok, errors = parent.recv()
            self.connected += ok

    def phase(self, start_at: float, end_at: float) -> tuple[int, list[int]]:
        for _, parent in self.workers:
            parent.send(("phase", start_at, end_at))
        count, lat = 0, []
        for _, parent in self.workers:
            if not parent.poll(end_at - time.monotonic() + 60):
                raise TimeoutError("a subscriber worker did not report")
            _, c, samples, _ = parent.recv()
            count += c
            lat.extend(samples)
        return count, lat

    def close(self) -> None:
        for _p, parent in self.workers:
            try:
                parent.send(("stop",))
            except OSError:
                pass
        for p, _ in self.workers:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def run_cell(server: Server, pool: Pool, n: int, rate: float, seconds: float, grace: float) -> dict:
    ctx = common.spawn_context()
    parent, child = ctx.Pipe()
    publisher = ctx.Process(
        target=publisher_worker, args=(server.port, server.token, rate, seconds, child), daemon=True
    )
    publisher.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise TimeoutError("the publisher did not connect")
    cpu0 = server.cpu_seconds()
    start_at = time.monotonic() + 0.2
    end_at = start_at + seconds + grace  # the last events' grace
    parent.send(start_at)
    pool_result = pool.phase(start_at, end_at)
    publisher.join(30)
    sent = parent.recv() if parent.poll(5) else 0
    cpu = server.cpu_seconds() - cpu0
    count, lat = pool_result
    lat_s = [x / 1e9 for x in lat]
    stats = common.percentiles(lat_s, scale=1e3, unit="ms")
    expected = sent * pool.connected
    return {
        "sent": sent,
        "delivered": count,
        "delivered_fraction": count / expected if expected else None,
        "events_per_s": count / seconds,
        "latency_p50_ms": stats["p50_ms"],
        "latency_p99_ms": stats["p99_ms"],
        "cpu_us_per_event": cpu / count * 1e6 if count else None,
        "server_cpu_s": cpu,
        "peak_rss_mb": server.hwm_kb() / 1024,
    }


def main(
    quick: bool, out: Path, ns: tuple[int, ...] | None = None, rates: tuple[int, ...] | None = None
) -> Report:
    """`ns` and `rates` pick cells (default: the whole matrix, or N=100 R=100 with --quick)."""
    report = Report("fanout", out, quick)
    ns = ns or ((100,) if quick else (100, 1000, 5000))
    rates = rates or ((100,) if quick else (10, 100, 1000))
    seconds = 1.5 if quick else 6.0
    global WORKERS
    WORKERS = 2 if quick else 3
    transports = ("ws", "sse")
    common.raise_nofile()
    with common.deadline_guard(120 if quick else 3000), common.progress() as progress:
        task = progress.add_task("fanout", total=len(transports) * (len(ns) * (len(rates) + 1)))
        for transport in transports:
            for n in ns:
                progress.update(
                    task, description=f"fanout {transport}: load generator limit, N={n}"
                )
                limit = load_generator_limit(transport, n, 0.5 if quick else 3.0)
                floor = write_floor(transport, n, 0.5 if quick else 2.0)
                progress.advance(task)
                runnable = [r for r in rates if n * r <= limit]
                for r in rates:
                    if r not in runnable:
                        report.add(
                            transport=transport,
                            n=n,
                            rate=r,
                            offered=n * r,
                            lg_limit=limit,
                            write_floor_us=floor,
                            status="skipped: load generator limit",
                        )
                        progress.advance(task)
                if not runnable:
                    continue
                with Server("sqlite") as server:
                    progress.update(task, description=f"fanout {transport}: connecting {n}")
                    pool = Pool(server.port, server.token, transport, n)
                    try:
                        for r in runnable:
                            progress.update(task, description=f"fanout {transport} N={n} R={r}")
                            row = run_cell(server, pool, n, r, seconds, 1.0 if quick else 3.0)
                            cpu = row["cpu_us_per_event"]
                            report.add(
                                transport=transport,
                                n=n,
                                rate=r,
                                offered=n * r,
                                lg_limit=limit,
                                connected=pool.connected,
                                status="ok",
                                write_floor_us=floor,
                                cpu_x_floor=cpu / floor if cpu else None,
                                **row,
                            )
                            progress.advance(task)
                    finally:
                        pool.close()
    report.rows.sort(key=lambda r: (r["transport"], r["n"], r["rate"]))
    report.write(
        [
            ("transport", "transport", ""),
            ("n", "N", "d"),
            ("rate", "R /s", "d"),
            ("status", "status", ""),
            ("events_per_s", "delivered /s", ",.0f"),
            ("delivered_fraction", "delivered", ".1%"),
            ("latency_p50_ms", "p50 ms", ".1f"),
            ("latency_p99_ms", "p99 ms", ".1f"),
            ("cpu_us_per_event", "server CPU µs/event", ".1f"),
            ("write_floor_us", "write floor µs", ".1f"),
            ("cpu_x_floor", "× floor", ".1f"),
            ("peak_rss_mb", "server peak RSS MB", ".0f"),
            ("lg_limit", "load gen limit /s", ",.0f"),
        ],
        notes="load gen limit: events a second the subscriber processes received from "
        "a trivial local fan-out at the same N. write floor: CPU µs per write of "
        "that trivial fan-out writing one event per write (the kernel's loopback "
        "TCP cost plus the least Python), pinned like the server; × floor is rt's "
        "CPU per delivered event over it.",
    )
    chart(report.rows, report.path(".png"), quick)
    return report


def chart(rows: list[dict], path: Path, quick: bool) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ok = [r for r in rows if r["status"] == "ok"]
    colours = {"ws": "#3b75af", "sse": "#ef8636"}
    markers = {100: "o", 1000: "s", 5000: "^"}
    for transport in ("ws", "sse"):
        for n in sorted({r["n"] for r in ok}):
            cell = [r for r in ok if r["transport"] == transport and r["n"] == n]
            if not cell:
                continue
            xs = [r["rate"] for r in cell]
            label = f"{transport}, N={n}"
            kw = {"color": colours[transport], "marker": markers.get(n, "o"), "label": label}
            axes[0].plot(xs, [r["cpu_us_per_event"] or 0 for r in cell], **kw)
            axes[1].plot(xs, [(r["latency_p99_ms"] or 0) for r in cell], **kw)
            axes[2].plot(xs, [100 * (r["delivered_fraction"] or 0) for r in cell], **kw)
    axes[0].axhline(10, color="#c0392b", linestyle="--", label="target 10 µs")
    axes[1].axhline(100, color="#c0392b", linestyle="--", label="target 100 ms")
    titles = ("server CPU per delivered event (µs)", "end-to-end latency p99 (ms)", "delivered (%)")
    for ax, title in zip(axes, titles, strict=False):
        ax.set_xscale("log")
        ax.set_xlabel("publisher rate R (messages/s)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if any(r.get("latency_p99_ms") for r in ok):
        axes[1].set_yscale("log")
    axes[2].set_ylim(0, 105)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Fan-out: one publisher, N subscribers on one flow"
        + (" (--quick: meaningless)" if quick else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
