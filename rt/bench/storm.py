"""`rt bench storm`: every client cut at once, all reconnect with resume while a publisher posts.

The server runs with `--chaos signal`: SIGUSR1 makes it
reset every open TCP connection (rt.web.hypercorn_guard.cut_all); nothing
over HTTP can. Clients (half WebSocket, half SSE, in several load-generator
processes) reconnect after a random 0-250 ms with `cursor` (the last stored
id they took) and `epoch` (from `ready`). A publisher thread keeps posting
over HTTP, retrying a post cut by the storm with the same uuid.

Reported: the time from the cut until every client has caught up (received,
on a connection opened after the cut, an event acked after the cut), and
lost and duplicated events over every client (expected: each acked id above
the client's first cursor, exactly once). Both must be 0.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from rt.bench import common
from rt.bench.common import HOST, IDS, READY, Report, Server

WORKERS = 3


def client_worker(port: int, token: str, n: int, conn) -> None:
    common.pin_load_generator()
    common.raise_nofile()
    trio.run(_clients, port, token, n, conn)


class Client:
    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.client = common.client_id()
        self.cursor: int | None = None
        self.epoch: str | None = None
        self.first_cursor: int | None = None
        self.ids: list[int] = []
        self.connections = 0
        self.after_cut: list[tuple[int, int]] = []  # (id, t ns) on connections after the cut
        self.ended = False


async def _clients(port, token, n, conn) -> None:
    clients = [Client("ws" if i % 2 == 0 else "sse") for i in range(n)]
    state: dict[str, Any] = {"cut_at": None, "ready": 0}
    limit = trio.Semaphore(64)

    async def run(c: Client, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while not c.ended:
            q = common.query(client=c.client, cursor=c.cursor, epoch=c.epoch)
            try:
                async with limit:
                    stream = await common.open_stream(port, token, c.transport, q, 30)
            except Exception:
                await trio.sleep(0.1 + random.random() * 0.2)
                continue
            c.connections += 1
            after_cut = state["cut_at"] is not None
            tail = b""
            try:
                while True:
                    data = await stream.receive()
                    if not data:
                        break
                    now = time.monotonic_ns()
                    if c.transport != "ws":
                        data = tail + data
                        cut = data.rfind(b"\n")
                        data, tail = data[: cut + 1], data[cut + 1 :]
                    if c.epoch is None or b'"ready"' in data:
                        m = READY.search(data)
                        if m:
                            c.epoch = m[2].decode()
                            if c.first_cursor is None:
                                c.first_cursor = int(m[1])
                                c.cursor = int(m[1])
                            if not started:
                                started = True
                                state["ready"] += 1
                                task_status.started()
                    for m in IDS.finditer(data):
                        i = int(m[1])
                        c.ids.append(i)
                        c.cursor = i
                        if after_cut:
                            c.after_cut.append((i, now))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if c.ended:
                break
            await trio.sleep(random.random() * 0.25)  # the storm, with a little jitter

    async with trio.open_nursery() as nursery:
        for c in clients:
            await nursery.start(run, c)
        conn.send(("ready", state["ready"]))
        message = await trio.to_thread.run_sync(conn.recv)  # ("cut", t)
        state["cut_at"] = message[1]
        _, acked, cut_id, cut_ns = await trio.to_thread.run_sync(conn.recv)
        last = acked[-1] if acked else 0
        with trio.move_on_after(90):
            while any((c.cursor or 0) < last for c in clients):
                await trio.sleep(0.05)
        for c in clients:
            c.ended = True
        nursery.cancel_scope.cancel()
    acked_set = set(acked)
    lost = dup = unexpected = 0
    catch_up = []
    stuck = 0
    never_cut = sum(1 for c in clients if c.connections == 1 and any(i > cut_id for i in c.ids))
    for c in clients:
        counts = Counter(c.ids)
        dup += sum(v - 1 for v in counts.values())
        expected = {i for i in acked_set if i > (c.first_cursor or 0)}
        lost += len(expected - counts.keys())
        unexpected += len(counts.keys() - acked_set)
        t = next((t for i, t in c.after_cut if i > cut_id), None)
        if t is None:
            stuck += 1
        else:
            catch_up.append((t - cut_ns) / 1e9)
    conn.send(
        (
            "done",
            lost,
            dup,
            unexpected,
            catch_up,
            stuck,
            sum(c.connections for c in clients),
            never_cut,
        )
    )


class Publisher(threading.Thread):
    """Posts over HTTP/1.1 at `rate` a second; a post cut by the storm is retried, same uuid."""

    def __init__(self, port: int, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.rate = port, token, rate
        self.acked: list[int] = []
        self.stop = threading.Event()
        self.retries = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        i = 0
        start = time.monotonic()
        while not self.stop.is_set():
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps({"content": f"storm {i}", "uuid": f"storm{i:08d}"})
            for _attempt in range(100):
                try:
                    conn.request(
                        "POST",
                        "/flows/bench/messages",
                        body,
                        {
                            "Authorization": f"Bearer {self.token}",
                            "Content-Type": "application/json",
                        },
                    )
                    r = conn.getresponse()
                    data = r.read()
                    if r.status in (200, 201):
                        self.acked.append(json.loads(data)["id"])
                        break
                except (OSError, http.client.HTTPException):
                    pass
                self.retries += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                time.sleep(0.05)
            i += 1
        conn.close()


def main(quick: bool, out: Path) -> Report:
    report = Report("storm", out, quick)
    n = 100 if quick else 2000
    # Every post goes to every client: keep deliveries (clients × rate) within what the
    # server can deliver, so the storm, not the steady load, is what is measured.
    rate = 10 if quick else 2
    before_cut, after_cut = (1.0, 2.0) if quick else (5.0, 15.0)
    workers = 2 if quick else WORKERS
    common.raise_nofile()
    ctx = common.spawn_context()
    with (
        common.deadline_guard(60 if quick else 600),
        common.progress() as progress,
        Server("sqlite", cut_signal=True) as server,
    ):
        task = progress.add_task(f"storm: connecting {n}", total=5)
        procs = []
        for share in common.split(n, workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=client_worker, args=(server.port, server.token, share, child), daemon=True
            )
            p.start()
            procs.append((p, parent))
        connected = 0
        for _, parent in procs:
            if not parent.poll(240):
                raise TimeoutError("clients did not connect")
            connected += parent.recv()[1]
        progress.advance(task)
        progress.update(task, description="storm: publishing")
        publisher = Publisher(server.port, server.token, rate)
        publisher.start()
        time.sleep(before_cut)
        progress.advance(task)
        progress.update(task, description=f"storm: cutting {n} at once")
        cut_id = publisher.acked[-1] if publisher.acked else 0
        cut_ns = time.monotonic_ns()
        server.signal(signal.SIGUSR1)
        for _, parent in procs:
            parent.send(("cut", cut_ns))
        time.sleep(after_cut)
        progress.advance(task)
        progress.update(task, description="storm: catching up")
        publisher.stop.set()
        publisher.join(30)
        acked = sorted(publisher.acked)
        for _, parent in procs:
            parent.send(("final", acked, cut_id, cut_ns))
        lost = dup = unexpected = stuck = connections = never_cut = 0
        catch_up: list[float] = []
        for p, parent in procs:
            if not parent.poll(180):
                raise TimeoutError("clients did not report")
            _, lo, du, un, cu, st, co, nc = parent.recv()
            never_cut += nc
            lost += lo
            dup += du
            unexpected += un
            catch_up += cu
            stuck += st
            connections += co
            p.join(10)
        progress.advance(task, 2)
    stats = common.percentiles(catch_up, scale=1e3, unit="ms")
    report.add(
        clients=n,
        connected=connected,
        publish_rate=rate,
        posted=len(acked),
        publisher_retries=publisher.retries,
        connections=connections,
        reconnected=connections - connected,
        not_caught_up=stuck,
        never_cut=never_cut,
        catch_up_p50_ms=stats["p50_ms"],
        catch_up_p99_ms=stats["p99_ms"],
        catch_up_all_ms=max(catch_up) * 1e3 if catch_up else None,
        lost=lost,
        duplicated=dup,
        unexpected=unexpected,
    )
    report.write(
        [
            ("clients", "clients", "d"),
            ("connected", "connected", "d"),
            ("reconnected", "reconnections", "d"),
            ("posted", "events posted", "d"),
            ("catch_up_p50_ms", "caught up p50 ms", ".0f"),
            ("catch_up_p99_ms", "caught up p99 ms", ".0f"),
            ("catch_up_all_ms", "every client caught up ms", ".0f"),
            ("not_caught_up", "not caught up", "d"),
            ("never_cut", "still on the old connection", "d"),
            ("lost", "lost", "d"),
            ("duplicated", "duplicated", "d"),
        ],
        notes="half the clients WebSocket, half SSE; caught up = received, on a "
        "connection opened after the cut, an event acked after the cut.",
    )
    chart(catch_up, report.rows[0], report.path(".png"), quick)
    return report


def chart(catch_up: list[float], row: dict, path: Path, quick: bool) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = sorted(t * 1e3 for t in catch_up)
    ys = [100 * (i + 1) / max(1, row["clients"]) for i in range(len(xs))]
    ax.plot(xs, ys, color="#3b75af", drawstyle="steps-post")
    ax.set_xlabel("ms since the cut")
    ax.set_ylabel("% of clients caught up")
    ax.set_ylim(0, 105)
    ax.set_title(
        f"Reconnection storm: {row['clients']:,} clients cut at once — "
        f"lost {row['lost']}, duplicated {row['duplicated']}" + (" (--quick)" if quick else "")
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
