"""What a transport runner is given (`Link`) and what it returns (`End`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rt.client.retry import parse_retry_after

if TYPE_CHECKING:
    from rt.client.client import Timeouts
    from rt.client.http import HttpPool, Origin, Response


@dataclass(frozen=True)
class Closed:
    """The server ended the stream with a `close` frame (or the WebSocket close code that
    stands for one): `reason` as PROTOCOL.md section 3 names it."""

    reason: str
    retry_ms: Any = None


@dataclass(frozen=True)
class Refused:
    """The server refused the request: an HTTP status (or the one a WebSocket close code
    before `ready` stands for), rt's error code when it sent one, `Retry-After` in seconds."""

    status: int
    code: str | None = None
    message: str = ""
    retry_after: float | None = None

    @classmethod
    def of(cls, response: Response) -> Refused:
        code, message = response.error()
        return cls(
            response.status, code, message, parse_retry_after(response.header("retry-after"))
        )


@dataclass(frozen=True)
class Lost:
    """The connection ended without a word from the server (it ended, or went silent)."""

    why: str


End = Closed | Refused | Lost


class Link(Protocol):
    """One connection attempt of a client, as its transport runner sees it.

    - `target(callback)`: the path and query of the stream request, with the
      client's current cursor, epoch and client id (read at each call: a
      poll asks with the cursor the last answer left).
    - `feed(objects)`: hand over what arrived, in order; returns the `End`
      when a `close` frame came (the runner stops there), else None. Raises
      ProtocolError for objects that break the protocol.
    - `ready`: a `ready` arrived (for polling: the session answers).
      `continued()`: a poll was answered without `ready` because the
      server's polling session went on from our cursor (PROTOCOL.md 3.2).
    - `read_timeout()`: how long the runner may wait for the next byte:
      2.5 heartbeats once ready, the time left for `ready` before.
    - `heartbeat`, `poll_timeout`: from the last `ready` (seconds).
    """

    transport: str
    origin: Origin
    headers: list[tuple[str, str]]
    timeouts: Timeouts
    ready: bool
    heartbeat: float
    poll_timeout: float
    poll_pool: HttpPool
    callback: str

    def target(self) -> str: ...

    def feed(self, objects: list[dict[str, Any]]) -> End | None: ...

    def continued(self) -> None: ...

    def read_timeout(self) -> float: ...

    def has_cursor(self) -> bool: ...
