"""The race lab's `--faults` grammar and seeded schedule (rt/chaos/faults.py, LAB.md section 4)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rt.chaos.faults import (
    DEFAULTS,
    FAULT_NAMES,
    FaultSpecError,
    choose_targets,
    draw_schedule,
    format_duration,
    parse_fault,
    parse_faults,
    takes_new,
    window_now,
)

# -- parsing: good specs -------------------------------------------------------------------

GOOD = [
    # (spec, name, expected attributes)
    (
        "cut",
        "cut",
        {
            "every": (5.0, 15.0),
            "mode": "fin",
            "scope": "one",
            "p": 1.0,
            "duration": 0.0,
            "dir": None,
        },
    ),
    ("cut:mode=rst:scope=all", "cut", {"mode": "rst", "scope": "all"}),
    ("stall", "stall", {"every": (10.0, 30.0), "duration": 3.0, "scope": "one", "dir": "both"}),
    ("stall:every=10s:for=3s", "stall", {"every": (5.0, 15.0), "duration": 3.0}),
    ("stall:every=2s..8s:dir=up:p=0.5", "stall", {"every": (2.0, 8.0), "dir": "up", "p": 0.5}),
    ("latency", "latency", {"delay": 0.1, "jitter": 0.02, "duration": 10.0, "scope": "all"}),
    ("latency:delay=400ms:jitter=50ms", "latency", {"delay": 0.4, "jitter": 0.05}),
    (
        "latency:for=2m:delay=1.5s:jitter=0",
        "latency",
        {"duration": 120.0, "delay": 1.5, "jitter": 0.0},
    ),
    ("bandwidth:rate=64k", "bandwidth", {"rate": 65536}),
    ("bandwidth:rate=1m", "bandwidth", {"rate": 1048576}),
    ("bandwidth:rate=5000", "bandwidth", {"rate": 5000}),
    ("slice", "slice", {"bytes": 1, "duration": 5.0}),
    ("slice:bytes=7:dir=down", "slice", {"bytes": 7, "dir": "down"}),
    ("limit", "limit", {"bytes": (1024, 3072), "mode": "fin", "scope": "one"}),
    ("limit:bytes=100..200", "limit", {"bytes": (100, 200)}),
    ("limit:bytes=2k..2k", "limit", {"bytes": 2048}),
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
        "cut": "network",
        "stall": "network",
        "latency": "network",
        "bandwidth": "network",
        "slice": "network",
        "limit": "network",
        "slow_close": "network",
        "refuse": "network",
        "kill": "process",
        "pause": "process",
        "server": "process",
    }
    assert parse_fault("latency").params == {"delay": 0.1, "jitter": 0.02}
    assert parse_fault("limit:bytes=9").params == {"bytes": 9, "mode": "fin"}
    assert parse_fault("limit").lasting and parse_fault("pause").lasting
    assert not any(parse_fault(n).lasting for n in ("cut", "kill", "server"))
    assert parse_fault("stall").params == {}


def test_durations_format_exactly() -> None:
    assert [format_duration(s) for s in (0, 0.1, 3.0, 90.0, 1.25, 0.0005)] == [
        "0s",
        "100ms",
        "3s",
        "90s",
        "1250ms",
        "0.5ms",
    ]


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
    ("limit:bytes=3k..1k", ["bytes=3k..1k", "a range goes up"]),
    ("limit:bytes=1k..x", ["bytes=x", "a size in bytes"]),
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
    assert [w.to_json() for w in first] == [
        w.to_json() for w in draw_schedule(specs, seed=7, duration=120)
    ]
    other = draw_schedule(specs, seed=8, duration=120)
    assert [(w.id, w.start) for w in other] != [(w.id, w.start) for w in first]


def test_adding_or_moving_a_fault_leaves_the_others_windows_alone() -> None:
    base = by_key(draw_schedule(parse_faults(SPEC), seed=3, duration=300))
    more = by_key(
        draw_schedule(parse_faults("slice," + SPEC + ",cut:mode=rst"), seed=3, duration=300)
    )
    assert set(more) == set(base) | {"slice", "cut2"}
    for key, windows in base.items():
        assert more[key] == windows, key
    moved = by_key(
        draw_schedule(parse_faults(",".join(reversed(SPEC.split(",")))), seed=3, duration=300)
    )
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
    assert kinds == {"cut": "network", "stall": "network", "latency": "network", "kill": "process"}
    seeds = [w.seed for w in windows]
    assert len(set(seeds)) == len(seeds)
    line = windows[0].to_json()
    assert set(line) == {
        "id",
        "fault",
        "kind",
        "start",
        "end",
        "params",
        "scope",
        "dir",
        "p",
        "seed",
        "spec",
    }
    assert json.loads(json.dumps(line)) == line
    stall = next(w for w in windows if w.name == "stall").to_json()
    assert stall["scope"] == "one" and stall["dir"] == "both" and stall["p"] == 1.0
    assert stall["end"] - stall["start"] == pytest.approx(3.0)
    assert parse_fault(stall["spec"]) == replace(parse_faults(SPEC)[1], key="")


def test_a_run_shorter_than_the_start_delay_has_no_faults() -> None:
    assert draw_schedule(parse_faults(SPEC), seed=1, duration=1.5, start_delay=2) == []


def test_a_bytes_range_is_drawn_per_window_from_its_seed() -> None:
    windows = draw_schedule(parse_faults("limit:every=1s:for=100ms"), seed=5, duration=60)
    sizes = [w.bytes for w in windows]
    assert all(1024 <= n <= 3072 for n in sizes) and len(set(sizes)) > 10
    assert [w.params["bytes"] for w in windows] == sizes
    assert sizes == [
        w.bytes
        for w in draw_schedule(parse_faults("limit:every=1s:for=100ms"), seed=5, duration=60)
    ]
    # A fixed size is the size; faults without bytes have none.
    assert {w.bytes for w in draw_schedule(parse_faults("limit:bytes=7:every=1s"), 1, 20)} == {7}
    assert {w.bytes for w in draw_schedule(parse_faults("stall:every=1s"), 1, 20)} == {None}
    assert parse_fault(parse_fault("limit").text) == parse_fault("limit")


def test_window_now_lasts_for_and_covers_its_directions() -> None:
    window = window_now(parse_fault("stall:for=2s:dir=up"), seed=1, id="manual#1", start=5.0)
    assert (window.id, window.start, window.end, window.duration) == ("manual#1", 5.0, 7.0, 2.0)
    assert window.covers("up") and not window.covers("down") and window.lasting
    both = window_now(parse_fault("latency"), seed=1, id="x")
    assert both.covers("up") and both.covers("down")
    assert not window_now(parse_fault("cut"), seed=1, id="y").lasting


def _stall(seed: int, **keys: str):
    text = ":".join(["stall"] + [f"{k}={v}" for k, v in keys.items()])
    return window_now(parse_fault(text), seed=seed, id="t")


def test_p_keeps_about_its_share_and_the_same_ones_for_the_same_seed() -> None:
    ids = range(1, 401)
    half = choose_targets(_stall(9, scope="all", p="0.5"), ids)
    assert 160 <= len(half) <= 240
    assert half == choose_targets(_stall(9, scope="all", p="0.5"), ids)
    assert half != choose_targets(_stall(10, scope="all", p="0.5"), ids)
    # Kept or not depends on the connection alone, not on who else is open.
    assert choose_targets(_stall(9, scope="all", p="0.5"), ids[:100]) == [
        i for i in half if i <= 100
    ]
    assert choose_targets(_stall(9, scope="all", p="0"), ids) == []
    assert choose_targets(_stall(9, scope="all"), ids) == list(ids)


def test_scope_one_takes_one_open_connection_and_no_new_ones() -> None:
    one = _stall(4, scope="one")
    chosen = choose_targets(one, [3, 8, 12])
    assert len(chosen) == 1 and chosen[0] in (3, 8, 12)
    assert chosen == choose_targets(one, [12, 3, 8])
    assert choose_targets(one, []) == []
    assert not takes_new(one, 99)
    assert takes_new(_stall(4, scope="all"), 99)
    assert not takes_new(window_now(parse_fault("cut:scope=all"), 1, "c"), 99)


def test_refuse_hits_new_connections_only() -> None:
    refuse = window_now(parse_fault("refuse:p=0.5"), seed=2, id="r")
    assert choose_targets(refuse, [1, 2, 3]) == []
    hits = [i for i in range(1, 201) if takes_new(refuse, i)]
    assert 70 <= len(hits) <= 130
