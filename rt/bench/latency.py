"""`rt bench latency`: round trip of a post and its echo on each of the seven transports.

WebSocket posts go over the socket as ops; the six HTTP transports post by
HTTP POST on a keep-alive connection while the echo arrives on the stream of
that transport. Each store (SQLite in a temporary directory, and memory) gets
its own `rt serve`. A raw TCP ping-pong between this process and an echo
subprocess (pinned like the server) is the floor, measured in the same run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import trio

from rt.bench import common
from rt.bench.common import HOST, Http, Report, Server, percentiles

TRANSPORTS = ("ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp")
POLLING = ("poll", "jsonp")
LINGER_1MS = "sqlite, --poll-linger 0.001"
WARMUP = 50  # rounds excluded from the figures (10 with --quick)

ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(65536)
    if not d: break
    c.sendall(d)
"""

SCRIPT = re.compile(rb"<script>p\((\[.*?\])\);</script>", re.DOTALL)


def rounds_for(transport: str, quick: bool) -> int:
    if quick:
        return 20 if transport in POLLING else 100
    return 500 if transport in POLLING else 2000


async def tcp_floor(rounds: int, tick) -> list[float]:
    server_cores, _ = common.cores()
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    if server_cores:
        import os

        os.sched_setaffinity(proc.pid, server_cores)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        stream = await trio.open_tcp_stream(HOST, port)
        payload = b'{"op":"ping","ref":"0123456789"}\n'
        samples = []
        async with stream:
            for i in range(rounds + WARMUP):
                started = time.perf_counter()
                await stream.send_all(payload)
                got = 0
                while got < len(payload):
                    got += len(await stream.receive_some(65536))
                if i >= WARMUP:
                    samples.append(time.perf_counter() - started)
                    tick()
        return samples
    finally:
        proc.kill()
        proc.wait()


def _htmlfile_has(buf: bytearray, uid: str) -> bool:
    """Parse every complete `<script>p([...]);</script>` chunk; True if one holds `uid`."""
    found = False
    end = 0
    for m in SCRIPT.finditer(buf):
        end = m.end()
        for obj in json.loads(m[1]):
            if obj.get("uuid") == uid:
                found = True
    if end:
        del buf[:end]
    return found


async def _open_ready(server: Server, transport: str) -> common.Stream:
    q = common.query(callback="rtcb" if transport == "htmlfile" else None)
    stream = await common.open_stream(server.port, server.token, transport, q)
    buf = bytearray()
    with trio.fail_after(10):
        while b'"ready"' not in buf:  # the ready object
            data = await stream.receive()
            if not data:
                raise EOFError(f"{transport} stream ended before ready")
            buf += data
    return stream


async def streaming_round_trips(
    server: Server, transport: str, rounds: int, tick, notes: dict
) -> list[float]:
    """Round trips on one stream; a rotated stream (xhr, multipart, htmlfile end after
    --rotate-bytes) is reopened, and a round cut by it or slower than 10 s is not counted."""
    stream = await _open_ready(server, transport)
    poster = Http(server.port, server.token)
    samples = []
    buf = bytearray()
    try:
        for i in range(rounds + WARMUP):
            uid = common.uuid()
            needle = uid.encode()
            ok = False
            with trio.move_on_after(10) as timer:
                started = time.perf_counter()
                if transport == "ws":
                    await stream.send_text(
                        json.dumps(
                            {"op": "post", "flow": "bench", "content": "x", "uuid": uid, "ref": uid}
                        ).encode()
                    )
                else:
                    if poster.stream is None:
                        await poster.connect()
                    body = json.dumps({"content": "x", "uuid": uid}).encode()
                    await poster.conn.send_all(
                        (
                            f"POST /flows/bench/messages HTTP/1.1\r\nHost: {HOST}\r\n"
                            f"Authorization: Bearer {server.token}\r\n"
                            f"Content-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n"
                        ).encode()
                        + body
                    )
                while True:
                    data = await stream.receive()
                    if not data:
                        break  # rotated: this round does not count
                    if transport == "htmlfile":
                        buf += data
                        if _htmlfile_has(buf, uid):
                            ok = True
                            break
                    elif transport == "ws":
                        if needle in data and b'"type":"message"' in data:
                            ok = True
                            break
                    else:
                        buf += data
                        if needle in buf:
                            buf.clear()
                            ok = True
                            break
                        del buf[:-64]
                elapsed = time.perf_counter() - started
                if transport != "ws":
                    await _read_response(poster)
            if timer.cancelled_caught:
                notes["timeouts"] = notes.get("timeouts", 0) + 1
                await poster.aclose()
            if not ok:
                notes["reopened"] = notes.get("reopened", 0) + 1
                await stream.aclose()
                buf.clear()
                stream = await _open_ready(server, transport)
                continue
            if i >= WARMUP:
                samples.append(elapsed)
                tick()
    finally:
        await stream.aclose()
        await poster.aclose()
    return samples


