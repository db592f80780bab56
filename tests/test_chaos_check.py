"""Tier 0: the race lab's checker and report (LAB.md section 3), on synthetic run directories.

Each run is built by tests/chaos_synth.py and written with rt.chaos.records'
own writers into tmp_path. The correct run holds every invariant; each
planted bug must be named as exactly one violated invariant, with the
client and the first ids involved.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from PIL import Image

from rt.chaos.check import HELD, INVARIANTS, NOT_APPLICABLE, VIOLATED, CheckResult, check_run
from rt.chaos.records import (
    CLIENTS_DIR,
    CONNECTIONS_FILE,
    FAULTS_FILE,
    Bad,
    ClientRecorder,
    Delivery,
    NotARun,
    Printed,
    RunInfo,
    Sent,
    load_run,
    write_run_info,
)
from rt.chaos.report import (
    REPORT_JSON,
    REPORT_MD,
    TIMELINE_PNG,
    check_dir,
    verdict_table,
    write_report,
)
from rt.chaos.timeline import MANY, SAMPLE_LANES, draw_timeline, lane_sample
from tests.chaos_synth import DOWN, T0, Synth, correct_run, seen, view


def checked(synth: Synth, path: Path) -> CheckResult:
    return check_run(load_run(synth.write(path)))


def violated(result: CheckResult) -> set[str]:
    return {name for name in INVARIANTS if result.status(name) == VIOLATED}


# --- a correct run ------------------------------------------------------------------------


def test_a_correct_run_holds_every_invariant(tmp_path: Path, capsys) -> None:
    synth = correct_run()
    synth.write(tmp_path)
    assert check_dir(tmp_path) == 0
    result = check_run(load_run(tmp_path))
    for name in INVARIANTS:
        assert {v.status for v in result.verdicts[name].values()} == {HELD}, name
    assert result.ok and not any(result.first.values())
    # c2 follows only flow "a": it sees the 15 events of "a"; c0 and c1 all 30.
    assert [result.counts[c].seen for c in ("c0", "c1", "c2")] == [30, 30, 15]
    assert result.total.asked == result.total.acked == 30
    assert result.total.views == 3 and result.total.resets == 0
    assert result.counts["c1"].connections == 2  # it reconnected after the cut
    assert "rt chaos: PASS" in capsys.readouterr().out


def test_a_reset_starts_a_new_view_and_is_not_a_gap(tmp_path: Path) -> None:
    # c1 comes back with a reset to cursor 8: events 7 and 8, stored while it was
    # away, are legitimately not shown, because its new view starts after them.
    synth = correct_run()
    log = synth.logs["c1"]
    for i in (7, 8):
        del log[synth.seen_index("c1", i)]
    log.insert(synth.seen_index("c1", 9), view(T0 + DOWN[1], 8))
    result = checked(synth, tmp_path)
    assert result.ok, [v.explanation for vs in result.first.values() for v in vs]
    assert result.counts["c1"].views == 2 and result.counts["c1"].resets == 1


# --- one planted bug per invariant ----------------------------------------------------------


def restart_without_cursor(s: Synth) -> None:
    """c1 reconnects after the cut with no cursor: it misses 7 and 8, stored while away."""
    for i in (7, 8):
        del s.logs["c1"][s.seen_index("c1", i)]


def resume_one_early(s: Synth) -> None:
    """c1 resumes from the cursor before the last event it showed (6), so shows 6 again."""
    s.logs["c1"].insert(s.seen_index("c1", 7), seen(T0 + DOWN[1], s.event(6)))


def out_of_order(s: Synth) -> None:
    """c0 shows 11 before 10."""
    log = s.logs["c0"]
    i, j = s.seen_index("c0", 10), s.seen_index("c0", 11)
    log[i], log[j] = (Printed(log[i].t, "seen", log[j].rec), Printed(log[j].t, "seen", log[i].rec))


def never_reaches_head(s: Synth) -> None:
    """c2 (flow "a": odd ids, head 29) shows nothing after 19."""
    s.logs["c2"] = [
        e
        for e in s.logs["c2"]
        if not (isinstance(e, Printed) and e.kind == "seen" and e.rec["seen"]["id"] > 19)
    ]


def altered_content(s: Synth) -> None:
    """c0 shows event 12 with other content."""
    i = s.seen_index("c0", 12)
    entry = s.logs["c0"][i]
    s.logs["c0"][i] = seen(entry.t, {**entry.rec["seen"], "content": "p11 (edited by the client)"})


def acked_with_wrong_id(s: Synth) -> None:
    """c1's post p10 is stored as 11; c1 reports it acknowledged as 12."""
    log = s.logs["c1"]
    i = next(
        i
        for i, e in enumerate(log)
        if isinstance(e, Printed) and e.kind == "acked" and e.rec["acked"] == "p10"
    )
    log[i] = Printed(log[i].t, "acked", {"acked": "p10", "id": 12})


