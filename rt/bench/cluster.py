"""`rt bench cluster`: fan-out through one and two `rt serve --redis` nodes, and
ingest with a few milliseconds between a node and Redis (issue 13).

Fan-out: one redis-server (AOF on, `appendfsync everysec`: what `rt serve
--redis` requires for `--sync normal`), 1 or 2 nodes on it, N WebSocket
subscribers split evenly over the nodes (rt bench fanout's subscriber
workers, one pool per node) and fanout's publisher posting R messages a
second to node 0. Per node: its CPU (utime+stime from /proc) over the events
its own connections received. For Redis: its CPU over the messages posted,
and the commands it processed per post (`INFO stats`, every command of every
node, background ones included). Latency is end to end, the publisher's send
to a subscriber's receipt, on one clock. The 1-node cell of the same run is
the baseline: 2-node figures are quoted as ratios to it. A standalone `rt
serve` (SQLite, no Redis) at the same N and R is measured once too, for what
being a node costs at all. Rounds alternate 1, 2 then 2, 1 nodes, so a drift
of the machine does not favour one side.

Ingest: one node, closed-loop WebSocket clients (rt bench ingest's), with
Redis direct, through the race lab's fault proxy (rt/chaos/proxy.py) with
no fault, and through it with a `latency` fault of DELAY_MS each way. Next to
each, the round trip to Redis measured with PING over the same path, and the
serialised bound 1 / round trip: what a node that waited for each Redis
reply before sending its next request could ack in a second.

Two cores: the servers (nodes and redis-server) on core 0, the load
generators (subscribers, publisher, ingest clients, and the proxy, which
plays the network) on core 1. See NOTE: this shows per-event costs and that
delivery stays exact, never a speed-up from a second node.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from rt.bench import common, fanout, ingest
from rt.bench.common import HOST, Report, Server
from rt.cluster import ClusterError
from rt.cluster.processes import find_redis_server, free_port, redis_server_args

DELAY_MS = 2.0  # each way, between the node and Redis, in the ingest cell
SUBSCRIBER_PROCESSES = 4  # split over the nodes: the same load-generator layout for 1 and 2

NOTE = (
    "What two cores can and cannot show: both nodes and redis-server share core 0 "
    "(the load generators and the proxy share core 1), so a second node adds no CPU: "
    "this measures no speed-up and no throughput scaling. Two nodes on one core can only "
    "cost more than one in total (each node reads every post from Redis and frames it for "
    "its own subscribers), and once core 0 is busy every process on it waits for the "
    "others, so the 2-node latency is an upper bound of what two machines would see. What "
    "it does show: the CPU a node spends per event it delivers (on a machine with a core "
    "per node, what bounds each node's deliveries a second), what Redis spends per post "
    "(the shared part, which does not grow with the subscribers), and that delivery stays "
    "exact (every subscriber on every node gets every post). The network is loopback: the "
    "ingest cell's proxy adds the latency of a few ms to Redis, not its bandwidth, loss or "
    "jitter."
)


# -- redis-server, synchronously (the benches drive processes from plain Python) -------------


class RedisServer:
    """A redis-server on a free loopback port, AOF in `data`, pinned like `rt serve`."""

    def __init__(self, data: Path) -> None:
        binary = find_redis_server()
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        with open(data / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                redis_server_args(binary, self.port, data),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server_cores, _ = common.cores()
        if server_cores:
            os.sched_setaffinity(self.proc.pid, server_cores)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise ClusterError(f"{binary} exited at start; see {data / 'redis.log'}")
            try:
                ping_rtt(self.port, 1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ClusterError(f"{binary} did not answer within 10 s") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        return common.proc_cpu_seconds(self.proc.pid)

    def commands(self) -> int:
        """Commands processed since it started (INFO stats), this INFO included."""
        return int(redis_info(self.port)["total_commands_processed"])

    def command_calls(self) -> dict[str, int]:
        """Calls per command since it started (INFO commandstats)."""
        calls = {}
        for key, value in redis_info(self.port, "commandstats").items():
            fields = dict(item.split("=", 1) for item in value.split(","))
            calls[key.removeprefix("cmdstat_")] = int(fields["calls"])
        return calls

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        buf += data
    return buf


def redis_info(port: int, section: str = "stats") -> dict[str, str]:
    """`INFO section` as a dict, over a raw socket (inline command, bulk string reply)."""
    with _connect(port) as sock:
        sock.sendall(b"INFO %s\r\n" % section.encode())
        buf = _read_until(sock, b"", b"\r\n")
        head, rest = buf.split(b"\r\n", 1)
        length = int(head[1:])
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            rest += data
    pairs = (line.split(":", 1) for line in rest[:length].decode().splitlines() if ":" in line)
    return {k: v for k, v in pairs}


def ping_rtt(port: int, count: int = 50) -> float:
    """Median seconds of `count` PINGs, one at a time, on one connection to `port`."""
    samples = []
    with _connect(port) as sock:
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(b"PING\r\n")
            _read_until(sock, b"", b"\r\n")
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# -- the network between a node and Redis: the race lab's fault proxy -------------------------


def proxy_worker(upstream_port: int, delay_ms: float, conn) -> None:
    common.pin_load_generator()
    trio.run(_proxy_main, upstream_port, delay_ms, conn)


async def _proxy_main(upstream_port: int, delay_ms: float, conn) -> None:
    from rt.chaos.proxy import open_proxy

    async with open_proxy((HOST, upstream_port), [("redis", HOST, 0)]) as proxy:
        if delay_ms:
            # scope=all, dir=both: every connection, now and later, each way.
            proxy.start_spec(f"latency:delay={delay_ms:g}ms:jitter=0:for=1h", seed=1)
        conn.send(proxy.addresses["redis"][1])
        await trio.to_thread.run_sync(conn.recv)  # until the parent says stop


class Proxy:
    """The fault proxy in a process of its own, on the load generators' core."""

    def __init__(self, upstream_port: int, delay_ms: float) -> None:
        ctx = common.spawn_context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=proxy_worker, args=(upstream_port, delay_ms, child), daemon=True
        )
        self.proc.start()
        if not self.conn.poll(30):
            self.stop()
            raise TimeoutError("the fault proxy did not start within 30 s")
        self.port: int = self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- fan-out ------------------------------------------------------------------------------------


