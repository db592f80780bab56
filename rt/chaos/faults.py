"""The race lab's faults: the `--faults` grammar (LAB.md section 4) and the seeded schedule.

Pure: data in, data out; no trio, no sockets, no clock.

A SPEC is a comma-separated list of faults, each `NAME` or
`NAME:key=value[:key=value...]`, e.g. `cut,stall:every=10s:for=3s`.
`parse_faults(text)` turns it into `FaultSpec`s with every omitted key
resolved to its default, or raises `FaultSpecError` naming the bad piece and
what is allowed there. `draw_schedule(specs, seed, duration)` turns specs into
`FaultWindow`s: when each fault starts and ends, offsets in seconds from the
start of the run.

Values: durations are `500ms`, `10s`, `2m`, `1h` (or a bare `0`); `every` is a
mean interval (a single value `X` draws each gap uniformly from `X/2..3X/2`)
or a range `2s..8s` (drawn uniformly from it); sizes and rates are bytes,
`2k` = 2048, `1m` = 1048576, and `bytes` may be a range `1k..3k` (each window
draws its own size from it); `p` is a share in `0..1`.

Keys each fault takes, with its defaults (a key not in a fault's row is an
error for that fault: it would be silently meaningless):

| fault        | every    | for  | own keys                   | scope | dir  | p |
|--------------|----------|------|----------------------------|-------|------|---|
| `cut`        | 5s..15s  | -    | mode=fin                   | one   | -    | 1 |
| `stall`      | 20s      | 3s   |                            | one   | both | 1 |
| `latency`    | 30s      | 10s  | delay=100ms jitter=20ms    | all   | both | 1 |
| `bandwidth`  | 30s      | 10s  | rate=16k                   | all   | both | 1 |
| `slice`      | 30s      | 5s   | bytes=1 delay=2ms          | all   | both | 1 |
| `limit`      | 30s      | 10s  | bytes=1k..3k mode=fin      | one   | both | 1 |
| `slow_close` | 30s      | 5s   |                            | all   | both | 1 |
| `refuse`     | 30s      | 2s   |                            | -     | -    | 1 |
| `kill`       | 30s      | -    |                            | -     | -    | - |
| `pause`      | 30s      | 2s   |                            | -     | -    | - |
| `server`     | 5s       | 0s   |                            | -     | -    | - |

What the keys mean for each fault (the proxy, rt/chaos/proxy.py, applies them):

- `for` is how long the window lasts;
- `slow_close`: a close (FIN) on a connection it holds is held `for` before
  it goes through (a hold begun runs its course after the window ends);
- `limit`: `bytes` are counted from when the fault takes hold of a
  connection, over the directions of `dir` together, then it closes;
- `slice`: `bytes` is the piece size, `delay` the pause after each piece
  (so each is its own TCP segment and the far end reads it alone);
- `dir=up` is client to server, `down` server to client;
- `scope=one` takes one open connection when the window starts;
  `scope=all` takes every open one and, for a lasting fault, each one that
  opens while it lasts; `p` first keeps each connection with that
  probability (`choose_targets`, `takes_new`);
- `refuse` hits new connections only, so it has no scope;
- `kill`, `pause` and `server` are process faults (`kind == "process"`):
  the lab runner applies them to the server, the proxy never does.

Schedule: each spec recurs from `start_delay` to `duration`, start to start
`every` apart (never overlapping itself); the first start is a random phase
within one interval; a window that would outlast `duration` ends at it.
Every spec draws from its own `random.Random`, keyed by the seed and the
spec's `key` (its name, plus a number for the second `cut` and on), so adding,
removing or reordering other faults leaves its windows exactly as they were.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

NETWORK_FAULTS = ("cut", "stall", "latency", "bandwidth", "slice", "limit", "slow_close", "refuse")
PROCESS_FAULTS = ("kill", "pause", "server")
FAULT_NAMES = NETWORK_FAULTS + PROCESS_FAULTS

# The keys each fault takes and their defaults, as strings in the grammar
# itself: the table above is this dictionary, and a default goes through the
# same parser as a value typed on the command line.
DEFAULTS: dict[str, dict[str, str]] = {
    "cut": {"every": "5s..15s", "mode": "fin", "scope": "one", "p": "1"},
    "stall": {"every": "20s", "for": "3s", "scope": "one", "dir": "both", "p": "1"},
    "latency": {
        "every": "30s",
        "for": "10s",
        "delay": "100ms",
        "jitter": "20ms",
        "scope": "all",
        "dir": "both",
        "p": "1",
    },
    "bandwidth": {
        "every": "30s",
        "for": "10s",
        "rate": "16k",
        "scope": "all",
        "dir": "both",
        "p": "1",
    },
    "slice": {
        "every": "30s",
        "for": "5s",
        "bytes": "1",
        "delay": "2ms",
        "scope": "all",
        "dir": "both",
        "p": "1",
    },
    "limit": {
        "every": "30s",
        "for": "10s",
        "bytes": "1k..3k",
        "mode": "fin",
        "scope": "one",
        "dir": "both",
        "p": "1",
    },
    "slow_close": {"every": "30s", "for": "5s", "scope": "all", "dir": "both", "p": "1"},
    "refuse": {"every": "30s", "for": "2s", "p": "1"},
    "kill": {"every": "30s"},
    "pause": {"every": "30s", "for": "2s"},
    "server": {"every": "5s", "for": "0s"},
}

KEYS = ("every", "for", "delay", "jitter", "rate", "bytes", "mode", "scope", "dir", "p")
CHOICES = {"mode": ("fin", "rst"), "scope": ("one", "all"), "dir": ("up", "down", "both")}
# Faults whose window must last: a `for=0s` stall would do nothing, silently.
_LASTING = ("stall", "latency", "bandwidth", "slice", "limit", "slow_close", "refuse", "pause")
# Where a fault's own keys go in FaultSpec.params (mode, rate...): not every/for/scope/dir/p.
_OWN_KEYS = ("delay", "jitter", "rate", "bytes", "mode")


class FaultSpecError(ValueError):
    """A `--faults` SPEC that does not parse: the message names the bad piece and what is allowed.

    The caller's fault (whoever wrote the spec); the CLI prints the message
    on one line and exits 2.
    """


@dataclass(frozen=True)
class FaultSpec:
    """One fault of a SPEC, every key resolved (a key the fault does not take is None).

    `bytes` is a (low, high) pair when given as a range: each window draws
    its own size from it (`FaultWindow.bytes`).

    `key` names the spec uniquely within its list ("cut", then "cut2" for a
    second cut...): it keys the spec's random stream and its windows' ids.
    `duration` is the `for` key (0 for a fault that is an instant, like `cut`).
    """

    name: str
    every: tuple[float, float]
    duration: float = 0.0
    delay: float | None = None
    jitter: float | None = None
    rate: int | None = None
    bytes: int | tuple[int, int] | None = None
    mode: str | None = None
    scope: str | None = None
    dir: str | None = None
    p: float | None = None
    key: str = ""

    @property
    def kind(self) -> str:
        """ "network" (the proxy applies it) or "process" (the lab runner does)."""
        return "process" if self.name in PROCESS_FAULTS else "network"

    @property
    def params(self) -> dict[str, Any]:
        """The fault's own keys (delay, jitter, rate, bytes, mode) that apply to it."""
        return {k: getattr(self, k) for k in _OWN_KEYS if getattr(self, k) is not None}

    @property
    def lasting(self) -> bool:
        """Whether a window of it lasts (everything but `cut`, `kill` and `server`)."""
        return self.name in _LASTING

    @property
    def text(self) -> str:
        """The spec in the grammar, every key spelled out: parses back to an equal spec."""
        parts = [self.name]
        for k in DEFAULTS[self.name]:
            parts.append(f"{k}={_format_value(k, self._value(k))}")
        return ":".join(parts)

    def _value(self, key: str) -> Any:
        if key == "every":
            return self.every
        return self.duration if key == "for" else getattr(self, key)