def neither_acked_nor_given_up(s: Synth) -> None:
    """c2 never settles its post p20 (stored as 21)."""
    s.logs["c2"] = [
        e
        for e in s.logs["c2"]
        if not (isinstance(e, Printed) and e.kind == "acked" and e.rec["acked"] == "p20")
    ]


def two_live_streams(s: Synth) -> None:
    """While c0's stream c0/1 delivers (+1.05 to +3.85 s), a stream c0/x delivers 14..16."""
    s.deliveries.append(Delivery(T0 + 2.5, "u0", "c0", "c0/x", "sse", 14, 16, 2))


PLANTED = [
    # (bug, invariant, client, first violation's ids)
    (restart_without_cursor, "no_gap", "c1", (7, 8)),
    (resume_one_early, "no_duplicate", "c1", (6,)),
    (out_of_order, "order", "c0", (10, 11)),
    (never_reaches_head, "caught_up", "c2", (29, 19)),
    (altered_content, "faithful", "c0", (12,)),
    (None, "exactly_once", "c1", (16, 17)),  # p15 stored twice: correct_run(stored_twice=15)
    (acked_with_wrong_id, "exactly_once", "c1", (12, 11)),
    (neither_acked_nor_given_up, "no_limbo", "c2", (21,)),
    (two_live_streams, "one_live_stream", "c0", (14, 16)),
]


@pytest.mark.parametrize(
    ("bug", "invariant", "client", "ids"),
    PLANTED,
    ids=[f"{inv}-{(bug.__name__ if bug else 'stored_twice')}" for bug, inv, _, _ in PLANTED],
)
def test_a_planted_bug_violates_exactly_its_invariant(
    tmp_path: Path, bug, invariant, client, ids
) -> None:
    synth = correct_run(stored_twice=15) if bug is None else correct_run()
    if bug is not None:
        bug(synth)
    result = checked(synth, tmp_path)
    assert violated(result) == {invariant}
    first = result.first[invariant][0]
    assert (first.client, first.ids) == (client, ids)
    assert result.violation_totals[invariant] == 1
    # the verdict is the violating client's alone, and the explanation names it and the id
    assert {c for c, v in result.verdicts[invariant].items() if v.status == VIOLATED} == {client}
    assert client in first.explanation and str(ids[0]) in first.explanation
    assert result.exit_code == 1


def test_a_client_that_never_shows_a_view_fails_caught_up_only(tmp_path: Path) -> None:
    synth = correct_run()
    synth.logs["c2"] = [
        e for e in synth.logs["c2"] if not (isinstance(e, Printed) and e.kind in ("view", "seen"))
    ]
    result = checked(synth, tmp_path)
    assert violated(result) == {"caught_up"}
    assert "never printed a view line" in result.first["caught_up"][0].explanation
    # with no view, the per-view invariants have nothing to judge for c2
    assert result.verdicts["no_gap"]["c2"].status == NOT_APPLICABLE
    assert result.verdicts["no_gap"]["c0"].status == HELD


def test_a_client_that_reaches_the_head_too_late_fails_caught_up(tmp_path: Path) -> None:
    synth = correct_run()
    log = synth.logs["c2"]
    # the head of flow "a" (29) shows a second after the deadline: faults stopped at
    # +4.5 s (after the head was stored), plus the 10 s catch-up limit
    entry = log.pop(synth.seen_index("c2", 29))
    log.insert(synth.seen_index("c2", 27) + 1, seen(T0 + 15.5, entry.rec["seen"]))
    result = checked(synth, tmp_path)
    assert violated(result) == {"caught_up"}
    first = result.first["caught_up"][0]
    assert first.ids == (29,) and first.times == (T0 + 15.5, T0 + 14.5)
    assert "1.00 s late" in first.explanation


def test_a_post_given_up_is_not_in_limbo(tmp_path: Path) -> None:
    synth = correct_run()
    neither_acked_nor_given_up(synth)
    log = synth.logs["c2"]
    stop = next(i for i, e in enumerate(log) if isinstance(e, Printed) and e.kind == "stopped")
    log.insert(
        stop, Printed(log[stop].t - 0.05, "gave_up", {"gave_up": "p20", "error": "rate_limited"})
    )
    result = checked(synth, tmp_path)
    assert result.ok
    assert result.counts["c2"].gave_up == 1


