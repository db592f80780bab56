"""`rt bench ingest`: acknowledged posts a second, over WebSocket and over HTTP.

Concurrent clients in load-generator processes each post in a closed loop
(send, wait for the ack, send the next): WebSocket `post` ops answered by
`ack` (the stream follows another flow, so echoes do not count), or HTTP POST
on keep-alive connections answered 201. Against the SQLite store (durability
on: an ack means committed) and the memory store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from rt.bench import common
from rt.bench.common import Http, Report, Server

WORKERS = 2
CLIENTS = 32


def ingest_worker(
    port: int, token: str, transport: str, clients: int, start_at: float, seconds: float, conn
) -> None:
    common.pin_load_generator()
    conn.send(trio.run(_ingest, port, token, transport, clients, start_at, seconds))


async def _ingest(port, token, transport, clients, start_at, seconds):
    acked = [0]
    lat: list[float] = []
    errors = [0]
    begin = trio.current_time() + start_at - time.monotonic()
    end = begin + seconds

    async def ws_client() -> None:
        stream = await common.open_stream(port, token, "ws", common.query(flows="pub"))
        buf = b""
        while b'"ready"' not in buf:
            buf += await stream.receive()
        await trio.sleep_until(begin)
        i = 0
        while trio.current_time() < end:
            uid = common.uuid()
            t0 = time.perf_counter()
            await stream.send_text(
                json.dumps(
                    {"op": "post", "flow": "bench", "content": "x", "uuid": uid, "ref": uid}
                ).encode()
            )
            while True:
                data = await stream.receive()
                if not data:
                    errors[0] += 1
                    return
                if b'"ack"' in data and uid.encode() in data:
                    break
                if b'"error"' in data and uid.encode() in data:
                    errors[0] += 1
                    break
            lat.append(time.perf_counter() - t0)
            acked[0] += 1
            i += 1
        await stream.aclose()

    async def http_client() -> None:
        http = Http(port, token)
        await http.connect()
        await trio.sleep_until(begin)
        while trio.current_time() < end:
            t0 = time.perf_counter()
            status, _ = await http.post("x", common.uuid())
            if status in (200, 201):
                acked[0] += 1
                lat.append(time.perf_counter() - t0)
            else:
                errors[0] += 1
        await http.aclose()

    with trio.move_on_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(ws_client if transport == "ws" else http_client)
    return acked[0], lat, errors[0]


def run_cell(server: Server, transport: str, seconds: float, clients: int) -> dict:
    ctx = common.spawn_context()
    start_at = time.monotonic() + 2.0  # time for the workers to start and connect
    pipes = []
    for share in common.split(clients, WORKERS):
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=ingest_worker,
            args=(server.port, server.token, transport, share, start_at, seconds, child),
            daemon=True,
        )
        p.start()
        pipes.append((p, parent))
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = server.metrics()
    cpu0 = server.cpu_seconds()
    acked, lat, errors = 0, [], 0
    for p, parent in pipes:
        if not parent.poll(seconds + 90):
            raise TimeoutError("an ingest worker did not report")
        a, la, e = parent.recv()
        acked += a
        lat += la
        errors += e
        p.join(10)
    cpu = server.cpu_seconds() - cpu0
    loop = common.loop_and_writer(before, server.metrics())
    stats = common.percentiles(lat, scale=1e3, unit="ms")
    return {
        "transport": transport,
        "store": server.store,
        "clients": clients,
        "acked": acked,
        "errors": errors,
        "posts_per_s": acked / seconds,
        "ack_p50_ms": stats["p50_ms"],
        "ack_p99_ms": stats["p99_ms"],
        "cpu_us_per_post": cpu / acked * 1e6 if acked else None,
        **loop,
    }


def main(quick: bool, out: Path) -> Report:
    report = Report("ingest", out, quick)
    seconds = 1.5 if quick else 10.0
    clients = 8 if quick else CLIENTS
    with common.deadline_guard(60 if quick else 600), common.progress() as progress:
        task = progress.add_task("ingest", total=4)
        for store in ("sqlite", "memory"):
            with Server(store) as server:
                for transport in ("ws", "http"):
                    progress.update(task, description=f"ingest: {transport}, {store}")
                    report.rows.append(run_cell(server, transport, seconds, clients))
                    progress.advance(task)
    report.write(
        [
            ("transport", "transport", ""),
            ("store", "store", ""),
            ("clients", "clients", "d"),
            ("posts_per_s", "acked posts /s", ",.0f"),
            ("ack_p50_ms", "ack p50 ms", ".1f"),
            ("ack_p99_ms", "ack p99 ms", ".1f"),
            ("cpu_us_per_post", "server CPU µs/post", ".0f"),
            ("batch_mean", "ops per commit, mean", ".1f"),
            ("batch_p99", "ops per commit, p99 ≤", ".0f"),
            ("stall_p999_ms", "loop stall p99.9 ms ≤", ".2f"),
            ("stall_max_ms", "longest loop stall ms", ".2f"),
            ("hold_p999_ms", "store held the loop p99.9 ms ≤", ".2f"),
            ("hold_max_ms", "store held the loop, longest ms", ".2f"),
            ("errors", "errors", "d"),
        ],
        notes="closed loop: each client waits for its ack before its next post. "
        "Ops per commit: the writer's batches (one commit each). A loop stall is the "
        "server's event loop running without a look at the network "
        "(rt/service/loop_stalls.py); the store's hold is the time one batch applied "
        "on the loop's thread took (SQLite's inline commits, the memory store). Bucket "
        "upper bounds, the longest exact when it was a record since the server started.",
    )
    chart(report.rows, report.path(".png"), quick)
    return report


def chart(rows: list[dict], path: Path, quick: bool) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for k, store in enumerate(("sqlite", "memory")):
        by = {r["transport"]: r for r in rows if r["store"] == store}
        xs = [i + (k - 0.5) * width for i in range(2)]
        vals = [by[t]["posts_per_s"] for t in ("ws", "http")]
        bars = ax.bar(xs, vals, width, label=f"{store} store", color=["#3b75af", "#ef8636"][k])
        for b, v in zip(bars, vals, strict=False):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom")
    ax.set_xticks([0, 1], ["WebSocket post ops", "HTTP POST"])
    ax.set_ylabel("acknowledged posts a second")
    ax.set_title("Ingest" + (" (--quick: meaningless)" if quick else ""))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
