"""Profile the server under one ingest or latency load with py-spy, and summarise it.

    python bench/profile.py ingest ws sqlite [--seconds 8] [--clients 32] [--out DIR]
    python bench/profile.py ingest http memory
    python bench/profile.py latency poll sqlite

Starts `rt serve` as `rt bench` does (rt/bench/common.py), puts the load of
one bench cell on it, records the server with `py-spy record -f raw` for the
load's duration, and prints the functions holding the most samples,
inclusive (on the stack) and own (at the top), as shares of all samples.
The raw file (a flamegraph's input) stays in --out. Needs py-spy
(`pip install py-spy`) and the right to trace (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio

from rt.bench import common, ingest, latency


def load(kind: str, transport: str, server: common.Server, seconds: float, clients: int) -> None:
    if kind == "ingest":
        ingest.run_cell(server, transport, seconds, clients)
        return

    async def rounds() -> None:
        measure = (
            latency.polling_round_trips
            if transport in latency.POLLING
            else latency.streaming_round_trips
        )
        with trio.move_on_after(seconds):
            await measure(server, transport, 100_000, lambda: None, {})

    latency.WARMUP = 10
    trio.run(rounds)


def summarise(raw: Path, top: int = 30) -> str:
    """The event loop's thread only (stacks under `rt/__main__.py`), whose time is what
    bounds a node: the store's worker threads mostly wait, and py-spy counts waits."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = everything = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        everything += count
        frames = [_frame(f) for f in stack.split(";") if f]
        if not any(f.startswith("<module> (rt/__main__.py") for f in frames):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    out = [f"{total} samples of the loop's thread ({everything} in all)", "", "inclusive:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top + 16)[16:]]
    out += ["", "own:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def _frame(raw: str) -> str:
    """`fn (path/to/file.py:123)` -> `fn (file path from the package)`, line dropped."""
    name, _, where = raw.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/rt/", "python3.11/"):
        if marker in where:
            where = ("rt/" if marker == "/rt/" else "") + where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("ingest", "latency"))
    parser.add_argument("transport")
    parser.add_argument("store", choices=("sqlite", "memory"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=ingest.CLIENTS)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("extra", nargs="*", help="more `rt serve` options (after --)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"profile-{args.kind}-{args.transport}-{args.store}.txt"
    with common.Server(args.store, *args.extra) as server:
        loader = threading.Thread(
            target=load,
            args=(args.kind, args.transport, server, args.seconds, args.clients),
        )
        loader.start()
        time.sleep(3.0 if args.kind == "ingest" else 1.0)  # the load's own start-up
        subprocess.run(
            [spy, "record", "-f", "raw", "-r", "200", "-d", str(int(args.seconds) - 1)]
            + ["-o", str(raw), "--pid", str(server.pid)],
            check=True,
            capture_output=True,
            timeout=args.seconds + 60,
        )
        loader.join(args.seconds + 120)
    print(summarise(raw))
    print(f"\nraw samples: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
