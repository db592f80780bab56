"""Ids, backoff and the retry rules of PROTOCOL.md section 4 (pure, no I/O)."""

from __future__ import annotations

import email.utils
import random
import re
import secrets
import time

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
UUID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
FLOW_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def make_client_id() -> str:
    """A fresh client id: 22 characters of `A-Za-z0-9_-` (128 random bits)."""
    return secrets.token_urlsafe(16)


def make_uuid() -> str:
    """A fresh op uuid: 22 characters of `A-Za-z0-9_-` (128 random bits)."""
    return secrets.token_urlsafe(16)


def check_flow(flow: object) -> str:
    if not isinstance(flow, str) or not FLOW_RE.fullmatch(flow):
        raise ValueError(
            f"not a flow name: {flow!r} (1 to 64 of a-z 0-9 _ -, starting with a letter or digit)"
        )
    return flow


def check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
        raise ValueError(f"not a client id: {client_id!r} (16 to 64 of A-Za-z0-9_-)")
    return client_id


class Backoff:
    """Delays between reconnection attempts: random in [0, min(cap, base * 2**n)].

    `n` counts failures in a row. Fast at first (the first retry waits at
    most `base`), never more than `cap`. A stream that reached `ready` brings
    `n` down to at most `after_ready` (the server answers: come back soon if
    it breaks), and one that stayed up long enough resets it (`reset()`).
    """

    def __init__(
        self,
        base: float = 0.2,
        cap: float = 5.0,
        *,
        after_ready: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.after_ready = after_ready
        self.n = 0
        self._rng = rng or random.Random()

    def ceiling(self, n: int | None = None) -> float:
        n = self.n if n is None else n
        return min(self.cap, self.base * 2 ** min(max(n, 0), 30))

    def next(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = self._rng.uniform(0, self.ceiling())
        self.n += 1
        return delay

    def opened(self) -> None:
        self.n = min(self.n, self.after_ready)

    def reset(self) -> None:
        self.n = 0

    def uniform(self, low: float, high: float) -> float:
        return self._rng.uniform(low, high)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


# 4xx statuses after which the same op (same uuid) may succeed later.
RETRY_STATUSES = frozenset({408, 429})


def classify(status: int) -> str:
    """ "ok", "retry" or "fail" for an op answered with HTTP `status` (PROTOCOL.md section 4).

    Retry: 429 and 503 (after `Retry-After`), 408, and every other 5xx.
    Fail: every other 4xx (400, 401, 403, 404, 409, 413, ...) and anything
    that is not a status an rt server sends for an op (1xx leftovers, 3xx).
    """
    if 200 <= status < 300:
        return "ok"
    if status >= 500 or status in RETRY_STATUSES:
        return "retry"
    return "fail"


def clamp(value: object, low: float, high: float) -> float | None:
    """`value` (a JSON number) clamped to [low, high], or None if it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return min(high, max(low, float(value)))
