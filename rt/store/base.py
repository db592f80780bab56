"""The Store contract and the writer every store shares (DESIGN.md invariant 1).

A store owns the log. `submit(op)` hands an op to the single writer task,
which, for each batch of queued ops:

1. applies them one at a time, in queue order, against current state, each
   atomically (a savepoint in SQLite), so one bad op fails alone;
2. commits the batch (durable per `sync` before anything is acknowledged);
3. appends the new events to the in-memory window;
4. runs `after_commit` (a test hook, None in production);
5. publishes the new events to `publish` in id order, without blocking,
   and advances `head` in the same step;
6. only then wakes the submitters with their results.

So `head` is always the id of the last *published* event: a subscriber
registered before reading `head` receives every event after it.

Ids are strictly increasing across all flows. `(user, uuid)` is unique:
an op whose uuid that user already used stores nothing and returns the first
result (HTTP 200), or raises `uuid_mismatch` if the op differs.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from rt.core.errors import RtError
from rt.core.events import Event, Flow, MessageState
from rt.core.ops import Op

MAX_BATCH = 512


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


class _Pending:
    __slots__ = ("op", "done", "result", "error")

    def __init__(self, op: Op) -> None:
        self.op = op
        self.done = trio.Event()
        self.result: OpResult | None = None
        self.error: BaseException | None = None


Publish = Callable[[list[Event]], None]


class Store(ABC):
    """The log, message states, users, tokens and flows.

    Use as `async with store:`: entering opens the backing storage and
    starts the writer task; leaving flushes queued ops and closes.
    """

    epoch: str
    head: int

    def __init__(self) -> None:
        self.publish: Publish = lambda events: None
        self.after_commit: Callable[[list[Event]], Awaitable[None]] | None = None
        self._send, self._recv = trio.open_memory_channel[_Pending](10_000)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Store:
        self._running = self._run()
        return await self._running.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._running.__aexit__(*exc_info)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[Store]:
        await self._open()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                try:
                    yield self
                finally:
                    # Stop taking ops; the writer drains what is queued, then ends.
                    self._send.close()
        finally:
            await self._close()

    @abstractmethod
    async def _open(self) -> None:
        """Open storage; set `epoch` and `head`."""

    @abstractmethod
    async def _close(self) -> None: ...

    # -- the writer --------------------------------------------------------

    async def submit(self, op: Op) -> OpResult:
        """Apply `op` through the writer; return once it is committed and published.

        Raises RtError for the op's own failures (404, 403, 409, 400).
        """
        pending = _Pending(op)
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            raise RtError("shutting_down", "the writer queue is full; retry shortly",
                          retry_after=1) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RtError("shutting_down", "the server is stopping; retry shortly",
                          retry_after=2) from None
        # Shielded: once queued, the op will be committed; waiting for it
        # keeps a cancelled handler from reporting a failure that did not happen.
        with trio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _writer(self) -> None:
        async for first in self._recv:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            with trio.CancelScope(shield=True):
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._apply_batch([p.op for p in batch])
        except BaseException as exc:  # the batch failed to commit: nothing was stored
            for pending in batch:
                pending.error = RtError("internal", f"the store failed: {exc!r}; retry")
                pending.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        events = [o.event for o in outcomes if isinstance(o, OpResult) and o.event is not None]
        if events:
            try:
                if self.after_commit is not None:
                    await self.after_commit(events)
                self.publish(events)
            except BaseException:
                # Committed but not published: the hub is broken, and so is the
                # server. Release the submitters (a retry returns the stored
                # result), then crash loudly rather than hang.
                for pending in batch:
                    pending.error = RtError("internal", "the server failed to publish; retry")
                    pending.done.set()
                raise
            self.head = events[-1].id  # type: ignore[assignment]
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, OpResult):
                pending.result = outcome
            else:
                pending.error = outcome
            pending.done.set()

    @abstractmethod
    async def _apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        """Apply ops in order, each atomically, commit once; one outcome per op."""

    # -- reads -------------------------------------------------------------

    @abstractmethod
    async def read(self, flows: Iterable[str], after: int, limit: int) -> list[Event]:
        """Stored events of `flows` with id > after, in id order, at most `limit`.

        Only events up to `head` are guaranteed; later committed ones may appear.
        """

    @abstractmethod
    async def history(
        self, flow: str, *, before: int | None, after: int | None, limit: int,
        tag: str | None = None,
    ) -> list[MessageState]:
        """Message states of `flow` in id order (PROTOCOL.md section 4, GET messages)."""

    @abstractmethod
    async def message(self, message_id: int) -> MessageState | None: ...

    async def uuid_used(self, user: str, uuid: str) -> bool:
        """Whether `user` already used `uuid` (a retry is not rate limited)."""
        return False

    # -- users and tokens --------------------------------------------------

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

    # -- flows -------------------------------------------------------------

    @abstractmethod
    async def create_flow(
        self, name: str, *, private: bool = False, owner: str | None = None,
        members: Iterable[str] = (),
    ) -> Flow:
        """Create a flow; its owner is a member. RtError `exists` if the name is taken."""

    @abstractmethod
    def flow(self, name: str) -> Flow | None:
        """The flow named `name`, or None. Never blocks (served from memory)."""

    @abstractmethod
    def flows(self) -> list[Flow]: ...

    @abstractmethod
    async def add_member(self, flow: str, user: str) -> None: ...

    @abstractmethod
    async def remove_member(self, flow: str, user: str) -> None: ...

    async def refresh(self) -> bool:
        """Pick up changes another process (the `rt` CLI) made; True if any."""
        return False
