"""`rt serve --chaos SPEC`: rt gives, at random but seeded, every legal and rare answer.

For the race lab (LAB.md section 4, fault `server`) and for anyone testing a
client by hand. Each kind is something PROTOCOL.md allows and a healthy
server does only rarely, so a client that mishandles it goes unnoticed:

| kind | what happens, at random times |
|---|---|
| `lagging` | a random stream ends with `close` `lagging` (`retry_ms` 0 to 1000) |
| `superseded` | a random stream or polling session ends with `close` `superseded` |
| `shutdown` | a random stream ends with `close` `shutdown` (`retry_ms` 1000 to 5000) |
| `rotate` | a random xhr, multipart or htmlfile stream rotates now (tiny rotation) |
| `429` | the next op answers 429 `rate_limited` with `Retry-After` |
| `503` | the next op, stream or poll request answers 503 `shutting_down` (draining) |
| `ack_after_echo` | the next op is acknowledged only well after its echo went out |
| `slow_ack` | the next op is acknowledged 0.5 to 2 s after its commit |
| `signal` | not random: SIGUSR1 cuts every open connection at once (`rt bench storm`) |

SPEC is `all` (every kind but `signal`), or comma-separated kinds, each `KIND` or `KIND:every=DURATION`
(the mean interval between two of that kind, default 10 s; `500ms`, `3s`,
`1m`); `all:every=D` sets every kind's interval. The random choices come
from `--chaos-seed`. Off by default; when on, rt logs a warning at start and
a line for each answer it forces. SIGUSR2 stops it for good (the race lab
sends it when its faults stop, so the clients can catch up in peace). Nothing reachable over HTTP turns it on.
With it off, the service holds `None` and every hot path pays one `is None`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import trio

from rt.core.errors import RtError

log = logging.getLogger("rt.chaos")

STREAM_KINDS = ("lagging", "superseded", "shutdown", "rotate")
REQUEST_KINDS = ("429", "503", "ack_after_echo", "slow_ack")
SIGNAL = "signal"  # the web layer's: SIGUSR1 cuts every connection (not random)
KINDS = STREAM_KINDS + REQUEST_KINDS
DEFAULT_EVERY = 10.0
ROTATING = frozenset({"xhr", "multipart", "htmlfile"})


class ChaosSpecError(ValueError):
    """A `--chaos` SPEC that does not parse; the message says what is allowed."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ChaosSpecError(f"{text!r} is not a duration (say 500ms, 3s or 1m)")
    value = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match[2]]
    if value <= 0:
        raise ChaosSpecError(f"{text!r}: an interval must be above zero")
    return value


def parse_spec(spec: str) -> dict[str, float]:
    """SPEC as {kind: mean interval in seconds}; raises ChaosSpecError."""
    every: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, *options = part.split(":")
        interval = DEFAULT_EVERY
        for option in options:
            key, sep, value = option.partition("=")
            if key != "every" or not sep:
                raise ChaosSpecError(f"{option!r} in {part!r}: the only key is every=DURATION")
            interval = parse_duration(value)
        if name == "all":
            every.update(dict.fromkeys(KINDS, interval))
        elif name in KINDS or name == SIGNAL:
            every[name] = interval
        else:
            raise ChaosSpecError(
                f"unknown chaos kind {name!r}; the kinds are all, " + ", ".join((*KINDS, SIGNAL))
            )
    if not every:
        raise ChaosSpecError("an empty --chaos SPEC; say all, or some of " + ", ".join(KINDS))
    return every


@dataclass
class _Armed:
    """How many of each request kind are due: the next requests take them."""

    rate_limited: int = 0
    draining: int = 0
    ack_after_echo: int = 0
    slow_ack: int = 0


class Chaos:
    """The forced answers of one server, drawn from one seeded generator.

    `run()` arms them on schedule; the service asks at its few decision
    points: `check_op()` (may raise 429), `check_request()` (may raise 503)
    and `ack_delay()` (seconds to hold an op's answer back).
    """

    def __init__(self, spec: str, seed: int | None, sessions: Callable[[], list]) -> None:
        self.every = parse_spec(spec)
        self.random = random.Random(seed)
        self._sessions = sessions
        self._armed = _Armed()
        self.forced: dict[str, int] = dict.fromkeys(self.every, 0)
        self.stopped = False
        self._scope = trio.CancelScope()

    def describe(self) -> str:
        return ", ".join(f"{kind} every ~{every:g}s" for kind, every in self.every.items())

    async def run(self) -> None:
        log.warning(
            "rt: --chaos is ON: this server forces rare answers on purpose (%s). "
            "Never run it for real users.",
            self.describe(),
        )
        with self._scope:
            async with trio.open_nursery() as nursery:
                for kind, every in self.every.items():
                    if kind != SIGNAL:
                        nursery.start_soon(self._arm_every, kind, every)

    def stop(self) -> None:
        """Force nothing more, from now on (the race lab's end of faults: SIGUSR2)."""
        if not self.stopped:
            self.stopped = True
            self._armed = _Armed()
            self._scope.cancel()
            log.warning("rt: --chaos stopped: this server answers normally from now on")

    async def _arm_every(self, kind: str, every: float) -> None:
        while True:
            await trio.sleep(self.random.expovariate(1.0 / every))
            self.force(kind)

    def force(self, kind: str) -> bool:
        """Force one answer of `kind` now (or arm it for the next request)."""
        if self.stopped:
            return False
        if kind in STREAM_KINDS:
            # A polling session is hit only while a poll waits, so the close is
            # its answer (between polls, ending it would only start a new one).
            candidates = [
                s
                for s in self._sessions()
                if s.ended is None
                and (
                    (kind == "superseded" and s.pending)
                    if s.is_polling
                    else kind != "rotate" or s.transport in ROTATING
                )
            ]
            if not candidates:
                return False
            session = self.random.choice(sorted(candidates, key=lambda s: s.key))
            log.info("rt chaos: %s for a %s stream", kind, session.transport)
            session.end(kind)
        else:
            attribute = {"429": "rate_limited", "503": "draining"}.get(kind, kind)
            setattr(self._armed, attribute, getattr(self._armed, attribute) + 1)
            log.info("rt chaos: %s armed for the next request", kind)
        self.forced[kind] += 1
        return True

    def check_op(self) -> None:
        """Raise 429 if one is armed (ops only)."""
        if self._armed.rate_limited:
            self._armed.rate_limited -= 1
            raise RtError(
                "rate_limited",
                "too many operations; slow down (rt --chaos)",
                retry_after=self.random.uniform(0.2, 1.5),
            )

    def check_request(self) -> None:
        """Raise 503 if one is armed (ops, stream and poll requests)."""
        if self._armed.draining:
            self._armed.draining -= 1
            raise RtError(
                "shutting_down",
                "the server is restarting; retry shortly (rt --chaos)",
                retry_after=self.random.uniform(0.5, 2.0),
            )

    def ack_delay(self) -> float:
        """Seconds to hold back the answer of an op that has just committed."""
        armed = self._armed
        if armed.slow_ack:
            armed.slow_ack -= 1
            return self.random.uniform(0.5, 2.0)
        if armed.ack_after_echo:
            armed.ack_after_echo -= 1
            return self.random.uniform(0.05, 0.2)
        return 0.0