@dataclass(frozen=True)
class FaultWindow:
    """One drawn occurrence of a fault: from `start` to `end`, seconds after the run's t0.

    `seed` seeds the choice of its targets (which connection `scope=one`
    picks, which connections `p` selects), so a replay hits the same ones.
    `id` is stable: "stall#3" is the third window of the spec keyed "stall".
    `bytes` is the spec's `bytes` with a range drawn (from `seed`).
    """

    id: str
    start: float
    end: float
    spec: FaultSpec
    seed: int
    spec_index: int = field(default=0, compare=False)
    bytes: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        """ "network" or "process" (kill, pause, server: the lab runner's to apply)."""
        return self.spec.kind

    @property
    def params(self) -> dict[str, Any]:
        """The fault's own keys as this window applies them (`bytes` drawn)."""
        params = self.spec.params
        if self.bytes is not None:
            params["bytes"] = self.bytes
        return params

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def lasting(self) -> bool:
        """A window with a stop (stall...), not an instant (cut, kill, server)."""
        return self.spec.lasting

    def covers(self, direction: str) -> bool:
        """Whether the window acts on `direction`, "up" (client to server) or "down"."""
        return self.spec.dir in ("both", direction)

    @property
    def scope(self) -> str | None:
        return self.spec.scope

    @property
    def dir(self) -> str | None:
        return self.spec.dir

    @property
    def p(self) -> float | None:
        return self.spec.p

    def to_json(self) -> dict[str, Any]:
        """The window as one line of the lab's `faults.jsonl` (and of the report)."""
        return {
            "id": self.id,
            "fault": self.name,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "params": self.params,
            "scope": self.scope,
            "dir": self.dir,
            "p": self.p,
            "seed": self.seed,
            "spec": self.spec.text,
        }