def start_nodes(count: int, redis_url: str) -> list[Server]:
    """`count` nodes on one Redis; the first makes user `bench` and the flows."""
    nodes: list[Server] = []
    try:
        for _ in range(count):
            nodes.append(Server("memory", "--redis", redis_url))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def phase(pools: list[fanout.Pool], start_at: float, end_at: float) -> list[tuple[int, list]]:
    """fanout.Pool.phase over several pools at once: (count, latencies) per pool."""
    for pool in pools:
        for _, parent in pool.workers:
            parent.send(("phase", start_at, end_at))
    results = []
    for pool in pools:
        count, lat = 0, []
        for _, parent in pool.workers:
            if not parent.poll(end_at - time.monotonic() + 60):
                raise TimeoutError("a subscriber worker did not report")
            _, c, samples, _ = parent.recv()
            count += c
            lat.extend(samples)
        results.append((count, lat))
    return results


def fanout_cell(
    nodes: list[Server],
    pools: list[fanout.Pool],
    redis: RedisServer | None,
    token: str,
    rate: float,
    seconds: float,
    grace: float,
) -> dict[str, Any]:
    ctx = common.spawn_context()
    parent, child = ctx.Pipe()
    publisher = ctx.Process(
        target=fanout.publisher_worker,
        args=(nodes[0].port, token, rate, seconds, child),
        daemon=True,
    )
    publisher.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise TimeoutError("the publisher did not connect")
        cpu0 = [node.cpu_seconds() for node in nodes]
        redis_cpu0 = redis.cpu_seconds() if redis else 0.0
        commands0 = redis.commands() if redis else 0
        start_at = time.monotonic() + 0.2
        end_at = start_at + seconds + grace
        parent.send(start_at)
        results = phase(pools, start_at, end_at)
        publisher.join(30)
        sent = parent.recv() if parent.poll(5) else 0
        cpu = [node.cpu_seconds() - c0 for node, c0 in zip(nodes, cpu0, strict=True)]
        redis_cpu = redis.cpu_seconds() - redis_cpu0 if redis else None
        commands = redis.commands() - commands0 - 1 if redis else None
    finally:
        if publisher.is_alive():
            publisher.kill()
            publisher.join(5)
    delivered = [count for count, _ in results]
    connected = [pool.connected for pool in pools]
    lat_all = [x / 1e9 for _, lat in results for x in lat]
    stats = common.percentiles(lat_all, scale=1e3, unit="ms")
    per_node_p99 = [
        common.percentiles([x / 1e9 for x in lat], 1e3, "ms")["p99_ms"] for _, lat in results
    ]
    total = sum(delivered)
    expected = sent * sum(connected)
    node_cpu_us = [c / d * 1e6 if d else None for c, d in zip(cpu, delivered, strict=True)]
    known = [x for x in node_cpu_us if x is not None]
    return {
        "sent": sent,
        "connected": connected,
        "delivered": delivered,
        "delivered_fraction": total / expected if expected else None,
        "node_delivered_fraction": [
            d / (sent * n) if sent * n else None for d, n in zip(delivered, connected, strict=True)
        ],
        "latency_p50_ms": stats["p50_ms"],
        "latency_p99_ms": stats["p99_ms"],
        "node_latency_p99_ms": per_node_p99,
        "node_cpu_s": cpu,
        "node_cpu_us_per_event": node_cpu_us,
        "mean_node_cpu_us_per_event": (
            statistics.fmean(known) if len(known) == len(node_cpu_us) else None
        ),
        "redis_cpu_s": redis_cpu,
        "redis_cpu_us_per_post": redis_cpu / sent * 1e6 if redis_cpu is not None and sent else None,
        "redis_commands_per_post": commands / sent if commands is not None and sent else None,
        "all_cpu_us_per_event": (sum(cpu) + (redis_cpu or 0.0)) / total * 1e6 if total else None,
    }


