"""Round-trip latency of a post and its echo, against a raw TCP ping-pong floor.

A benchmark, not a test. Each row starts its own `rt serve` subprocess on
127.0.0.1 (the SQLite default in a temporary directory, or `--db :memory:`),
pinned to one core while this load generator runs pinned to another (when
the machine has two), and measures the time from sending a post to seeing
its echo on the stream:

- ws: the post goes over the WebSocket as an op; the echo comes back on it;
- sse: the post is an HTTP POST on a keep-alive connection; the echo comes
  on the SSE stream.

The floor is a raw TCP ping-pong between this process and an echo
subprocess, both on Trio, so the ratios compare like with like. Results go
to bench/results/latency-<time>.jsonl and a Markdown table on stdout.

    python bench/latency.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(65536)
    if not d: break
    c.sendall(d)
"""


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server cores, load generator cores): different ones when there are two or more."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def start(args: list[str], server_cores: set[int] | None) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)
    if server_cores:
        os.sched_setaffinity(proc.pid, server_cores)
    return proc


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6
    return {"p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99),
            "mean_us": statistics.fmean(ordered) * 1e6, "n": len(ordered)}


async def tcp_floor(rounds: int, server_cores: set[int] | None) -> list[float]:
    proc = start([sys.executable, "-c", ECHO_SERVER], server_cores)
    try:
        port = int(proc.stdout.readline())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = b'{"op":"ping","ref":"0123456789"}\n'
        samples = []
        async with stream:
            for i in range(rounds + 50):
                started = time.perf_counter()
                await stream.send_all(payload)
                got = b""
                while len(got) < len(payload):
                    got += await stream.receive_some(65536)
                if i >= 50:  # warm-up excluded
                    samples.append(time.perf_counter() - started)
        return samples
    finally:
        proc.kill()
        proc.wait()


class Rt:
    """`rt serve` as a subprocess, with one user and one flow."""

    def __init__(self, db: str, server_cores: set[int] | None) -> None:
        self.proc = start([sys.executable, "-m", "rt", "serve", "--port", "0", "--db", db,
                           "--user", "bench", "--flow", "bench", "--ops-rate", "1000000",
                           "--ops-burst", "1000000"], server_cores)
        self.token = ""
        for line in self.proc.stdout:
            if m := re.match(r"created user bench; token: (\S+)", line):
                self.token = m[1]
            if m := re.match(r"rt serving on (http://\S+)", line):
                self.url = m[1]
                break

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def ws_round_trips(rt: Rt, rounds: int) -> list[float]:
    client = "bench" + secrets.token_hex(8)
    url = rt.url.replace("http", "ws") + f"/stream/ws?flows=bench&client={client}"
    samples = []
    async with open_websocket_url(url, extra_headers=[("Authorization",
                                                       f"Bearer {rt.token}")]) as ws:
        await ws.get_message()  # ready
        for i in range(rounds + 50):
            uid = f"w{i:06d}{secrets.token_hex(4)}"
            started = time.perf_counter()
            await ws.send_message(json.dumps({"op": "post", "flow": "bench", "content": "x",
                                              "uuid": uid, "ref": uid}))
            while True:
                message = await ws.get_message()
                if '"type":"message"' in message and uid in message:
                    break
            if i >= 50:
                samples.append(time.perf_counter() - started)
    return samples


async def sse_round_trips(rt: Rt, rounds: int) -> list[float]:
    client = "bench" + secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {rt.token}"}
    samples = []
    async with httpx.AsyncClient(base_url=rt.url, headers=headers, timeout=30) as poster, \
            httpx.AsyncClient(base_url=rt.url, headers=headers, timeout=30) as reader:
        params = {"flows": "bench", "client": client}
        async with reader.stream("GET", "/stream/sse", params=params) as stream:
            lines = stream.aiter_lines()
            async for line in lines:
                if line.startswith("data:"):
                    break  # ready
            for i in range(rounds + 50):
                uid = f"s{i:06d}{secrets.token_hex(4)}"
                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(poster.post, "/flows/bench/messages",
                                               json={"content": "x", "uuid": uid}))
                    async for line in lines:
                        if line.startswith("data:") and uid in line:
                            break
                if i >= 50:
                    samples.append(time.perf_counter() - started)
    return samples


async def main(rounds: int) -> list[dict]:
    server_cores, load_cores = cores()
    if load_cores:
        os.sched_setaffinity(0, load_cores)
    rows = []
    floor = percentiles(await tcp_floor(rounds, server_cores))
    rows.append({"name": "raw TCP ping-pong (floor)", **floor})
    with tempfile.TemporaryDirectory() as tmp:
        for store, db in (("sqlite", str(Path(tmp) / "bench.db")), ("memory", ":memory:")):
            rt = Rt(db, server_cores)
            try:
                for transport, measure in (("ws", ws_round_trips), ("sse", sse_round_trips)):
                    stats = percentiles(await measure(rt, rounds))
                    rows.append({"name": f"{transport}, {store} store", **stats})
            finally:
                rt.stop()
    for row in rows:
        row["p50_x_floor"] = row["p50_us"] / floor["p50_us"]
        row["p99_x_floor"] = row["p99_us"] / floor["p99_us"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| round trip | p50 µs | p90 µs | p99 µs | p50 × floor | p99 × floor |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['p50_us']:.0f} | {r['p90_us']:.0f} | "
                     f"{r['p99_us']:.0f} | {r['p50_x_floor']:.1f} | {r['p99_x_floor']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 rounds: a smoke run")
    args = parser.parse_args()
    rounds = 200 if args.quick else args.rounds
    rows = trio.run(main, rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps({"bench": "latency", "rounds": rounds, **row}) + "\n")
    print(table(rows))
    print(f"\nresults: {out.relative_to(ROOT)}")
