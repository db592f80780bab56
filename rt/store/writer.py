"""`BatchWriter`: the single writer task of a node, batching ops into the log.

`submit(op)` queues an op; the writer task takes every op queued so far (at
most `MAX_BATCH`) and has the log apply them as one batch
(`Log.apply_batch`: in queue order, each atomically, one commit). An op is
answered only once its event is committed *and published on this node*
(`Feed.published`), so an acknowledged op's echo is already on its way to
every local stream (docs/architecture.md invariants 1 and 3).

A batch the log fails to commit fails every op in it with `internal`
(retry: nothing was stored); the exception's text goes to the log, never to
the client. Closing the writer stops new ops; those queued are still
applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from rt.core.errors import RtError
from rt.core.ops import Op
from rt.store.contracts import Log, OpResult
from rt.store.feed import Feed, PublishFailed

MAX_BATCH = 512
QUEUE = 10_000

log = logging.getLogger("rt")


class _Pending:
    __slots__ = ("op", "done", "outcome")

    def __init__(self, op: Op) -> None:
        self.op = op
        self.done = trio.Event()
        self.outcome: OpResult | RtError | None = None


class BatchWriter:
    """The node's writer (see the module docstring). Run `run()` in a nursery."""

    def __init__(self, log: Log, feed: Feed, on_batch: Callable[[int], None] | None = None) -> None:
        self.log = log
        self.feed = feed
        self.on_batch = on_batch  # told each batch's size (the metrics)
        self._send, self._recv = trio.open_memory_channel[_Pending](QUEUE)
        self._outstanding = 0  # ops submitted and not yet answered
        self._quiet = trio.Event()  # set (and replaced) each time that falls to 0

    @property
    def busy(self) -> bool:
        """Whether an op is queued or being applied on this node: more events are on
        their way (a poll lingers for them, docs/decisions.md)."""
        return self._outstanding > 0

    async def quiet(self) -> None:
        """Return once no op is queued or being applied (at once if none is). Every op
        answered by then is also published on this node."""
        while self._outstanding:
            await self._quiet.wait()

    async def submit(self, op: Op) -> OpResult:
        """Apply `op`; return once it is committed and published on this node.

        Raises RtError for the op's own failures (404, 403, 409, 400), and
        `shutting_down` (retry) when the queue is full or the writer stopped.
        """
        pending = _Pending(op)
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            raise RtError(
                "shutting_down", "the writer queue is full; retry shortly", retry_after=1
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RtError(
                "shutting_down", "the server is stopping; retry shortly", retry_after=2
            ) from None
        self._outstanding += 1
        # Shielded: once queued, the op will be committed; waiting for it keeps a
        # cancelled handler from reporting a failure that did not happen.
        try:
            with trio.CancelScope(shield=True):
                await pending.done.wait()
                outcome = pending.outcome
                if isinstance(outcome, OpResult) and isinstance(outcome.body.get("id"), int):
                    await self.feed.published(outcome.body["id"])  # a replay too
        finally:
            self._outstanding -= 1
            if not self._outstanding:
                self._quiet.set()
                self._quiet = trio.Event()
        if isinstance(outcome, RtError):
            raise outcome
        assert outcome is not None
        return outcome

    def close(self) -> None:
        """Take no more ops; `run()` applies what is queued, then returns."""
        self._send.close()

    async def run(self) -> None:
        async for first in self._recv:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if self.on_batch is not None:
                self.on_batch(len(batch))
            with trio.CancelScope(shield=True):
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self.log.apply_batch([p.op for p in batch])
        except PublishFailed as exc:
            # Committed but not published: the hub is broken, and so is the server.
            # Release the submitters (a retry returns the stored result), then
            # crash loudly rather than go on with a gap.
            self._fail(batch, "the server failed to publish the op; retry")
            raise exc.__cause__ or exc from None
        except RtError as error:  # the log says why (its storage is unreachable: 503)
            for pending in batch:
                pending.outcome = error
                pending.done.set()
            return
        except BaseException as exc:
            # The batch failed to commit: nothing was stored.
            log.error("rt: a batch of %d ops failed in the log", len(batch), exc_info=exc)
            self._fail(batch, "the server failed to store the op; retry")
            if not isinstance(exc, Exception):
                raise
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            pending.done.set()

    @staticmethod
    def _fail(batch: list[_Pending], message: str) -> None:
        for pending in batch:
            pending.outcome = RtError("internal", message)
            pending.done.set()