def test_settling_a_post_after_printing_stopped_is_still_limbo(tmp_path: Path) -> None:
    synth = correct_run()
    log = synth.logs["c2"]
    i = next(
        i
        for i, e in enumerate(log)
        if isinstance(e, Printed) and e.kind == "acked" and e.rec["acked"] == "p20"
    )
    ack = log.pop(i)
    log.append(Printed(T0 + 7, "acked", ack.rec))  # after {"stopped": true}
    result = checked(synth, tmp_path)
    assert violated(result) == {"no_limbo"}
    assert "before it printed stopped" in result.first["no_limbo"][0].explanation


def test_a_clean_takeover_is_one_live_stream(tmp_path: Path) -> None:
    # c1's stream c1/1 stops delivering before c1/2 starts (the correct run): held.
    # Move c1/2's first batch before c1/1's last one and it is violated.
    synth = correct_run()
    streams = {d.stream for d in synth.deliveries if d.client == "c1"}
    assert streams == {"c1/1", "c1/2"}
    assert checked(synth, tmp_path / "clean").verdicts["one_live_stream"]["c1"].status == HELD
    last_old = max(d.t for d in synth.deliveries if d.stream == "c1/1")
    synth.deliveries.append(Delivery(last_old - 0.01, "u1", "c1", "c1/2", "sse", 3, 3, 1))
    result = checked(synth, tmp_path / "overlap")
    assert violated(result) == {"one_live_stream"}


def add_event(s: Synth, event: dict, t: float) -> None:
    """Store one more event at t, shown by every follower of its flow at t + 0.03."""
    event = {"user": "u0", "sent": int(t * 1000), "uuid": f"uuid-{event['id']}", **event}
    s.history.append(event)
    for spec in s.info.clients:
        if event["flow"] in spec.flows:
            log = s.logs[spec.lab_id]
            stop = next(
                i for i, e in enumerate(log) if isinstance(e, Sent) and e.cmd["cmd"] == "stop"
            )
            log.insert(stop, seen(t + 0.03, event))


def test_faithful_compares_tags_and_forgives_content_blanked_by_a_delete(tmp_path: Path) -> None:
    synth = correct_run()
    assert synth.event(5)["flow"] == "a"  # followed by every client
    # 5 is deleted after everyone showed it: history now blanks its content
    add_event(synth, {"id": 31, "flow": "a", "type": "delete", "message": 5}, T0 + 4.1)
    synth.event(5)["content"] = ""
    add_event(
        synth,
        {
            "id": 32,
            "flow": "a",
            "type": "tag",
            "message": 3,
            "add": ["x"],
            "remove": [],
            "tags": ["x"],
        },
        T0 + 4.2,
    )
    result = checked(synth, tmp_path / "faithful")
    assert result.ok, [v.explanation for vs in result.first.values() for v in vs]
    # a client that shows the tag event with other tags is not faithful
    i = synth.seen_index("c0", 32)
    synth.logs["c0"][i] = seen(synth.logs["c0"][i].t, {**synth.event(32), "tags": ["y"]})
    result = checked(synth, tmp_path / "unfaithful")
    assert violated(result) == {"faithful"}
    first = result.first["faithful"][0]
    assert first.ids == (32,) and "tags ['y'] where history has ['x']" in first.explanation


# --- damaged records ----------------------------------------------------------------------


def test_malformed_client_lines_are_kept_counted_and_tolerated(tmp_path: Path) -> None:
    synth = correct_run()
    synth.write(tmp_path, live=True)  # the client files through ClientRecorder, line by line
    with ClientRecorder(tmp_path, "c0") as rec:
        assert isinstance(rec.printed("not json at all\n", T0 + 5.6), Bad)
        assert isinstance(rec.printed(b'{"seen": {"id": "7", "flow": "a"}}', T0 + 5.6), Bad)
        assert isinstance(rec.printed("[1, 2]", T0 + 5.6), Bad)
        assert isinstance(rec.printed('{"hello": "world"}', T0 + 5.6), Bad)
        assert isinstance(rec.printed('{"stopped": true}', T0 + 5.6), Printed)
    with open(tmp_path / CLIENTS_DIR / "c0.jsonl", "ab") as f:
        f.write(b'{"t": 1700000005.7, "out": {"acked": 5}}\n')  # a malformed out record
        f.write(b'{"t": 17000')  # a last line cut short by a crash
    result = check_run(load_run(tmp_path))
    assert result.counts["c0"].bad == 6
    assert result.counts["c0"].seen == 30  # every good line still counts
    assert result.ok
    assert "6 bad lines" in verdict_table(result)


