"""The race lab end to end (issue 11): it catches planted bugs, and rt passes it.

Every run is `rt chaos run` as a subprocess, short and seeded, judged from
its report.json:

- **planted bugs**: the third-party client of the README
  (examples/lab-client.mjs, Node) with one bug each, made by a small edit of
  its source (a mutation): each run exits 1 and names the right invariant
  and its first violating ids; the unedited client under the same faults
  exits 0;
- **rt passes its own lab**: the built-in Python client on all seven
  transports, and rt.js in Chromium on all seven, under cut, stall, slice,
  kill and server faults: every invariant holds;
- the lab's own errors exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rt.chaos.faults import draw_schedule, parse_faults
from tests.process import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "lab-client.mjs"
HARSH = "cut:every=2s,stall:every=5s:for=2s,slice:every=5s:for=2s,kill:every=6s,server:every=1s"


def lab(*args: str, out: Path, timeout: float = 150) -> tuple[int, dict, str]:
    """Run `rt chaos run`; its exit status, report.json and output."""
    done = subprocess.run(
        [sys.executable, "-m", "rt", "chaos", "run", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return done.returncode, report, done.stdout + done.stderr


def violated(report: dict) -> dict[str, list]:
    return {
        inv["name"]: inv["first"]
        for inv in report["invariants"].values()
        if inv["verdict"] == "violated"
    }


def need(program: str, variable: str) -> None:
    if shutil.which(program) is None:
        if os.environ.get(variable) == "1":
            pytest.fail(f"{program} is required ({variable}=1) but not installed")
        pytest.skip(f"{program} is not installed")


# -- planted bugs: the example client with one bug each -------------------------------------


def a_kill_inside_a_stall(spec: str, duration: float) -> int:
    """A seed whose schedule kills the server while every connection is stalled: the
    server's side closes unseen, and only a read watchdog notices (LAB.md 4 `stall`)."""
    specs = parse_faults(spec)
    for seed in range(1, 2000):
        windows = draw_schedule(specs, seed, duration)
        stalls = [w for w in windows if w.name == "stall"]
        kills = [w for w in windows if w.name == "kill"]
        if any(s.start + 0.3 < k.start < s.end - 1.0 for s in stalls for k in kills):
            return seed
    raise AssertionError("no seed puts a kill inside a stall")


NO_WATCHDOG_FAULTS = "stall:every=5s:for=4s:scope=all,kill:every=5s"

# name: (edits of examples/lab-client.mjs, faults, seed, the invariant that must fail)
PLANTED = {
    "reconnects-without-its-cursor": (
        [('if (cursor !== null) { query.set("cursor", cursor); query.set("epoch", epoch); }', "")],
        "cut:every=2s:scope=all",
        5,
        "no gap",
    ),
    "resumes-one-event-early": (
        [
            ('query.set("cursor", cursor)', 'query.set("cursor", cursor - 1)'),
            ("Number.isInteger(o.id) && o.id > cursor", "Number.isInteger(o.id)"),
        ],
        "cut:every=2s:scope=all",
        5,
        "no duplicate",
    ),
    "a-fresh-uuid-per-retry": (
        [
            (
                "body: JSON.stringify({ content, uuid })",
                "body: JSON.stringify({ content, uuid: randomUUID() })",
            )
        ],
        "stall:every=4s:for=7s:dir=down:scope=all",
        5,
        "exactly-once posts",
    ),
    "no-read-watchdog": (
        [
            ("let watchdog = setTimeout(() => abort.abort(), silence);", "let watchdog = null;"),
            ("        watchdog = setTimeout(() => abort.abort(), silence);\n", ""),
        ],
        NO_WATCHDOG_FAULTS,
        None,
        "caught up",
    ),
    "shows-events-out-of-order": (
        [
            ("let cursor = null,", "let held = null, cursor = null,"),
            (
                "            out({ seen: o });\n",
                "            if (held) { out({ seen: o }); out({ seen: held }); held = null; }\n"
                "            else if (o.id % 4 === 0) held = o; else out({ seen: o });\n",
            ),
        ],
        "cut:every=30s",
        5,
        "order",
    ),
}


def planted_client(tmp_path: Path, edits: list[tuple[str, str]]) -> str:
    source = EXAMPLE.read_text()
    for old, new in edits:
        assert source.count(old) == 1, f"the mutation no longer applies: {old!r}"
        source = source.replace(old, new)
    path = tmp_path / "client.mjs"
    path.write_text(source)
    return f"node {path}"


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_lab_catches_a_planted_bug(bug: str, tmp_path: Path) -> None:
    need("node", "RT_REQUIRE_NODE")
    edits, faults, seed, invariant = PLANTED[bug]
    duration = 12
    if seed is None:
        seed = a_kill_inside_a_stall(faults, duration)
    client = planted_client(tmp_path, edits)
    status, report, output = lab(
        "--client",
        client,
        "--clients",
        "3",
        "--duration",
        str(duration),
        "--rate",
        "8",
        "--faults",
        faults,
        "--seed",
        str(seed),
        "--catch-up",
        "6",
        out=tmp_path / "run",
    )
    assert status == 1, output[-3000:]
    found = violated(report)
    assert invariant in found, (bug, sorted(found))
    first = found[invariant]
    assert first and first[0]["ids"], first  # the first violating ids are named
    assert report["command"].startswith("rt chaos run --client ")


