"""The two storage contracts: the `Log` (events and message states) and the `Directory`.

A backend is a log and a directory (and, for the node's live state, the
`rt.backend` objects). `MemoryLog`/`MemoryDirectory` and
`SqliteLog`/`SqliteDirectory` implement them and pass the importable
conformance checks in `rt.testing`; `service` and `web` never learn which
they were given.

**The log.** Ids are integers, strictly increasing across all flows: one
total order. `(user, uuid)` is unique: an op whose uuid the user already
used stores nothing and returns the first result (HTTP 200), or fails with
`uuid_mismatch` if it differs (PROTOCOL.md section 2). `apply_batch` applies
ops in order, each atomically against the current state (one bad op fails
alone), and commits them together, as durably as the log promises (SQLite:
its `sync` setting) before it returns. Every committed event reaches the
node's `Feed` exactly once, in id order (`Feed.committed`): a single-node log
hands them over at the end of `apply_batch`, a shared log (Redis) from the
reader its `run()` starts. Reads never block the event loop for long.

**The directory.** Users, tokens (stored hashed), flows and members.
Lookups (`authenticate`, `flow`, `flows`, `user_exists`) are synchronous and
served from memory; changes are async and visible to the lookups of the
same process when they return; changes made by another process reach them
after `refresh()` (which the service calls twice a second).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rt.core.errors import RtError
from rt.core.events import Event, Flow, MessageState
from rt.core.ops import Op

if TYPE_CHECKING:
    from rt.store.feed import Feed


@dataclass(frozen=True, slots=True)
class OpResult:
    """What an op returned: the HTTP status and body, and the new event if one was stored.

    `body` is the stored event's fields, or `{"changed": false, "state": S}`
    for a no-op. `event` is None for a no-op and for a retry of a used uuid.
    """

    status: int
    body: dict[str, Any]
    event: Event | None = None
    replay: bool = False  # a retry of a used uuid: nothing was stored

    @property
    def changed(self) -> bool:
        return "changed" not in self.body


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    guest: bool
    created: int


def new_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored as their SHA-256: a leaked database leaks no credential."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_epoch() -> str:
    return secrets.token_urlsafe(12)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Log(ABC):
    """The event log and message states (see the module docstring for the contract).

    Use as `async with log:` (opens and closes the storage); `attach(feed)`
    before the first `apply_batch`.
    """

    epoch: str
    feed: Feed | None = None
    #: Told, in seconds, how long each batch applied on the event loop's thread held
    #: it (a log that commits elsewhere, in a thread or over the network, tells
    #: nothing): the metrics' `rt_store_hold_seconds`.
    on_hold: Callable[[float], None] | None = None

    def attach(self, feed: Feed) -> None:
        """Hand committed events to `feed` from now on."""
        self.feed = feed

    async def __aenter__(self) -> Log:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Open the storage; set `epoch`."""

    @abstractmethod
    async def close(self) -> None: ...

    async def run(self) -> None:
        """Background work of the log for as long as the node runs (none by default)."""
        return None

    @abstractmethod
    async def tail(self, count: int) -> tuple[int, list[Event]]:
        """The id of the last committed event, and the newest `count` events in id order."""

    @abstractmethod
    async def apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        """Apply `ops` in order, each atomically; commit once; one outcome per op.

        Raises (and stores nothing) if the batch could not be committed.
        """

    @abstractmethod
    async def read(self, flows: Iterable[str], after: int, upto: int, limit: int) -> list[Event]:
        """Committed events of `flows` with after < id <= upto, in id order, at most `limit`."""

    @abstractmethod
    async def history(
        self,
        flow: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        tag: str | None,
        upto: int,
    ) -> list[MessageState]:
        """Message states of `flow` with id <= upto, in id order (PROTOCOL.md 4, GET messages).

        Neither `before` nor `after`: the newest `limit`; `after`: the oldest
        `limit` above it; `before`: the newest `limit` below it; both: the
        oldest `limit` in between. `tag` (normalised) keeps tagged messages only.
        """

    @abstractmethod
    async def message(self, message_id: int) -> MessageState | None: ...

    @abstractmethod
    async def uuid_used(self, user: str, uuid: str) -> bool:
        """Whether `user` already used `uuid` (a retry is not rate limited).

        Answers come back in the order they were asked, so the ops of one
        connection still reach the writer in the order they were sent.
        """


class Directory(ABC):
    """Users, tokens, flows and members (see the module docstring for the contract)."""

    async def __aenter__(self) -> Directory:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create_user(self, name: str, *, guest: bool = False) -> str:
        """Create a user and return their first token. RtError `exists` if taken."""

    @abstractmethod
    async def add_token(self, name: str) -> str:
        """A new token for an existing user (RtError `not_found` otherwise)."""

    @abstractmethod
    async def revoke_tokens(self, name: str) -> None:
        """Revoke every token of the user (RtError `not_found` if no such user)."""

    @abstractmethod
    def authenticate(self, token: str) -> str | None:
        """The user a token belongs to, or None. Never blocks (served from memory)."""

    @abstractmethod
    def user_exists(self, name: str) -> bool: ...

    @abstractmethod
    async def list_users(self) -> list[UserRecord]: ...

    @abstractmethod
    async def create_flow(
        self,
        name: str,
        *,
        private: bool = False,
        owner: str | None = None,
        members: Iterable[str] = (),
    ) -> Flow:
        """Create a flow; its owner is a member. RtError `exists` if the name is taken,
        `not_found` if a named user does not exist."""

    @abstractmethod
    def flow(self, name: str) -> Flow | None:
        """The flow named `name`, or None. Never blocks (served from memory)."""

    @abstractmethod
    def flows(self) -> list[Flow]:
        """Every flow, by name."""

    @abstractmethod
    async def add_member(self, flow: str, user: str) -> None:
        """Add a member (idempotent); RtError `not_found` for an unknown flow or user."""

    @abstractmethod
    async def remove_member(self, flow: str, user: str) -> None:
        """Remove a member (idempotent); RtError `not_found` for an unknown flow."""

    async def refresh(self) -> bool:
        """Pick up changes another process (the `rt` CLI) made; True if any."""
        return False