# -- parsing -------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([km]?)b?$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_faults(text: str | None) -> list[FaultSpec]:
    """Parse a whole `--faults` SPEC; an empty or missing SPEC is no faults at all.

    Raises FaultSpecError for any bad piece (the first one found).
    """
    if text is None or not text.strip():
        return []
    specs: list[FaultSpec] = []
    seen: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            raise FaultSpecError(
                f"empty fault in --faults {text!r}: write NAME or NAME:key=value, "
                f"separated by single commas"
            )
        spec = parse_fault(item)
        seen[spec.name] = seen.get(spec.name, 0) + 1
        n = seen[spec.name]
        specs.append(replace(spec, key=spec.name if n == 1 else f"{spec.name}{n}"))
    return specs


def parse_fault(item: str) -> FaultSpec:
    """Parse one fault, `NAME` or `NAME:key=value[:key=value...]` (no commas).

    The control API's POST /faults takes exactly this.
    """
    item = item.strip()
    if "," in item:
        raise FaultSpecError(f"one fault at a time here, not a list: {item!r}")
    name, *pieces = [p.strip() for p in item.split(":")]
    if name not in DEFAULTS:
        raise FaultSpecError(
            f"unknown fault {name!r} in {item!r}: the faults are {', '.join(FAULT_NAMES)}"
        )
    allowed = DEFAULTS[name]
    given: dict[str, str] = {}
    for piece in pieces:
        key, eq, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise FaultSpecError(
                f"bad piece {piece!r} in {item!r}: write key=value, "
                f"with a key of {name}: {', '.join(allowed)}"
            )
        if key not in KEYS:
            raise FaultSpecError(
                f"unknown key {key!r} in {item!r}: the keys of {name} are {', '.join(allowed)}"
            )
        if key not in allowed:
            raise FaultSpecError(
                f"{name} takes no {key!r} (in {item!r}): its keys are {', '.join(allowed)}"
            )
        if key in given:
            raise FaultSpecError(f"{key!r} given twice in {item!r}: give each key once")
        given[key] = value
    values = {
        k: _parse_value(name, k, given.get(k, default), item) for k, default in allowed.items()
    }
    duration = values.pop("for", 0.0)
    if name in _LASTING and duration <= 0:
        raise FaultSpecError(
            f"for={given.get('for')} in {item!r}: {name} must last, "
            f"give a duration above 0 such as for=3s"
        )
    return FaultSpec(name=name, duration=duration, **values)


def _parse_value(name: str, key: str, value: str, item: str) -> Any:
    where = f"{key}={value} in {item!r}"
    if key == "every":
        low, dots, high = value.partition("..")
        if dots:
            lo, hi = _duration(low, where), _duration(high, where)
            if lo <= 0 or hi < lo:
                raise FaultSpecError(
                    f"{where}: a range goes from a duration above 0 up, such as 2s..8s"
                )
            return (lo, hi)
        mean = _duration(value, where)
        if mean <= 0:
            raise FaultSpecError(f"{where}: the interval must be above 0, such as 10s")
        return (mean / 2, mean * 3 / 2)
    if key in ("for", "delay", "jitter"):
        return _duration(value, where)
    if key == "bytes" and ".." in value:
        low, _, high = value.partition("..")
        lo, hi = _parse_value(name, key, low, item), _parse_value(name, key, high, item)
        if hi < lo:
            raise FaultSpecError(f"{where}: a range goes up, such as 1k..3k")
        return (lo, hi) if hi > lo else lo
    if key in ("rate", "bytes"):
        match = _SIZE.match(value)
        size = int(float(match[1]) * _SIZE_FACTOR[match[2].lower()]) if match else 0
        if size < 1:
            raise FaultSpecError(
                f"{where}: {'a rate in bytes a second' if key == 'rate' else 'a size in bytes'}"
                f" of at least 1, such as 512, 64k or 1m"
            )
        return size
    if key == "p":
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise FaultSpecError(f"{where}: p is a share of connections from 0 to 1, such as 0.5")
        return share
    choices = CHOICES[key]
    if value not in choices:
        raise FaultSpecError(f"{where}: {key} is one of {', '.join(choices)}")
    return value


