"""The live state a node shares with the others: tickets, presence, stream claims, the
ephemeral bus. With the log and the directory (rt/store/contracts.py) they are a
backend (`Backend`), handed to the service whole.

The local implementations (rt/backend/local.py) keep everything in this
process; a shared backend (Redis) keeps the same promises across nodes.
Each contract has an importable conformance check in `rt.testing`.

**Tickets** (PROTOCOL.md section 4): `issue` makes a ticket for one user and
client id, `redeem` checks it and extends its life; a ticket lapses `ttl`
seconds after its last use.

**Presence** (PROTOCOL.md section 5): `join`/`leave` count a user's
claimants per flow; `online` and `snapshot` answer from memory, at once, so
a stream's `ready` carries a snapshot taken in the same step as its
subscription; `online`/`offline` changes go out on the bus once per user and
flow, `offline` only `grace` seconds after the last claimant left.

**Claims** (docs/architecture.md invariant 5): one live claimant (stream or polling
session) per (user, client id). `claim` registers a new one, ends the
previous one at once, waits for it at most `write_timeout`, and says whether
the new one is still the claimant; a user's claimants past `max_streams`
are evicted, oldest first. `release` forgets a claimant only if it is still
the registered one.

**The bus** carries ephemeral events (presence, typing) to every node's hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from rt.core.events import Event


class Claimant(Protocol):
    """What claims need of a stream or polling session."""

    user: str
    client: str
    done: trio.Event

    @property
    def key(self) -> tuple[str, str]: ...

    @property
    def ended(self) -> Any: ...

    def end(self, reason: str) -> None: ...


class Ticket(Protocol):
    user: str
    client: str
    token: str


class Tickets(Protocol):
    async def issue(self, user: str, client: str, token: str) -> tuple[str, int]:
        """A new ticket and when it lapses if unused (Unix ms)."""
        ...

    async def redeem(self, ticket: str, client: str) -> Ticket:
        """The ticket, its life extended; RtError `unauthorized` if unknown, lapsed or for
        another client id."""
        ...


class Presence(Protocol):
    def join(self, user: str, flows: Iterable[str]) -> None: ...

    def leave(self, user: str, flows: Iterable[str]) -> None: ...

    def leave_now(self, user: str, flows: Iterable[str]) -> None:
        """Announce `offline` at once (access revoked), whatever else is open."""
        ...

    def online(self, flow: str) -> list[str]: ...

    def snapshot(self, flows: Iterable[str]) -> dict[str, list[str]]: ...

    async def run(self) -> None:
        """Announce offlines as they fall due, for ever."""
        ...


class Claims(Protocol):
    on_takeover: Callable[[Any], None]

    def __len__(self) -> int: ...

    def claimants(self) -> list[Any]: ...

    def holder(self, key: tuple[str, str]) -> Any | None:
        """The registered claimant of (user, client id), if any."""
        ...

    async def claim(self, claimant: Any) -> bool:
        """Make `claimant` the claimant of its key; False if a newer one won meanwhile.

        When a polling session moves here from another node, the old one's
        `handover()` reaches `claimant.take_handover(data)` before this returns
        (None if that node did not answer in time).
        """
        ...

    async def elsewhere(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The claim of `key` held by a live claimant on another node: its `kind`
        (`poll` or `stream`), `flows` and `transport`; None if there is none."""
        ...

    def release(self, claimant: Any) -> None: ...


class Bus(Protocol):
    def publish(self, event: Event) -> None:
        """Deliver an ephemeral event to every node's hub (never blocks)."""
        ...

    async def run(self) -> None: ...


class RateLimit(Protocol):
    """Token buckets by key (a user, a polling session, an address), shared by the nodes.

    `take(key)` spends one token and returns 0.0, or the seconds until one is
    available (spending nothing); `refund(key)` gives the last one back.
    """

    async def take(self, key: str) -> float: ...

    async def refund(self, key: str) -> None: ...