async def _read_response(http: Http) -> None:
    head = await common.read_head(http.conn, http.buf)
    status = int(head[9:12])
    if status not in (200, 201):
        raise RuntimeError(f"post answered {head[:100]!r}")
    length = int(_match(rb"(?i)content-length: *(\d+)", head)[1])
    while len(http.buf) < length:
        http.buf += await http.conn.receive_some(65536)
    del http.buf[:length]


def _match(pattern: bytes, data: bytes) -> re.Match[bytes]:
    m = re.search(pattern, data)
    if m is None:
        raise RuntimeError(f"no {pattern!r} in {data[:100]!r}")
    return m


def _poll_answer(transport: str, body: bytes) -> list[dict]:
    if transport == "jsonp":
        m = re.fullmatch(rb"/\*\*/rtcb\((\[.*\])\);", body, re.DOTALL)
        assert m is not None, body[:100]
        body = m[1]
    return json.loads(body)


async def polling_round_trips(
    server: Server, transport: str, rounds: int, tick, notes: dict
) -> list[float]:
    client = common.client_id()
    extra = "&callback=rtcb" if transport == "jsonp" else ""
    poller = Http(server.port, server.token)
    poster = Http(server.port, server.token)
    target = f"/stream/{transport}?flows=bench&client={client}{extra}"
    status, body = await poller.request("GET", target)
    ready = _poll_answer(transport, body)[0]
    cursor, epoch = ready["cursor"], ready["epoch"]
    samples = []
    try:
        await poster.connect()
        for i in range(rounds + WARMUP):
            uid = common.uuid()
            started = time.perf_counter()
            await poller.conn.send_all(
                f"GET {target}&cursor={cursor}&epoch={epoch} HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: Bearer {server.token}\r\n\r\n".encode()
            )
            body = json.dumps({"content": "x", "uuid": uid}).encode()
            await poster.conn.send_all(
                (
                    f"POST /flows/bench/messages HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Authorization: Bearer {server.token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            first = True
            for _poll in range(50):  # bounded: each poll answers within --poll-timeout
                if not first:
                    await poller.conn.send_all(
                        f"GET {target}&cursor={cursor}&epoch={epoch} HTTP/1.1\r\nHost: {HOST}\r\n"
                        f"Authorization: Bearer {server.token}\r\n\r\n".encode()
                    )
                first = False
                await _read_poll(poller)
                objects = _poll_answer(transport, poller.last)
                done = False
                for obj in objects:
                    if isinstance(obj.get("id"), int):
                        cursor = obj["id"]
                    if obj.get("uuid") == uid:
                        done = True
                if done:
                    break
            else:
                raise RuntimeError(f"{transport}: no echo after 50 polls")
            elapsed = time.perf_counter() - started
            await _read_response(poster)
            if i >= WARMUP:
                samples.append(elapsed)
                tick()
    finally:
        await poller.aclose()
        await poster.aclose()
    return samples


async def _read_poll(http: Http) -> None:
    head = await common.read_head(http.conn, http.buf, 60)
    if int(head[9:12]) != 200:
        raise RuntimeError(f"poll answered {head[:100]!r}")
    length = int(_match(rb"(?i)content-length: *(\d+)", head)[1])
    while len(http.buf) < length:
        http.buf += await http.conn.receive_some(65536)
    http.last = bytes(http.buf[:length])
    del http.buf[:length]


async def measure(quick: bool, progress) -> list[dict]:
    global WARMUP
    WARMUP = 10 if quick else 50
    common.pin_load_generator()
    floor_rounds = 100 if quick else 2000
    total = (
        floor_rounds
        + 2 * sum(rounds_for(t, quick) for t in TRANSPORTS)
        + sum(rounds_for(t, quick) for t in POLLING)
    )
    task = progress.add_task("latency", total=total)

    def tick() -> None:
        progress.advance(task)

    rows = []
    progress.update(task, description="latency: TCP floor")
    floor = percentiles(await tcp_floor(floor_rounds, tick))
    rows.append({"transport": "tcp floor", "store": "–", **floor})
    for store in ("sqlite", "memory"):
        with Server(store) as server:
            for transport in TRANSPORTS:
                progress.update(task, description=f"latency: {transport}, {store}")
                rounds = rounds_for(transport, quick)
                measure_one = polling_round_trips if transport in POLLING else streaming_round_trips
                notes: dict = {}
                before = server.metrics()
                with trio.fail_after(300):
                    stats = percentiles(await measure_one(server, transport, rounds, tick, notes))
                rows.append(
                    {
                        "transport": transport,
                        "store": store,
                        **stats,
                        **common.loop_and_writer(before, server.metrics()),
                        "timeouts": notes.get("timeouts", 0),
                        "reopened": notes.get("reopened", 0),
                    }
                )
    # The polling transports once more without the protocol's gathering wait
    # (--poll-linger, 20 ms by default, which a lone event waits out in full; the
    # flag must be > 0, so 1 ms):
    # what the transport itself costs.
    with Server("sqlite", "--poll-linger", "0.001") as server:
        for transport in POLLING:
            progress.update(task, description=f"latency: {transport}, sqlite, linger 1 ms")
            with trio.fail_after(300):
                stats = percentiles(
                    await polling_round_trips(
                        server, transport, rounds_for(transport, quick), tick, {}
                    )
                )
            rows.append({"transport": transport, "store": LINGER_1MS, **stats})
    for row in rows:
        row["p50_x_floor"] = row["p50_us"] / floor["p50_us"]
        row["p99_x_floor"] = row["p99_us"] / floor["p99_us"]
    return rows


def chart(rows: list[dict], path: Path, quick: bool) -> None:
    plt = common.pyplot()
    floor = rows[0]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.38
    xs = list(range(len(TRANSPORTS)))
    colours = {"sqlite": "#3b75af", "memory": "#ef8636"}
    for k, store in enumerate(("sqlite", "memory")):
        by = {r["transport"]: r for r in rows if r["store"] == store}
        p50 = [by[t]["p50_us"] / 1000 for t in TRANSPORTS]
        p99 = [by[t]["p99_us"] / 1000 for t in TRANSPORTS]
        pos = [x + (k - 0.5) * width for x in xs]
        ax.bar(
            pos,
            p50,
            width,
            label=f"p50, {store} store (whisker: p99)",
            color=colours[store],
            yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=False)]],
            capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#555"},
        )
        for x, v in zip(pos, p50, strict=False):
            ax.text(
                x,
                v / 1.15,
                f"{v:.2f}" if v < 10 else f"{v:.0f}",
                ha="center",
                va="top",
                fontsize=8,
                color="white",
                fontweight="bold",
            )
    f50, f99 = floor["p50_us"] / 1000, floor["p99_us"] / 1000
    ax.bar(
        [-1],
        [f50],
        width * 1.4,
        color="#c0392b",
        yerr=[[0], [f99 - f50]],
        capsize=3,
        label="raw TCP ping-pong (the floor)",
        error_kw={"elinewidth": 1, "ecolor": "#555"},
    )
    ax.text(-1, f50 * 1.1, f"{floor['p50_us']:.0f} µs", ha="center", va="bottom", fontsize=8)
    ax.axhline(f50, color="#c0392b", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(
        [-1, *xs],
        [
            "TCP floor",
            *[
                f"{t}\n×{next(r['p50_x_floor'] for r in rows if r['transport'] == t and r['store'] == 'sqlite'):.1f} floor"
                for t in TRANSPORTS
            ],
        ],
    )
    ax.set_ylabel("round trip, ms (log scale); × floor: SQLite p50")
    title = "Round-trip latency: post → echo, per transport"
    ax.set_title(title + (" (--quick: meaningless)" if quick else ""))
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool, out: Path) -> Report:
    report = Report("latency", out, quick)
    with common.deadline_guard(60 if quick else 900), common.progress() as progress:
        rows = trio.run(measure, quick, progress)
    report.rows = rows
    report.write(
        [
            ("transport", "transport", ""),
            ("store", "store", ""),
            ("n", "n", "d"),
            ("p50_us", "p50 µs", ".0f"),
            ("p90_us", "p90 µs", ".0f"),
            ("p99_us", "p99 µs", ".0f"),
            ("p50_x_floor", "p50 × floor", ".1f"),
            ("p99_x_floor", "p99 × floor", ".1f"),
            ("stall_p999_ms", "loop stall p99.9 ms", ".2f"),
            ("stall_max_ms", "longest loop stall ms", ".2f"),
        ],
        notes="ws posts over the socket; the other transports post by HTTP POST "
        "and see the echo on their stream. A loop stall is the server's event loop "
        "running without a look at the network (rt/service/loop_stalls.py); both "
        "figures are bucket upper bounds, the longest exact when it was a record.",
    )
    chart(rows, report.path(".png"), quick)
    return report