@pytest.mark.parametrize(
    "faults",
    ["cut:every=2s:scope=all", "stall:every=4s:for=7s:dir=down:scope=all", NO_WATCHDOG_FAULTS],
)
def test_the_example_client_passes_the_same_faults(faults: str, tmp_path: Path) -> None:
    need("node", "RT_REQUIRE_NODE")
    seed = a_kill_inside_a_stall(faults, 12) if "kill" in faults else 5
    status, report, output = lab(
        "--client",
        f"node {EXAMPLE}",
        "--clients",
        "3",
        "--duration",
        "12",
        "--rate",
        "8",
        "--faults",
        faults,
        "--seed",
        str(seed),
        "--catch-up",
        "6",
        out=tmp_path / "run",
    )
    assert status == 0, output[-3000:]
    assert report["ok"] and not violated(report)


# -- rt passes its own lab ---------------------------------------------------------------------


def test_rt_client_on_all_seven_transports_under_fire(tmp_path: Path) -> None:
    status, report, output = lab(
        "--builtin",
        "python",
        "--clients",
        "14",
        "--transport",
        "mix",
        "--duration",
        "15",
        "--rate",
        "10",
        "--faults",
        HARSH,
        "--seed",
        "21",
        out=tmp_path / "run",
    )
    assert status == 0, output[-4000:]
    assert report["ok"] and not violated(report)
    transports = {
        c["transport"] for c in json.loads((tmp_path / "run" / "run.json").read_text())["clients"]
    }
    assert transports == {"ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"}
    assert report["counts"]["total"]["acked"] > 50, report["counts"]["total"]
    names = {w["name"] for w in report["schedule"]["windows"]}
    assert {"cut", "stall", "slice", "kill", "server"} <= names, names


def test_rt_over_two_nodes_with_kills_of_a_node(tmp_path: Path) -> None:
    pytest.importorskip("coredis")
    need("redis-server", "RT_REQUIRE_REDIS")
    status, report, output = lab(
        "--builtin",
        "python",
        "--clients",
        "14",
        "--transport",
        "mix",
        "--nodes",
        "2",
        "--duration",
        "15",
        "--rate",
        "10",
        "--faults",
        "cut:every=3s,stall:every=6s:for=2s,kill:every=5s,server:every=2s",
        "--seed",
        "31",
        out=tmp_path / "run",
    )
    assert status == 0, output[-4000:]
    assert report["ok"] and not violated(report)
    restarts = sum(
        (tmp_path / "run" / f"node-{i}.log").read_text().count("serving on") - 1 for i in range(2)
    )
    assert restarts >= 1  # a node really was killed and came back


def test_rt_js_in_chromium_on_all_seven_transports_under_fire(tmp_path: Path) -> None:
    need("chromium", "RT_REQUIRE_BROWSER")
    pytest.importorskip("playwright")
    status, report, output = lab(
        "--builtin",
        "browser",
        "--clients",
        "7",
        "--transport",
        "mix",
        "--duration",
        "15",
        "--rate",
        "6",
        "--faults",
        HARSH,
        "--seed",
        "22",
        out=tmp_path / "run",
        timeout=240,
    )
    assert status == 0, output[-4000:]
    assert report["ok"] and not violated(report)


# -- the lab's own errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--faults", "cut:every=never"], "--faults"),
        (["--faults", "teleport"], "teleport"),
        (["--client", "/no/such/client-program"], "printed nothing"),
        (["--server", "http://127.0.0.1:9", "--faults", "kill"], "kill"),
    ],
)
def test_the_lab_itself_failing_exits_2_with_one_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    status, _, output = lab(*args, "--duration", "2", out=tmp_path / "run", timeout=60)
    assert status == 2, output[-2000:]
    assert says in output and "Traceback" not in output, output[-2000:]


def test_a_run_is_rechecked_offline_with_the_same_verdict(tmp_path: Path) -> None:
    status, report, output = lab("--quick", "--seed", "3", out=tmp_path / "run")
    assert status == 0, output[-3000:]
    again = subprocess.run(
        [sys.executable, "-m", "rt", "chaos", "check", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "PASS" in again.stdout
    assert json.loads((tmp_path / "run" / "report.json").read_text())["ok"] is True
    assert (tmp_path / "run" / "timeline.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("doc", ["README.md"])
def test_the_readme_shows_the_example_client_as_it_is(doc: str) -> None:
    assert EXAMPLE.read_text() in (ROOT / doc).read_text()
