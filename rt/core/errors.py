"""Error codes of PROTOCOL.md section 4, with their HTTP statuses, WebSocket
close codes and whether the client may retry the same operation.

`RtError` is the one exception the service raises for anything a client did
or may do again; rt/web translates it to a response once, at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    """One error code: its HTTP status, WebSocket close code and retry flag."""

    name: str
    status: int
    close_code: int
    retry: bool


CODES: dict[str, Code] = {
    c.name: c
    for c in (
        Code("bad_request", 400, 4400, False),
        Code("unauthorized", 401, 4001, False),
        Code("forbidden", 403, 4003, False),
        Code("not_found", 404, 4004, False),
        Code("exists", 409, 4400, False),
        Code("deleted", 409, 4400, False),
        Code("uuid_mismatch", 409, 4400, False),
        Code("too_large", 413, 1009, False),
        Code("rate_limited", 429, 4029, True),
        Code("shutting_down", 503, 1001, True),
        Code("internal", 500, 1011, True),
    )
}

# WebSocket close codes for stream ends (PROTOCOL.md section 6).
CLOSE_CODES: dict[str, int] = {
    "shutdown": 1001,
    "unauthorized": 4001,
    "superseded": 4009,
    "lagging": 4010,
    "evicted": 4011,
    "rotate": 1000,
    "silent": 4408,
}


class RtError(Exception):
    """A failure to report to the client with a PROTOCOL.md error code.

    `message` says whose fault it is and what to do next. `retry_after` (in
    seconds) is set for `rate_limited` and `shutting_down`.
    """

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return CODES[self.code].status

    @property
    def close_code(self) -> int:
        return CODES[self.code].close_code

    @property
    def retry(self) -> bool:
        return CODES[self.code].retry

    def body(self) -> dict:
        """The HTTP error body `{"error":{"code","message"}}`."""
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"RtError({self.code!r}, {self.message!r})"


def bad_request(message: str) -> RtError:
    return RtError("bad_request", message)