def test_damage_is_listed_in_the_report(tmp_path: Path) -> None:
    synth = correct_run()
    synth.write(tmp_path)
    with open(tmp_path / CLIENTS_DIR / "c0.jsonl", "ab") as f:
        f.write(b"{not json\n")
        f.write(b'{"t": 1700000005.7, "out": {"seen": {"id": 1}}}\n')  # no flow, no type
    with open(tmp_path / CONNECTIONS_FILE, "ab") as f:
        f.write(b"garbage\n")
    (tmp_path / "deliveries.jsonl").unlink()
    assert check_dir(tmp_path, quiet=True) == 0
    result = check_run(load_run(tmp_path))
    assert result.counts["c0"].bad == 2
    assert {v.status for v in result.verdicts["one_live_stream"].values()} == {NOT_APPLICABLE}
    report = orjson.loads((tmp_path / REPORT_JSON).read_bytes())
    assert any("connections.jsonl: skipped 1 malformed line" in p for p in report["problems"])
    assert any("no deliveries.jsonl" in p for p in report["problems"])
    assert report["counts"]["clients"]["c0"]["bad"] == 2


def test_fault_lines_as_the_proxy_writes_them_are_read(tmp_path: Path) -> None:
    synth = correct_run()
    synth.write(tmp_path)
    with open(tmp_path / FAULTS_FILE, "ab") as f:  # the proxy's spellings (rt/chaos/proxy.py)
        f.write(
            orjson.dumps(
                {
                    "window": {
                        "id": 2,
                        "fault": "stall",
                        "kind": "proxy",
                        "start": T0 + 2.6,
                        "end": T0 + 3.1,
                        "params": {"for": 0.5},
                    }
                }
            )
            + b"\n"
        )
        for action in ("start", "hit", "hit", "stop"):
            f.write(
                orjson.dumps(
                    {
                        "t": T0 + 2.7,
                        "fault": "stall",
                        "action": action,
                        "conns": [1],
                        "id": 9,
                        "window": 2,
                        "spec": "stall:for=0.5s",
                    }
                )
                + b"\n"
            )
    run = load_run(tmp_path)
    assert not any(FAULTS_FILE in p for p in run.problems)
    assert [w.name for w in run.windows] == ["cut", "stall"]
    assert check_dir(tmp_path, quiet=True) == 0
    report = orjson.loads((tmp_path / REPORT_JSON).read_bytes())
    assert report["schedule"]["actions"]["stall"] == {"start": 1, "hit": 2, "stop": 1}


def test_seen_before_any_view_is_a_bad_line(tmp_path: Path) -> None:
    synth = correct_run()
    synth.logs["c2"].insert(0, seen(T0 + 0.4, synth.event(1)))
    result = checked(synth, tmp_path)
    assert result.ok
    assert result.counts["c2"].bad == 1 and result.counts["c2"].seen == 15


