"""Which TCP connections rt serves, and for how long before their first request (issue 10).

Every connection an attacker can open for free costs rt a file descriptor
and memory. These bounds hold before any HTTP is parsed, on every path (the
raw WebSocket route and hypercorn's), in rt's TCP layer
(`hypercorn_guard.GuardedTCPServer`):

* **Connection caps.** At most `max_connections` open at once, and at most
  `max_connections_per_address` from one client address. A connection over
  a cap is answered at once with a short HTTP error (503 over the total, 429
  over the address's share, each with `Retry-After`) and closed, without
  reading anything from it. `0` means no cap; the total cap's default
  (`auto`) is the process's open-file limit less a reserve for the store
  and logs, so that connections alone never exhaust descriptors.
* **The first request head** must arrive within `head_timeout` seconds and
  fit in `max_head` bytes: a client that sends nothing is closed silently,
  one that sends a partial head in time gets 408, one that sends too much
  gets 431. (Later heads on a kept-alive connection are bounded by the
  keep-alive timeout, which runs until a whole request has arrived.)
* **No HTTP/2 in clear text.** A connection that opens with the HTTP/2
  preface gets 505 and is closed; an `Upgrade: h2c` request is served over
  HTTP/1.1 (`hypercorn_guard` ignores the upgrade). HTTP/2 streams are not
  bounded by rt's write deadline, so rt does not offer them (README).

`Admission` is synchronous bookkeeping with no I/O; the guard does the
reads and writes.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Descriptors kept back from the automatic connection cap: the SQLite files
#: and their WAL, log files, the listening sockets, the `rt` CLI's checks.
FD_RESERVE = 64

H2_PREFACE = b"PRI * HTTP/2.0\r\n"


@dataclass(frozen=True)
class AdmissionLimits:
    """The bounds above; `max_connections` None means the automatic cap."""

    max_connections: int | None = None
    max_connections_per_address: int = 1000
    head_timeout: float = 10.0
    max_head: int = 16 * 1024

    def total_cap(self) -> int:
        """The cap on open connections now in force (0: none)."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 0
        return max(16, soft - FD_RESERVE)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit; returns (soft, hard).

    What `rt serve` does at start (as Go and nginx servers do), so that the
    automatic connection cap is as high as the machine allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def http_refusal(
    status: int, reason: str, message: str, code: str, retry_after: int | None = None
) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection (PROTOCOL.md 4 body)."""
    body = b'{"error":{"code":"%s","message":"%s"}}' % (code.encode(), message.encode())
    head = [
        b"HTTP/1.1 %d %s" % (status, reason.encode()),
        b"content-type: application/json; charset=utf-8",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


OVER_TOTAL = http_refusal(
    503,
    "Service Unavailable",
    "the server is at its connection limit (--max-connections); retry after Retry-After",
    "internal",
    retry_after=1,
)
OVER_ADDRESS = http_refusal(
    429,
    "Too Many Requests",
    "too many connections from your address "
    "(--max-connections-per-address); close some, then retry",
    "rate_limited",
    retry_after=1,
)
HEAD_TIMEOUT = http_refusal(
    408,
    "Request Timeout",
    "the request head did not arrive within the head timeout (--head-timeout)",
    "bad_request",
)
HEAD_TOO_LARGE = http_refusal(
    431,
    "Request Header Fields Too Large",
    "the request head is larger than --max-head bytes",
    "too_large",
)
NO_HTTP2 = http_refusal(
    505,
    "HTTP Version Not Supported",
    "rt speaks HTTP/1.1 (and HTTP/1.0); it does not offer HTTP/2 in clear text",
    "bad_request",
)


class Admission:
    """Counts open connections, in total and per client address.

    `admit(address, connection)` either takes a place and returns None, or
    returns the refusal to write (and takes nothing). Every admitted
    connection must be given back with `release(address, connection)`
    exactly once. `connections()` lists the admitted ones (the benchmarks'
    SIGUSR1 cut closes them all).
    """

    __slots__ = ("limits", "_cap", "_open", "_by_address", "_connections")

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._cap = limits.total_cap()
        self._open = 0
        self._by_address: Counter[str] = Counter()
        self._connections: set[Any] = set()

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def open(self) -> int:
        return self._open

    def connections(self) -> list[Any]:
        return list(self._connections)

    def admit(self, address: str, connection: Any = None) -> bytes | None:
        if self._cap and self._open >= self._cap:
            return OVER_TOTAL
        per_address = self.limits.max_connections_per_address
        if per_address and self._by_address[address] >= per_address:
            return OVER_ADDRESS
        self._open += 1
        self._by_address[address] += 1
        if connection is not None:
            self._connections.add(connection)
        return None

    def release(self, address: str, connection: Any = None) -> None:
        self._connections.discard(connection)
        self._open -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]


def head_problem(data: bytes, limits: AdmissionLimits) -> bytes | None:
    """The refusal for a first request head read so far (None: serve it).

    `data` is what arrived before the head timeout or the size limit: a
    complete head ends with a blank line.
    """
    if data.startswith(H2_PREFACE):
        return NO_HTTP2
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return HEAD_TOO_LARGE if len(data) >= limits.max_head else HEAD_TIMEOUT
    if end + 4 > limits.max_head:
        return HEAD_TOO_LARGE
    return None