def _duration(value: str, where: str) -> float:
    if value == "0":
        return 0.0
    match = _DURATION.match(value.strip())
    if not match:
        also = " (every also takes a range such as 2s..8s)" if where.startswith("every=") else ""
        raise FaultSpecError(
            f"{where}: a duration is a number with a unit, such as 500ms, 10s or 2m{also}"
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def _format_value(key: str, value: Any) -> str:
    if key == "every":
        lo, hi = value
        return f"{format_duration(lo)}..{format_duration(hi)}"
    if key == "bytes" and isinstance(value, tuple):
        return f"{value[0]}..{value[1]}"
    if key in ("for", "delay", "jitter"):
        return format_duration(value)
    if key == "p":
        return f"{value:g}"
    return str(value)


def format_duration(seconds: float) -> str:
    """A duration in the grammar's units, exact: 0.1 -> "100ms", 3.0 -> "3s", 90.0 -> "90s"."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000, 3)
    if millis % 1000 == 0:
        return f"{int(millis // 1000)}s"
    return f"{millis:g}ms"


# -- the schedule --------------------------------------------------------------------------

DEFAULT_START_DELAY = 2.0  # seconds for the clients to connect before the first fault


def draw_schedule(
    specs: list[FaultSpec], seed: int, duration: float, start_delay: float = DEFAULT_START_DELAY
) -> list[FaultWindow]:
    """Every window of every spec within `duration` seconds, in order of start.

    Deterministic: the same specs, seed, duration and start_delay give an
    equal list. Offsets are rounded to the millisecond (they are printed,
    written to faults.jsonl and replayed, and must read the same everywhere).
    """
    windows: list[FaultWindow] = []
    for index, spec in enumerate(specs):
        key = spec.key or spec.name
        rng = random.Random(f"rt-chaos:{seed}:{key}")
        lo, hi = spec.every
        start = start_delay + rng.uniform(0, rng.uniform(lo, hi))
        number = 0
        while start < duration:
            number += 1
            begin = round(start, 3)
            end = round(min(begin + spec.duration, duration), 3)
            windows.append(_window(f"{key}#{number}", begin, end, spec, rng.getrandbits(32), index))
            start = max(start + rng.uniform(lo, hi), start + spec.duration)
    windows.sort(key=lambda w: (w.start, w.spec_index))
    return windows


def _window(
    id: str, start: float, end: float, spec: FaultSpec, seed: int, spec_index: int = 0
) -> FaultWindow:
    # A `bytes` range is drawn from the window's own seed, not the spec's
    # stream: the spec's other windows stay the same whatever it draws.
    size = spec.bytes
    if isinstance(size, tuple):
        size = random.Random(f"rt-chaos-bytes:{seed}").randint(*size)
    return FaultWindow(
        id=id, start=start, end=end, spec=spec, seed=seed, spec_index=spec_index, bytes=size
    )


def window_now(spec: FaultSpec, seed: int, id: str, start: float = 0.0) -> FaultWindow:
    """A window of `spec` from `start` for the spec's `for`, outside any
    schedule: a fault started by hand (the control API)."""
    return _window(id, start, start + spec.duration, spec, seed)


# -- targets -------------------------------------------------------------------------------


def _kept_by_p(window: FaultWindow, conn_id: int) -> bool:
    p = 1.0 if window.p is None else window.p
    if p >= 1.0:
        return True
    # Seeded by the window and the connection alone: which connections a
    # window keeps does not depend on which others happen to be open.
    return random.Random(f"rt-chaos-p:{window.seed}:{conn_id}").random() < p


def choose_targets(window: FaultWindow, open_ids: Iterable[int]) -> list[int]:
    """The connections (ids) a network window takes when it starts, in id order.

    `p` keeps each connection with that probability; then `scope=one` keeps
    one of those (chosen by the window's seed) and `scope=all` all of them.
    `refuse` takes none at its start: it hits connections as they open.
    """
    if window.name == "refuse":
        return []
    kept = sorted(i for i in open_ids if _kept_by_p(window, i))
    if window.scope == "one" and kept:
        return [random.Random(f"rt-chaos-one:{window.seed}").choice(kept)]
    return kept


def takes_new(window: FaultWindow, conn_id: int) -> bool:
    """Whether a lasting window takes a connection that opens while it lasts:
    with `scope=all` (and `refuse`, which hits only new ones), as `p` says."""
    if not window.lasting or window.scope == "one":
        return False
    return _kept_by_p(window, conn_id)
