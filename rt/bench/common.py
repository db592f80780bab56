"""Shared machinery of `rt bench`: the server subprocess, raw loopback clients, stats, output.

Every benchmark starts a real `rt serve` subprocess on 127.0.0.1 and drives it
from load-generator processes (never the server's own). With two or more
cores, the server is pinned to the first and every load-generator process to
the others (`os.sched_setaffinity`). Clients speak HTTP/1.0 for streams (a
close-delimited body, no chunked framing to undo), HTTP/1.1 keep-alive for
posts and polls, and RFC 6455 by hand for WebSocket: the load generator's own
cost per event stays small next to the server's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "results"
HOST = "127.0.0.1"  # every byte of every benchmark goes over loopback

# -- cores ---------------------------------------------------------------------------------


try:
    # The cores this process may use, read once at import: after
    # pin_load_generator() its own affinity is only the load generator's cores.
    _AVAILABLE_CORES: list[int] | None = sorted(os.sched_getaffinity(0))
except AttributeError:  # not Linux
    _AVAILABLE_CORES = None


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server cores, load generator cores): disjoint when the machine has two or more.

    The same answer before and after the caller pins itself (a server started
    by a load generator must not inherit the load generator's core).
    """
    available = _AVAILABLE_CORES
    if available is None:
        return None, None
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def pin_load_generator() -> None:
    """Pin the calling process (a load generator) away from the server's core."""
    _, load = cores()
    if load:
        os.sched_setaffinity(0, load)


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _server_preexec() -> None:
    raise_nofile()


# -- the server under test -----------------------------------------------------------------

# Every client is user `bench`: lift the per-user limits. Stream buffers keep their
# defaults, so a subscriber the server cannot keep up with gets `lagging`, as in production.
BENCH_LIMITS = [
    "--ops-rate",
    "10000000",
    "--ops-burst",
    "10000000",
    "--poll-rate",
    "100000",
    "--max-streams",
    "1000000",
    "--heartbeat",
    "300",
    # every load generator connects from 127.0.0.1, thousands at a time
    "--max-connections-per-address",
    "0",
    "--max-connections",
    "0",
]


class Server:
    """`python -m rt serve` on 127.0.0.1:0: user `bench`, flows `bench` and `pub` (publishers follow `pub`)."""

    def __init__(
        self, store: str = "sqlite", *extra: str, tmp: Path | None = None, cut_signal: bool = False
    ) -> None:
        self._tmp = None
        if store == "memory":
            db = ":memory:"
        else:
            if tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="rt-bench-")
                tmp = Path(self._tmp.name)
            db = str(tmp / "bench.db")
        self.store = store
        args = [
            sys.executable,
            "-m",
            "rt",
            "serve",
            "--host",
            HOST,
            "--port",
            "0",
            "--db",
            db,
            "--user",
            "bench",
            "--flow",
            "bench",
            "--flow",
            "pub",
            *BENCH_LIMITS,
            *extra,
        ]
        if cut_signal:
            args += ["--chaos", "signal"]
        server_cores, _ = cores()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # RT_BENCH_SERVER=<a checkout of rt>: serve that code instead of this one (the
        # load generators stay this one's), for before-and-after runs (bench/before_after.py).
        root = os.environ.get("RT_BENCH_SERVER") or str(ROOT)
        env["PYTHONPATH"] = root
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=root,
            env=env,
            preexec_fn=_server_preexec,
        )
        if server_cores:
            os.sched_setaffinity(self.proc.pid, server_cores)
        self.token = ""
        self.url = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.match(r"created user bench; token: (\S+)", line):
                self.token = m[1]
            if m := re.match(r"rt serving on http://[^:]+:(\d+)", line):
                self.port = int(m[1])
                self.url = f"http://{HOST}:{self.port}"
                break
        if not self.url:
            self.stop()
            raise RuntimeError("rt serve did not start within 30 s")
        self.pid = self.proc.pid

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def metrics(self) -> dict[str, float]:
        """The server's /metrics samples, by name with labels (`a_bucket{le="0.001"}`)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str
) -> list[tuple[float, float]]:
    """(upper bound, count) of each bucket of histogram `name` between two scrapes."""
    prefix = name + '_bucket{le="'
    rows, below = [], 0.0
    for key, value in after.items():
        if key.startswith(prefix):
            bound = float(key[len(prefix) : -2])
            rows.append((bound, value - before.get(key, 0.0)))
    rows.sort()
    buckets = []
    for bound, cumulative in rows:
        buckets.append((bound, cumulative - below))
        below = cumulative
    return buckets


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` (None without samples)."""
    total = sum(count for _, count in buckets)
    if not total:
        return None
    running = 0.0
    for bound, count in buckets:
        running += count
        if running >= q * total:
            return bound
    return buckets[-1][0]