# --- not a run ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", ["missing", "empty", "garbage run.json", "no history", "run.json without started"]
)
def test_check_dir_on_a_non_run_gives_2_and_one_line(tmp_path: Path, capsys, make) -> None:
    path = tmp_path / "run"
    if make != "missing":
        path.mkdir()
    if make == "garbage run.json":
        (path / "run.json").write_text("{nope")
    if make == "no history":
        write_run_info(path, correct_run().info)
    if make == "run.json without started":
        (path / "run.json").write_text('{"seed": 1, "clients": []}')
    assert check_dir(path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rt chaos check: ") and len(err.splitlines()) == 1
    assert not (path / REPORT_JSON).exists()
    with pytest.raises(NotARun):
        load_run(path)


def test_run_info_round_trips(tmp_path: Path) -> None:
    info = correct_run().info
    write_run_info(tmp_path, info)
    assert RunInfo.from_json(orjson.loads((tmp_path / "run.json").read_bytes())) == info
    with pytest.raises(ValueError, match="started"):
        RunInfo.from_json({"seed": 1, "clients": []})


# --- the report ---------------------------------------------------------------------------


def test_the_report_explains_a_violation_with_ids_times_seed_and_command(tmp_path: Path) -> None:
    synth = correct_run()
    restart_without_cursor(synth)
    synth.write(tmp_path)
    assert check_dir(tmp_path, quiet=True) == 1
    report = orjson.loads((tmp_path / REPORT_JSON).read_bytes())
    assert (report["ok"], report["exit"], report["seed"]) == (False, 1, 7)
    assert report["command"] == synth.info.command
    gap = report["invariants"]["no_gap"]
    assert gap["verdict"] == VIOLATED and gap["clients"]["c1"] == VIOLATED
    assert gap["clients"]["c0"] == HELD and gap["violations_by_client"] == {"c1": 1}
    first = gap["first"][0]
    assert first["ids"] == [7, 8] and first["view"] == 1
    assert first["at"] == [pytest.approx(1.85, abs=0.005)]  # when c1 showed 9, past the gap
    assert report["invariants"]["order"]["verdict"] == HELD
    assert report["schedule"]["windows"][0]["name"] == "cut"
    assert report["schedule"]["actions"] == {"cut": {"start": 1, "stop": 1}}
    md = (tmp_path / REPORT_MD).read_text()
    assert "# rt chaos run: FAIL" in md and synth.info.command in md
    assert first["explanation"] in md and "| no gap | ✗ FAIL |" in md
    table = verdict_table(check_run(load_run(tmp_path)))
    assert "rt chaos: FAIL" in table and synth.info.command in table
    gap_row = next(line for line in table.splitlines() if line.strip().startswith("no gap"))
    assert "✗ FAIL" in gap_row
    assert "never 7, 8" in table


# --- the timeline -------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_the_timeline_is_a_sane_png_for_few_clients(tmp_path: Path) -> None:
    synth = correct_run()
    restart_without_cursor(synth)
    result = checked(synth, tmp_path)
    write_report(result)
    width, height = png_size(tmp_path / TIMELINE_PNG)
    assert width == 1600 and 500 < height < 1200
    with Image.open(tmp_path / TIMELINE_PNG) as image:
        assert len(image.getcolors(1 << 20) or []) > 50  # drawn, not blank


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> tuple[CheckResult, float]:
    """200 clients, 2000 events, checked once: the result and how long load + check took."""
    path = tmp_path_factory.mktemp("big")
    correct_run(n_clients=200, n_events=2000).write(path)
    start = time.perf_counter()
    result = check_run(load_run(path))
    return result, time.perf_counter() - start


def test_a_200_client_2000_event_run_checks_in_a_few_seconds(big_run) -> None:
    result, elapsed = big_run
    # Linear work: about 3 s on a busy 2-core machine, most of it orjson parsing
    # 48 MB of client logs. A quadratic scan would take minutes.
    assert elapsed < 8.0, f"load + check took {elapsed:.2f} s"
    assert result.ok
    # 134 clients follow a and b (2000 events each), 66 only a (1000 each)
    assert result.total.seen == 134 * 2000 + 66 * 1000
    assert result.total.asked == result.total.acked == 2000


def test_the_timeline_aggregates_many_clients(big_run, tmp_path: Path) -> None:
    result, _ = big_run
    draw_timeline(result, tmp_path / "many.png")
    medium = correct_run(n_clients=MANY + 5, n_events=30)
    medium_result = checked(medium, tmp_path / "medium")
    draw_timeline(medium_result, tmp_path / "medium.png")
    many_size = png_size(tmp_path / "many.png")
    # past MANY clients the lanes are a fixed sample, so the picture stops growing
    assert many_size == png_size(tmp_path / "medium.png")
    assert many_size[0] == 1600 and many_size[1] < 1600
    lanes = lane_sample(result)
    assert len(lanes) == SAMPLE_LANES and len(set(lanes)) == SAMPLE_LANES
    assert lane_sample(checked(correct_run(n_clients=MANY, n_events=4), tmp_path / "few")) == [
        f"c{i}" for i in range(MANY)
    ]  # up to MANY clients, every one has its lane


def test_the_lane_sample_always_includes_the_violating_clients(tmp_path: Path) -> None:
    synth = correct_run(n_clients=MANY + 20, n_events=30)
    synth.logs["c57"] = [
        e for e in synth.logs["c57"] if not (isinstance(e, Printed) and e.kind == "seen")
    ]
    lanes = lane_sample(checked(synth, tmp_path))
    assert "c57" in lanes and len(lanes) == SAMPLE_LANES
    assert lanes == sorted(lanes, key=lambda c: int(c[1:]))  # drawn in the clients' order