def fanout_setup(
    label: str,
    n: int,
    rates: tuple[int, ...],
    seconds: float,
    grace: float,
    round_: int,
    tmp: Path,
    progress,
    task,
) -> list[dict[str, Any]]:
    """Start the servers of one setup (`standalone`, `1 node`, `2 nodes`), connect N
    subscribers, run one cell per rate; stop everything."""
    rows = []
    count = 2 if label == "2 nodes" else 1
    redis: RedisServer | None = None
    nodes: list[Server] = []
    pools: list[fanout.Pool] = []
    try:
        if label == "standalone":
            nodes = [Server("sqlite")]
        else:
            redis = RedisServer(tmp / f"redis-{label.replace(' ', '')}-r{round_}-n{n}")
            nodes = start_nodes(count, redis.url)
        token = nodes[0].token
        fanout.WORKERS = max(1, SUBSCRIBER_PROCESSES // count)
        progress.update(task, description=f"cluster: {label}, connecting {n}")
        for node, share in zip(nodes, common.split(n, count), strict=True):
            pools.append(fanout.Pool(node.port, token, "ws", share))
        for rate in rates:
            progress.update(task, description=f"cluster: {label}, N={n} R={rate}")
            row = fanout_cell(nodes, pools, redis, token, rate, seconds, grace)
            rows.append(
                {
                    "kind": "fanout",
                    "setup": label,
                    "store": "sqlite" if label == "standalone" else "redis",
                    "nodes": count,
                    "round": round_,
                    "n": n,
                    "rate": rate,
                    "seconds": seconds,
                    **row,
                }
            )
            progress.advance(task)
    finally:
        for pool in pools:
            pool.close()
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.stop()
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's figures over the 1-node row of the same round, N and R."""
    base = {(r["round"], r["n"], r["rate"]): r for r in rows if r["setup"] == "1 node"}
    for row in rows:
        b = base.get((row["round"], row["n"], row["rate"]))
        for key in (
            "mean_node_cpu_us_per_event",
            "all_cpu_us_per_event",
            "redis_cpu_us_per_post",
            "latency_p99_ms",
        ):
            ratio = None
            if b is not None and row.get(key) is not None and b.get(key):
                ratio = row[key] / b[key]
            row[f"{key}_x1"] = ratio
        row["node_cpu_text"] = " / ".join(
            f"{x:.1f}" if x is not None else "–" for x in row["node_cpu_us_per_event"]
        )
        row["delivered_text"] = " / ".join(
            f"{x:.1%}" if x is not None else "–" for x in row["node_delivered_fraction"]
        )


# -- ingest through a few ms of network ----------------------------------------------------


# (label, through the proxy, delay each way in ms, clients: 0 for ingest's default);
# the last asks whether more posts in flight buy back what the latency took.
INGEST_PATHS = (
    ("direct", False, 0.0, 0),
    ("proxy, no delay", True, 0.0, 0),
    (f"proxy, {DELAY_MS:g} ms each way", True, DELAY_MS, 0),
    (f"proxy, {DELAY_MS:g} ms each way", True, DELAY_MS, 4 * ingest.CLIENTS),
)


def ingest_path(
    label: str, via_proxy: bool, delay_ms: float, seconds: float, clients: int, data: Path
) -> dict[str, Any]:
    with RedisServer(data) as redis:
        proxy = Proxy(redis.port, delay_ms) if via_proxy else None
        try:
            port = proxy.port if proxy is not None else redis.port
            rtt = ping_rtt(port)
            with Server("memory", "--redis", f"redis://{HOST}:{port}/0") as node:
                node.store = label
                redis_cpu0, commands0 = redis.cpu_seconds(), redis.commands()
                calls0 = redis.command_calls()
                proxy_cpu0 = common.proc_cpu_seconds(proxy.proc.pid) if proxy else 0.0
                row = ingest.run_cell(node, "ws", seconds, clients)
                redis_cpu = redis.cpu_seconds() - redis_cpu0
                calls = redis.command_calls()
                commands = redis.commands() - commands0 - 3  # less the three INFOs
                proxy_cpu = common.proc_cpu_seconds(proxy.proc.pid) - proxy_cpu0 if proxy else None
        finally:
            if proxy is not None:
                proxy.stop()
    acked = row["acked"]
    bound = 1.0 / rtt
    per_post = {
        name: (count - calls0.get(name, 0)) / acked
        for name, count in calls.items()
        if acked and name != "info" and count > calls0.get(name, 0)
    }
    return {
        "kind": "ingest",
        "path": label,
        "delay_ms_each_way": delay_ms,
        "seconds": seconds,
        **row,
        "redis_rtt_ms": rtt * 1e3,
        "serialised_bound_per_s": bound,
        "x_bound": row["posts_per_s"] / bound,
        # how many round trips to Redis an ack waits, at the median (with a delay only)
        "ack_p50_rtts": row["ack_p50_ms"] / (rtt * 1e3) if delay_ms and row["ack_p50_ms"] else None,
        "redis_cpu_us_per_post": redis_cpu / acked * 1e6 if acked else None,
        "redis_commands_per_post": commands / acked if acked else None,
        "redis_calls_per_post": dict(sorted(per_post.items(), key=lambda kv: -kv[1])),
        "proxy_cpu_us_per_post": proxy_cpu / acked * 1e6
        if proxy_cpu is not None and acked
        else None,
    }


def add_ingest_ratios(rows: list[dict[str, Any]]) -> None:
    direct = next((r for r in rows if r["path"] == "direct"), None)  # ingest.CLIENTS of them
    for row in rows:
        row["x_direct"] = row["posts_per_s"] / direct["posts_per_s"] if direct else None


# -- the run --------------------------------------------------------------------------------


FANOUT_COLUMNS = [
    ("round", "round", "d"),
    ("setup", "setup", ""),
    ("n", "N", "d"),
    ("rate", "R /s", "d"),
    ("delivered_fraction", "delivered", ".1%"),
    ("delivered_text", "per node", ""),
    ("latency_p50_ms", "p50 ms", ".1f"),
    ("latency_p99_ms", "p99 ms", ".1f"),
    ("latency_p99_ms_x1", "p99 × 1 node", ".2f"),
    ("node_cpu_text", "node CPU µs/event (per node)", ""),
    ("mean_node_cpu_us_per_event_x1", "× 1 node", ".2f"),
    ("redis_cpu_us_per_post", "Redis CPU µs/post", ".0f"),
    ("redis_commands_per_post", "Redis cmds/post", ".1f"),
    ("all_cpu_us_per_event", "all CPU µs/event", ".1f"),
    ("all_cpu_us_per_event_x1", "× 1 node", ".2f"),
]

INGEST_COLUMNS = [
    ("path", "node to Redis", ""),
    ("clients", "clients", "d"),
    ("posts_per_s", "acked posts /s", ",.0f"),
    ("x_direct", "× direct", ".2f"),
    ("ack_p50_ms", "ack p50 ms", ".1f"),
    ("ack_p99_ms", "ack p99 ms", ".1f"),
    ("redis_rtt_ms", "Redis PING RTT ms", ".2f"),
    ("ack_p50_rtts", "ack p50 / RTT", ".1f"),
    ("serialised_bound_per_s", "serialised bound /s", ",.0f"),
    ("x_bound", "× bound", ".1f"),
    ("cpu_us_per_post", "node CPU µs/post", ".0f"),
    ("redis_cpu_us_per_post", "Redis CPU µs/post", ".0f"),
    ("redis_commands_per_post", "Redis cmds/post", ".1f"),
    ("errors", "errors", "d"),
]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table, formatted as Report.write formats its own."""
    return common.markdown_table(rows, columns)


def calls_text(rows: list[dict[str, Any]]) -> str:
    """The commands Redis ran per acked post, by path (the six most frequent)."""
    parts = []
    for row in rows:
        top = list(row["redis_calls_per_post"].items())[:6]
        parts.append(
            f"{row['path']} ({row['clients']} clients): "
            + ", ".join(f"{name} {n:.2f}" for name, n in top)
        )
        # every command counts, a node's background ones too (XREAD loops, leases)
    return "Redis commands per acked post (INFO commandstats): " + "; ".join(parts) + "."


def main(quick: bool, out: Path) -> Report:
    try:
        find_redis_server()
    except ClusterError as error:
        print(f"rt bench cluster: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    report = Report("cluster", out, quick)
    n = 20 if quick else 1000
    rates: tuple[int, ...] = (20,) if quick else (20, 100)
    seconds, grace = (1.0, 0.5) if quick else (8.0, 3.0)
    rounds = [["1 node", "2 nodes"]] if quick else [["1 node", "2 nodes"], ["2 nodes", "1 node"]]
    if not quick:
        rounds[0].insert(0, "standalone")
    ingest_seconds, ingest_clients = (1.0, 8) if quick else (10.0, ingest.CLIENTS)
    paths = INGEST_PATHS if not quick else (INGEST_PATHS[0], INGEST_PATHS[2])
    common.raise_nofile()
    cells = sum(len(r) for r in rounds) * len(rates) + len(paths) + (0 if quick else 1)
    fanout_rows: list[dict[str, Any]] = []
    ingest_rows: list[dict[str, Any]] = []
    lg_limit = None
    load0 = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="rt-bench-cluster-") as tmp_name,
        common.deadline_guard(110 if quick else 900),
        common.progress() as progress,
    ):
        tmp = Path(tmp_name)
        task = progress.add_task("cluster", total=cells)
        if not quick:
            progress.update(task, description=f"cluster: load generator limit, N={n}")
            fanout.WORKERS = SUBSCRIBER_PROCESSES
            lg_limit = fanout.load_generator_limit("ws", n, 3.0)
            progress.advance(task)
        for k, setups in enumerate(rounds, start=1):
            for label in setups:
                fanout_rows += fanout_setup(label, n, rates, seconds, grace, k, tmp, progress, task)
        for i, (label, via_proxy, delay_ms, clients) in enumerate(paths):
            clients = clients or ingest_clients
            progress.update(task, description=f"cluster: ingest, Redis {label}, {clients} clients")
            ingest_rows.append(
                ingest_path(
                    label, via_proxy, delay_ms, ingest_seconds, clients, tmp / f"ingest-{i}"
                )
            )
            progress.advance(task)
    load1 = os.getloadavg()
    add_ratios(fanout_rows)
    add_ingest_ratios(ingest_rows)
    fanout_rows.sort(key=lambda r: (r["rate"], r["round"], r["nodes"], r["store"] == "redis"))
    report.rows = fanout_rows
    limit_text = (
        f"The subscriber processes' own limit (a trivial local fan-out to N={n}): "
        f"{lg_limit:,.0f} events/s. "
        if lg_limit
        else ""
    )
    notes = "\n\n".join(
        [
            "Fan-out: one publisher posts R/s to node 0 over WebSocket; N WebSocket "
            "subscribers split evenly over the nodes. node CPU µs/event: each node's CPU "
            "over the events its own subscribers received (2 nodes: node 0 / node 1); "
            "× 1 node: the mean of the nodes' figures over the 1-node cell of the same "
            "round. Redis CPU µs/post and cmds/post: redis-server's CPU and commands "
            "processed over the posts. all CPU µs/event: every server process (nodes, "
            "Redis) over every delivery. standalone: `rt serve` on SQLite, no Redis. "
            + limit_text
            + f"Load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end.",
            f"### Ingest: one node, Redis direct or {DELAY_MS:g} ms away\n\n"
            + table(ingest_rows, INGEST_COLUMNS)
            + "\n\n"
            + calls_text(ingest_rows)
            + "\n\nClosed loop over WebSocket (each client waits for its ack before its "
            "next post), one node whose store is Redis. Redis PING RTT: "
            "the median of 50 PINGs one at a time over the same path. serialised bound: "
            "1 / that round trip, the acks a second of a node that waited for each Redis "
            "reply before its next request; × bound above 1 means the node keeps several "
            "requests in flight (pipelining and batching). The proxy (rt/chaos/proxy.py, a "
            "`latency` fault with no jitter) runs on the load generators' core.",
            NOTE,
        ]
    )
    jsonl = report.write(FANOUT_COLUMNS, notes=notes)
    first = json.loads(jsonl.read_text().splitlines()[0]) if fanout_rows else {}
    meta = {k: first[k] for k in ("bench", "quick", "commit", "machine", "time") if k in first}
    with jsonl.open("a") as f:
        for row in ingest_rows:
            f.write(json.dumps({**meta, **row}) + "\n")
    report.rows = fanout_rows + ingest_rows
    chart(fanout_rows, ingest_rows, report.path(".png"), quick)
    return report


def chart(
    fanout_rows: list[dict[str, Any]], ingest_rows: list[dict[str, Any]], path: Path, quick: bool
) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = {"standalone": "#7f7f7f", "1 node": "#3b75af", "2 nodes": "#ef8636"}
    labels: list[str] = []
    cpu: list[list[float]] = []
    p99: list[float] = []
    bar_colours: list[str] = []
    for row in fanout_rows:
        short = {"standalone": "solo", "1 node": "1 node", "2 nodes": "2 nodes"}
        labels.append(f"{short.get(row['setup'], row['setup'])}\nR={row['rate']}\n#{row['round']}")
        cpu.append([x or 0.0 for x in row["node_cpu_us_per_event"]])
        p99.append(row["latency_p99_ms"] or 0.0)
        bar_colours.append(colours.get(row["setup"], "#999999"))
    xs = list(range(len(labels)))
    for i, (values, colour) in enumerate(zip(cpu, bar_colours, strict=True)):
        width = 0.8 / len(values)
        for j, v in enumerate(values):
            x = i - 0.4 + width * (j + 0.5)
            axes[0].bar(x, v, width * 0.95, color=colour, alpha=1.0 if j == 0 else 0.6)
    axes[0].set_title("node CPU per delivered event (µs; 2 nodes: node 0, node 1)")
    axes[1].bar(xs, p99, color=bar_colours)
    axes[1].set_title("end-to-end latency p99 (ms)")
    for ax in axes[:2]:
        ax.set_xticks(xs, labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    names = [r["path"].replace(", ", ",\n") + f"\n{r['clients']} clients" for r in ingest_rows]
    values = [r["posts_per_s"] for r in ingest_rows]
    bars = axes[2].bar(range(len(names)), values, color="#3b75af", label="acked posts/s")
    for b, v in zip(bars, values, strict=True):
        axes[2].text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom")
    for i, r in enumerate(ingest_rows):
        bound = r["serialised_bound_per_s"]
        if bound < max(values or [0]) * 1.5:
            axes[2].plot([i - 0.4, i + 0.4], [bound, bound], color="#c0392b", linestyle="--")
    axes[2].plot([], [], color="#c0392b", linestyle="--", label="serialised bound (1/RTT)")
    axes[2].set_xticks(range(len(names)), names, fontsize=8)
    axes[2].set_title("ingest, one node: acked posts a second")
    axes[2].legend(fontsize=7)
    axes[2].grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Cluster: fan-out through 1 and 2 nodes on one Redis (all servers on one core)"
        + (" (--quick: meaningless)" if quick else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