def _quantile_and_longest(
    before: dict[str, float], after: dict[str, float], name: str
) -> tuple[float | None, float | None]:
    """p99.9 and the longest of histogram `<name>_seconds` between two scrapes (seconds)."""
    buckets = histogram_delta(before, after, name + "_seconds")
    longest = max((bound for bound, count in buckets if count), default=None)
    record = after.get(name + "_max_seconds", 0.0)
    if longest is not None and (
        longest == float("inf") or record > before.get(name + "_max_seconds", 0.0)
    ):
        longest = record  # it happened between the scrapes: the exact figure
    return histogram_quantile(buckets, 0.999), longest


def loop_and_writer(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the server's loop and writer did between two scrapes (rt/service/loop_stalls.py).

    The loop's stalls at p99.9 and at their longest, each as the upper bound
    of its bucket (the longest is exact when it is past the last bound, or
    when it is a record since the server started); the writer's batches
    (count, mean size, the p99 bucket's upper bound); and how long the store held the
    loop per batch (`rt_store_hold_seconds`: p99.9 and longest, read the same way).
    """
    batches = histogram_delta(before, after, "rt_writer_batch_ops")
    p999, longest = _quantile_and_longest(before, after, "rt_loop_stall")
    hold_p999, hold_longest = _quantile_and_longest(before, after, "rt_store_hold")
    count = after.get("rt_writer_batch_ops_count", 0.0) - before.get(
        "rt_writer_batch_ops_count", 0.0
    )
    ops = after.get("rt_writer_batch_ops_sum", 0.0) - before.get("rt_writer_batch_ops_sum", 0.0)
    return {
        "stall_p999_ms": None if p999 is None else p999 * 1e3,
        "stall_max_ms": None if longest is None else longest * 1e3,
        "hold_p999_ms": None if hold_p999 is None else hold_p999 * 1e3,
        "hold_max_ms": None if hold_longest is None else hold_longest * 1e3,
        "batches": int(count),
        "batch_mean": ops / count if count else None,
        "batch_p99": histogram_quantile(batches, 0.99),
    }


# -- raw clients ---------------------------------------------------------------------------


def client_id() -> str:
    return "c" + secrets.token_hex(10)


def uuid() -> str:
    return "u" + secrets.token_hex(8)


async def read_head(stream: trio.SocketStream, buf: bytearray, deadline: float = 30) -> bytes:
    """Read an HTTP response head into `buf`; returns it and leaves the rest in `buf`."""
    with trio.fail_after(deadline):
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed before the response head")
            buf += data
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


class Http:
    """An HTTP/1.1 keep-alive connection for posts and polls (Content-Length bodies only)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()
        self.last = b""  # the last body read by a poll

    @property
    def conn(self) -> trio.SocketStream:
        """The open stream (after `connect`)."""
        assert self.stream is not None, "connect() first"
        return self.stream

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream(HOST, self.port)
        self.buf = bytearray()

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.stream is None:
            await self.connect()
        assert self.stream is not None
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {self.token}\r\n"
        )
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        await self.stream.send_all(head.encode() + b"\r\n" + body)
        response = await read_head(self.stream, self.buf, 60)
        status = int(response[9:12])
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", response)
        length = int(m[1]) if m else 0
        while len(self.buf) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed inside a body")
            self.buf += data
        out = bytes(self.buf[:length])
        del self.buf[:length]
        return status, out

    async def post(self, content: str, uid: str, flow: str = "bench") -> tuple[int, bytes]:
        body = json.dumps({"content": content, "uuid": uid}).encode()
        return await self.request("POST", f"/flows/{flow}/messages", body)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


def query(flows: str = "bench", client: str | None = None, **extra: Any) -> str:
    parts = {"flows": flows, "client": client or client_id(), **extra}
    return "&".join(f"{k}={v}" for k, v in parts.items() if v is not None)


class WsFrames:
    """Server-to-client RFC 6455 frames (unmasked): feed bytes, get text payloads."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + length:
                break
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            if opcode in (0x1, 0x0):
                out.append(payload)
            elif opcode == 0x8:
                self.closed = True
        return out


def ws_frame(text: bytes, opcode: int = 0x1) -> bytes:
    """A masked client-to-server frame."""
    mask = os.urandom(4)
    n = len(text)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(text))
    return head + mask + masked


class Stream:
    """One open stream on a raw socket: `await receive()` returns the next raw bytes batch.

    `frames` (ws only) turns the bytes into text payloads; other transports
    hand out the body bytes as they arrive (HTTP/1.0: no chunked framing).
    """

    def __init__(self, transport: str, stream: trio.SocketStream, rest: bytes) -> None:
        self.transport = transport
        self.stream = stream
        self.frames = WsFrames() if transport == "ws" else None
        self.pending = rest

    async def receive(self) -> bytes:
        """The next body bytes (ws: the payloads joined by `\\n`); b'' at the end."""
        while True:
            if self.pending:
                data, self.pending = self.pending, b""
            else:
                data = await self.stream.receive_some(262144)
                if not data:
                    return b""
            if self.frames is None:
                return data
            payloads = self.frames.feed(data)
            if payloads:
                return b"\n".join(payloads)
            if self.frames.closed:
                return b""

    async def send_text(self, text: bytes) -> None:
        await self.stream.send_all(ws_frame(text))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def open_stream(port: int, token: str, transport: str, q: str, timeout: float = 30) -> Stream:
    """Open a stream (Authorization header) and return once the response head arrived."""
    with trio.fail_after(timeout):
        sock = await trio.open_tcp_stream(HOST, port)
        auth = f"Authorization: Bearer {token}\r\n"
        if transport == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /stream/ws?{q} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
            )
        else:
            request = f"GET /stream/{transport}?{q} HTTP/1.0\r\nHost: {HOST}\r\n{auth}\r\n"
        await sock.send_all(request.encode())
        buf = bytearray()
        head = await read_head(sock, buf, timeout)
        status = int(head[9:12])
        if status not in (101, 200):
            await sock.aclose()
            raise RuntimeError(f"{transport} stream refused: {head[:200]!r}")
        return Stream(transport, sock, bytes(buf))


READY = re.compile(rb'"type":"ready"[^\n]*?"cursor":(\d+),"epoch":"([^"]+)"')
IDS = re.compile(rb'\{"id":(\d+),"flow":"bench","type":"message"')
STAMPS = re.compile(rb'"content":"t(\d+)"')


# -- statistics and progress ------------------------------------------------------------


def percentiles(samples: Iterable[float], scale: float = 1e6, unit: str = "us") -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {f"p50_{unit}": None, f"p90_{unit}": None, f"p99_{unit}": None, "n": 0}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale

    return {
        f"p50_{unit}": at(0.50),
        f"p90_{unit}": at(0.90),
        f"p99_{unit}": at(0.99),
        f"mean_{unit}": statistics.fmean(ordered) * scale,
        "n": len(ordered),
    }


def progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


@contextmanager
def deadline_guard(seconds: float):
    """A wall-clock bound for a whole subcommand (SIGALRM), so no run can hang."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded its {seconds:.0f} s bound")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- output --------------------------------------------------------------------------------


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?"
            )
    except OSError:
        model = "?"
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                text=True,
                capture_output=True,
                timeout=5,
            ).stdout.strip()
            or "?"
        )
    except OSError:
        return "?"


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a Markdown table: (key, heading, format spec) per column, `–` for None."""
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            if value is None:
                cells.append("–")
            elif spec and isinstance(value, int | float):
                cells.append(format(value, spec))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Report:
    """Rows of one run: JSON lines, a Markdown table and charts under `out`."""

    bench: str
    out: Path
    quick: bool
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row

    def path(self, suffix: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / f"{self.bench}-{self.stamp}{suffix}"

    def write(self, columns: list[tuple[str, str, str]], notes: str = "") -> Path:
        """columns: (key, header, format spec). Writes .jsonl and .md, prints the table."""
        meta = {
            "bench": self.bench,
            "quick": self.quick,
            "commit": git_commit(),
            "machine": machine(),
            "time": self.stamp,
        }
        jsonl = self.path(".jsonl")
        with jsonl.open("w") as f:
            for row in self.rows:
                f.write(json.dumps({**meta, **row}) + "\n")
        lines = [
            f"## rt bench {self.bench}{' (--quick: figures mean nothing)' if self.quick else ''}",
            "",
            f"commit {meta['commit']}, {meta['machine']}, {self.stamp}",
            "",
            markdown_table(self.rows, columns),
        ]
        if notes:
            lines += ["", notes]
        text = "\n".join(lines) + "\n"
        self.path(".md").write_text(text)
        print(text)
        print(f"results: {jsonl}")
        return jsonl


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- worker processes ----------------------------------------------------------------------


def spawn_context():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base + (i < extra)]
