"""The race lab's `--faults` grammar and seeded schedule (rt/chaos/faults.py, LAB.md section 4)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rt.chaos.faults import (
    DEFAULTS,
    FAULT_NAMES,
    FaultSpecError,
    draw_schedule,
    format_duration,
    parse_fault,
    parse_faults,
)

# -- parsing: good specs -------------------------------------------------------------------

GOOD = [
    # (spec, name, expected attributes)
    ("cut", "cut", {"every": (5.0, 15.0), "mode": "fin", "scope": "one", "p": 1.0,
                    "duration": 0.0, "dir": None}),
    ("cut:mode=rst:scope=all", "cut", {"mode": "rst", "scope": "all"}),
    ("stall", "stall", {"every": (10.0, 30.0), "duration": 3.0, "scope": "one", "dir": "both"}),
    ("stall:every=10s:for=3s", "stall", {"every": (5.0, 15.0), "duration": 3.0}),
    ("stall:every=2s..8s:dir=up:p=0.5", "stall", {"every": (2.0, 8.0), "dir": "up", "p": 0.5}),
    ("latency", "latency", {"delay": 0.1, "jitter": 0.02, "duration": 10.0, "scope": "all"}),
    ("latency:delay=400ms:jitter=50ms", "latency", {"delay": 0.4, "jitter": 0.05}),
    ("latency:for=2m:delay=1.5s:jitter=0", "latency", {"duration": 120.0, "delay": 1.5,
                                                      "jitter": 0.0}),
    ("bandwidth:rate=64k", "bandwidth", {"rate": 65536}),
    ("bandwidth:rate=1m", "bandwidth", {"rate": 1048576}),
    ("bandwidth:rate=5000", "bandwidth", {"rate": 5000}),
    ("slice", "slice", {"bytes": 1, "duration": 5.0}),
    ("slice:bytes=7:dir=down", "slice", {"bytes": 7, "dir": "down"}),
    ("limit", "limit", {"bytes": 2048, "mode": "fin", "scope": "one"}),
    ("limit:bytes=100:mode=rst", "limit", {"bytes": 100, "mode": "rst"}),
    ("slow_close:for=4s", "slow_close", {"duration": 4.0}),
    ("refuse", "refuse", {"duration": 2.0, "p": 1.0, "scope": None, "dir": None}),
    ("kill", "kill", {"every": (15.0, 45.0), "p": None, "scope": None}),
    ("pause:for=1s", "pause", {"duration": 1.0}),
    ("server:every=5s", "server", {"every": (2.5, 7.5), "duration": 0.0}),
    ("  stall : for=1h ", "stall", {"duration": 3600.0}),
]


@pytest.mark.parametrize("text,name,expected", GOOD, ids=[g[0] for g in GOOD])
def test_good_specs_parse_with_defaults_filled_in(text, name, expected) -> None:
    spec = parse_fault(text)
    assert spec.name == name
    for attribute, value in expected.items():
        assert getattr(spec, attribute) == value, attribute


def test_a_spec_list_parses_in_order_and_keys_repeated_names() -> None:
    specs = parse_faults("cut,stall:every=10s:for=3s,latency:delay=400ms:jitter=50ms,cut:mode=rst")
    assert [s.name for s in specs] == ["cut", "stall", "latency", "cut"]
    assert [s.key for s in specs] == ["cut", "stall", "latency", "cut2"]
    assert parse_faults("") == [] and parse_faults(None) == [] and parse_faults("  ") == []


def test_every_fault_has_defaults_and_its_text_parses_back() -> None:
    assert set(DEFAULTS) == set(FAULT_NAMES)
    for name in FAULT_NAMES:
        spec = parse_fault(name)
        assert parse_fault(spec.text) == spec, spec.text


def test_kinds_and_params() -> None:
    assert {n: parse_fault(n).kind for n in FAULT_NAMES} == {
        "cut": "network", "stall": "network", "latency": "network", "bandwidth": "network",
        "slice": "network", "limit": "network", "slow_close": "network", "refuse": "network",
        "kill": "process", "pause": "process", "server": "process"}
    assert parse_fault("latency").params == {"delay": 0.1, "jitter": 0.02}
    assert parse_fault("limit:bytes=9").params == {"bytes": 9, "mode": "fin"}
    assert parse_fault("stall").params == {}


def test_durations_format_exactly() -> None:
    assert [format_duration(s) for s in (0, 0.1, 3.0, 90.0, 1.25, 0.0005)] == [
        "0s", "100ms", "3s", "90s", "1250ms", "0.5ms"]


# -- parsing: bad specs, with what their messages must say ---------------------------------

BAD = [
    # (spec, fragments the message must hold)
    ("nope", ["'nope'", "cut, stall, latency", "server"]),
    ("Cut", ["unknown fault 'Cut'"]),
    ("cut:for=3s", ["cut takes no 'for'", "every, mode, scope, p"]),
    ("refuse:scope=all", ["refuse takes no 'scope'", "every, for, p"]),
    ("kill:p=0.5", ["kill takes no 'p'", "every"]),
    ("cut:dir=up", ["cut takes no 'dir'"]),
    ("stall:delay=1s", ["stall takes no 'delay'"]),
    ("stall:zzz=1", ["unknown key 'zzz'", "every, for, scope, dir, p"]),
    ("stall:for", ["bad piece 'for'", "key=value"]),
    ("stall:for=", ["bad piece 'for='"]),
    ("stall:=3s", ["bad piece '=3s'"]),
    ("stall:for=0", ["stall must last", "above 0"]),
    ("stall:for=3", ["for=3", "a number with a unit", "500ms"]),
    ("stall:for=3x", ["for=3x", "a number with a unit"]),
    ("stall:every=0s", ["every=0s", "above 0"]),
    ("stall:every=8s..2s", ["every=8s..2s", "range", "2s..8s"]),
    ("stall:every=2s..", ["every=2s..", "a duration"]),
    ("stall:every=abc", ["every=abc", "also takes a range"]),
    ("cut:mode=soft", ["mode=soft", "fin, rst"]),
    ("cut:scope=some", ["scope=some", "one, all"]),
    ("stall:dir=left", ["dir=left", "up, down, both"]),
    ("stall:p=1.5", ["p=1.5", "from 0 to 1"]),
    ("stall:p=half", ["p=half", "from 0 to 1"]),
    ("bandwidth:rate=0", ["rate=0", "bytes a second", "64k"]),
    ("bandwidth:rate=fast", ["rate=fast", "64k"]),
    ("limit:bytes=-1", ["bytes=-1", "a size in bytes"]),
    ("cut:mode=fin:mode=rst", ["'mode' given twice"]),
    ("cut,", ["empty fault", "single commas"]),
    (",cut", ["empty fault"]),
    ("cut,,stall", ["empty fault"]),
]


@pytest.mark.parametrize("text,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_specs_say_what_is_wrong_and_what_is_allowed(text, fragments) -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(text)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_parse_fault_takes_one_fault_only() -> None:
    with pytest.raises(FaultSpecError, match="one fault at a time"):
        parse_fault("cut,stall")


def test_the_error_is_a_value_error() -> None:
    # The CLI (and the control API) catch ValueError for a caller's bad input.
    assert issubclass(FaultSpecError, ValueError)


# -- the schedule --------------------------------------------------------------------------

SPEC = "cut,stall:every=10s:for=3s,latency:delay=400ms:jitter=50ms,kill:every=20s"


def by_key(windows):
    out = {}
    for w in windows:
        out.setdefault(w.spec.key, []).append(w)
    return out


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    specs = parse_faults(SPEC)
    first = draw_schedule(specs, seed=7, duration=120)
    assert first == draw_schedule(parse_faults(SPEC), seed=7, duration=120)
    assert [w.to_json() for w in first] == [w.to_json() for w in
                                            draw_schedule(specs, seed=7, duration=120)]
    other = draw_schedule(specs, seed=8, duration=120)
    assert [(w.id, w.start) for w in other] != [(w.id, w.start) for w in first]


def test_adding_or_moving_a_fault_leaves_the_others_windows_alone() -> None:
    base = by_key(draw_schedule(parse_faults(SPEC), seed=3, duration=300))
    more = by_key(draw_schedule(parse_faults("slice," + SPEC + ",cut:mode=rst"), seed=3,
                                duration=300))
    assert set(more) == set(base) | {"slice", "cut2"}
    for key, windows in base.items():
        assert more[key] == windows, key
    moved = by_key(draw_schedule(parse_faults(",".join(reversed(SPEC.split(",")))), seed=3,
                                 duration=300))
    assert moved == base


def test_windows_are_ordered_spaced_and_within_the_run() -> None:
    duration = 600.0
    windows = draw_schedule(parse_faults(SPEC), seed=11, duration=duration, start_delay=5)
    assert [w.start for w in windows] == sorted(w.start for w in windows)
    for key, mine in by_key(windows).items():
        spec = mine[0].spec
        lo, hi = spec.every
        assert [w.id for w in mine] == [f"{key}#{i}" for i in range(1, len(mine) + 1)]
        assert 5 <= mine[0].start <= 5 + hi
        for w in mine:
            assert w.end == min(round(w.start + spec.duration, 3), duration)
            assert 0 <= w.end - w.start <= spec.duration + 1e-9
        for a, b in zip(mine, mine[1:], strict=False):
            gap = b.start - a.start
            assert b.start >= a.end  # a spec never overlaps itself
            assert lo - 0.002 <= gap <= max(hi, spec.duration) + 0.002
        # a mean interval of X: about duration / X windows
        mean = (lo + hi) / 2
        assert abs(len(mine) - (duration - 5) / mean) <= 0.25 * (duration - 5) / mean + 2


def test_every_window_is_json_with_its_kind_and_a_seed() -> None:
    windows = draw_schedule(parse_faults(SPEC), seed=1, duration=60)
    kinds = {w.name: w.kind for w in windows}
    assert kinds == {"cut": "network", "stall": "network", "latency": "network",
                     "kill": "process"}
    seeds = [w.seed for w in windows]
    assert len(set(seeds)) == len(seeds)
    line = windows[0].to_json()
    assert set(line) == {"id", "fault", "kind", "start", "end", "params", "scope", "dir", "p",
                         "seed", "spec"}
    assert json.loads(json.dumps(line)) == line
    stall = next(w for w in windows if w.name == "stall").to_json()
    assert stall["scope"] == "one" and stall["dir"] == "both" and stall["p"] == 1.0
    assert stall["end"] - stall["start"] == pytest.approx(3.0)
    assert parse_fault(stall["spec"]) == replace(parse_faults(SPEC)[1], key="")


def test_a_run_shorter_than_the_start_delay_has_no_faults() -> None:
    assert draw_schedule(parse_faults(SPEC), seed=1, duration=1.5, start_delay=2) == []
