"""Issue 14's targets, before and after, in one run: each cell on the old server, then the new.

    python bench/before_after.py --before ../wt-before14 [--out bench/runs/NAME] [--quick]

`--before` is a checkout of rt (a git worktree at the commit before the
work); the load generators are this checkout's for both, and only the
server differs (RT_BENCH_SERVER, rt/bench/common.py). Each bench runs on
the old server and then at once on the new one, so both see the machine in
the same state; every figure is a ratio to the TCP floor measured in the
same bench. Writes every bench's own reports under --out/before and
--out/after, and `targets.md`: each target with both figures, met or missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rt.bench import common, connections, fanout, ingest, latency, storm

Rows = list[dict[str, Any]]


def benches(quick: bool) -> dict[str, Callable[[Path], Rows]]:
    """Every bench the targets need, each given where to write; their rows."""
    return {
        "latency": lambda where: latency.main(quick, where).rows,
        "ingest": lambda where: ingest.main(quick, where).rows,
        "fanout": lambda where: (
            fanout.main(quick, where, ns=(100,) if quick else (1000, 5000), rates=(10, 100)).rows
        ),
        "connections": lambda where: idle_connections(quick, where),
        "storm": lambda where: storm.main(quick, where).rows,
    }


def run(before: Path, out: Path, quick: bool) -> dict[str, dict[str, Rows]]:
    """Rows by version and bench: each bench on the old server, then at once the new."""
    versions: dict[str, dict[str, Rows]] = {"before": {}, "after": {}}
    for name, bench in benches(quick).items():
        for version, rows in versions.items():
            if version == "before":
                os.environ["RT_BENCH_SERVER"] = str(before.resolve())
            else:
                os.environ.pop("RT_BENCH_SERVER", None)
            rows[name] = bench(out / version)
    return versions


def idle_connections(quick: bool, where: Path) -> Rows:
    """`rt bench connections` at the issue's N (5,000), not the bench's 10,000."""
    report = common.Report("connections", where, quick)
    common.raise_nofile()
    with common.progress() as progress:
        task = progress.add_task("connections", total=2 * connections.WORKERS)
        for transport in ("ws", "sse"):
            report.rows.append(
                connections.measure(transport, 500 if quick else 5000, progress, task)
            )
    report.write(
        [("transport", "transport", ""), ("n", "N", "d"), ("kb_per_connection", "KB", ".1f")]
    )
    return report.rows


def pick(rows: Rows, **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not found:
        raise LookupError(f"no row {match}")
    return found[0]


# (what, how to read it from one version's rows, the target, met when)
Target = tuple[str, Callable[[dict[str, Rows]], float | None], str, Callable[[float], bool]]


def _lat(transport: str, store: str, key: str = "p50_x_floor") -> Callable[[dict], float]:
    return lambda v: pick(v["latency"], transport=transport, store=store)[key]


def _over_ws(transport: str, store: str) -> Callable[[dict], float]:
    def ratio(v: dict) -> float:
        ws = pick(v["latency"], transport="ws", store=store)["p50_us"]
        return pick(v["latency"], transport=transport, store=store)["p50_us"] / ws

    return ratio


def _fan(transport: str, n: int, rate: int, key: str) -> Callable[[dict], float | None]:
    return lambda v: pick(v["fanout"], transport=transport, n=n, rate=rate).get(key)


TARGETS: list[Target] = [
    (
        "WebSocket RTT p50, durable (SQLite), × floor",
        _lat("ws", "sqlite"),
        "≤ 2.4",
        lambda x: x <= 2.4,
    ),
    ("WebSocket RTT p50, memory store, × floor", _lat("ws", "memory"), "≤ 1.8", lambda x: x <= 1.8),
    *[
        (f"{t} RTT p50, SQLite, × rt's ws", _over_ws(t, "sqlite"), "≤ 1.5", lambda x: x <= 1.5)
        for t in ("sse", "xhr", "multipart", "htmlfile")
    ],
    *[
        (f"{t} RTT p50, {s}, × floor", _lat(t, s), "≤ 20", lambda x: x <= 20)
        for t in ("poll", "jsonp")
        for s in ("sqlite", "memory")
    ],
    (
        "durable acked posts /s, WebSocket (SQLite)",
        lambda v: pick(v["ingest"], transport="ws", store="sqlite")["posts_per_s"],
        "≥ 10,000",
        lambda x: x >= 10_000,
    ),
    (
        "durable acked posts /s, HTTP (SQLite)",
        lambda v: pick(v["ingest"], transport="http", store="sqlite")["posts_per_s"],
        "≥ 5,000",
        lambda x: x >= 5_000,
    ),
    (
        "idle KB per WebSocket connection (5,000)",
        lambda v: pick(v["connections"], transport="ws")["kb_per_connection"],
        "≤ 12",
        lambda x: x <= 12,
    ),
    (
        "idle KB per SSE connection (5,000)",
        lambda v: pick(v["connections"], transport="sse")["kb_per_connection"],
        "≤ 16",
        lambda x: x <= 16,
    ),
    *[
        (
            f"CPU µs per delivery, {t}, N=5,000 R=10",
            _fan(t, 5000, 10, "cpu_us_per_event"),
            "≤ 10",
            lambda x: x <= 10,
        )
        for t in ("ws", "sse")
    ],
    (
        "keep: CPU µs per delivery, ws, N=1,000 R=100",
        _fan("ws", 1000, 100, "cpu_us_per_event"),
        "≤ 10",
        lambda x: x <= 10,
    ),
    (
        "keep: delivered, ws, N=1,000 R=100, %",
        lambda v: 100 * (_fan("ws", 1000, 100, "delivered_fraction")(v) or 0),
        "100",
        lambda x: x >= 100,
    ),
    (
        "keep: p99 ms, ws, N=1,000 R=100",
        _fan("ws", 1000, 100, "latency_p99_ms"),
        "< 100",
        lambda x: x < 100,
    ),
    (
        "keep: storm, lost + duplicated",
        lambda v: v["storm"][0]["lost"] + v["storm"][0]["duplicated"],
        "0",
        lambda x: x == 0,
    ),
]


def targets_table(before: dict[str, Rows], after: dict[str, Rows]) -> str:
    lines = ["| target | before | after | goal | after is |", "|---|---|---|---|---|"]
    for what, read, goal, met in TARGETS:
        cells = []
        for version in (before, after):
            try:
                value = read(version)
            except (LookupError, KeyError, TypeError, ZeroDivisionError):
                value = None
            cells.append(value)
        shown = ["–" if x is None else f"{x:,.1f}" if x < 1000 else f"{x:,.0f}" for x in cells]
        verdict = "–" if cells[1] is None else "met" if met(cells[1]) else "missed"
        lines.append(f"| {what} | {shown[0]} | {shown[1]} | {goal} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/runs/before-after"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    versions = run(args.before, args.out, args.quick)
    (args.out / "rows.json").write_text(json.dumps(versions, indent=1, default=str))
    load = os.getloadavg()[0]
    text = (
        f"# Issue 14 targets, before ({args.before}) and after ({common.git_commit()})\n\n"
        f"{common.machine()}; started {started}, load average {load:.2f} at the end"
        f"{' (--quick: figures mean nothing)' if args.quick else ''}.\n\n"
        + targets_table(versions["before"], versions["after"])
        + "\n"
    )
    (args.out / "targets.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
