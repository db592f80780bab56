"""`SqliteLog`: the event log and message states in rt's SQLite file (docs/architecture.md section 4).

Connections, each used by one thread at a time:

- the **writer** connection, used only by `apply_batch` through a
  `CapacityLimiter(1)` of its own: each batch of ops is applied in one
  transaction, each op in a savepoint, and committed once. With `--sync
  normal` (no fsync at commit in WAL mode) a batch of at most `INLINE_MAX`
  ops is applied on the Trio thread itself: it costs tens of microseconds,
  less than the hop to a worker thread and back (docs/decisions.md, Speed
  round two). Bigger batches, `--sync full` (an fsync per commit), and a
  file another process holds locked go to a worker thread, so no store call
  blocks the event loop for long. The writer connection never checkpoints
  then (`wal_autocheckpoint` 0): `run` does, in a worker thread on a
  connection of its own, after `CHECKPOINT_OPS` ops or a second (the
  checkpoints are where `--sync normal` fsyncs);
- a small pool of **read** connections for catch-up, history and message
  reads, behind another limiter, so reads never starve commits;
- one for `uuid_used`, which answers in the order it is asked.

The schema and the file's settings are rt/store/sqlite_files.py's.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
import trio

from rt.core.errors import RtError
from rt.core.events import Event, MessageState
from rt.core.ops import Change, Op, next_state, plan
from rt.store.contracts import Log, OpResult, now_ms
from rt.store.sqlite_files import (
    BUSY_TIMEOUT_MS,
    STATE_COLUMNS,
    check_sync,
    connect,
    dumps,
    prepare,
    state_from_row,
)

READERS = 4
# A batch of at most this many ops commits on the Trio thread (--sync normal):
# a lone op's latency is what the thread hop costs most (docs/decisions.md);
# under load batches grow, the hop is shared, and the loop stays free.
INLINE_MAX = 4
# With inline commits the WAL is checkpointed in a worker thread once this many
# ops were committed since the last checkpoint, or a second after any were.
CHECKPOINT_OPS = 1000
CHECKPOINT_EVERY = 1.0
# A disk read for at most this many flows uses one indexed query per flow
# (each reads at most `limit` rows); for more, one scan of the id range.
PER_FLOW_READ_MAX = 32

_T = TypeVar("_T")


class SqliteLog(Log):
    def __init__(self, path: str | os.PathLike[str], *, sync: str = "normal") -> None:
        self.path = os.fspath(path)
        self.sync = check_sync(sync)
        self.epoch = ""
        self._writer_conn: sqlite3.Connection | None = None
        self._writer_limiter = trio.CapacityLimiter(1)
        self._readers: list[sqlite3.Connection] = []
        self._read_slots = trio.Semaphore(READERS)
        self._read_limiter = trio.CapacityLimiter(READERS)
        self._uuids: sqlite3.Connection | None = None
        self._uuid_limiter = trio.CapacityLimiter(1)  # FIFO: see uuid_used
        self.inline = self.sync == "normal"  # small batches commit on the Trio thread
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_limiter = trio.CapacityLimiter(1)
        self._checkpoint_due = trio.Event()
        self._unchecked = 0  # ops committed since the last checkpoint
        self.checkpoints = 0  # checkpoints done by `run`

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        conns: list[sqlite3.Connection] = []
        try:
            writer = connect(self.path, self.sync)
            conns.append(writer)
            self.epoch = prepare(writer, self.path)
            for _ in range(READERS + 2):
                conns.append(connect(self.path, self.sync))
            if self.inline:
                # The loop must not wait on another process's lock, nor checkpoint.
                writer.execute("PRAGMA busy_timeout = 0")
                writer.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        self._writer_conn = writer
        self._readers = conns[1 : 1 + READERS]
        self._uuids = conns[-2]
        self._checkpointer = conns[-1]

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            # Wait for reads in flight: a connection must not close under its thread.
            for _ in range(READERS):
                await self._read_slots.acquire()
            async with self._uuid_limiter, self._writer_limiter, self._checkpoint_limiter:
                conns = [self._writer_conn, *self._readers, self._uuids, self._checkpointer]
                self._writer_conn = self._uuids = self._checkpointer = None
                self._readers = []
                for conn in conns:
                    if conn is not None:
                        conn.close()
            for _ in range(READERS):
                self._read_slots.release()

    async def tail(self, count: int) -> tuple[int, list[Event]]:
        return await self._read(_tail, count)

    # -- the writer --------------------------------------------------------

    async def apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        conn = self._writer_conn
        assert conn is not None, "the log is not open"
        outcomes = None
        if self.inline and len(ops) <= INLINE_MAX:
            async with self._writer_limiter:
                started = time.perf_counter()
                try:
                    outcomes = self._apply_batch_sync(conn, list(ops))
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                finally:
                    if self.on_hold is not None:
                        self.on_hold(time.perf_counter() - started)
                    # Another process (the `rt` CLI) holds the file's write lock:
                    # wait for it in a thread, as without inline commits.
        if outcomes is None:
            outcomes = await trio.to_thread.run_sync(
                self._apply_batch_waiting, conn, list(ops), limiter=self._writer_limiter
            )
        self._unchecked += len(ops)
        if self._unchecked >= CHECKPOINT_OPS:
            self._checkpoint_due.set()
        events = [o.event for o in outcomes if isinstance(o, OpResult) and o.event is not None]
        if events and self.feed is not None:
            await self.feed.committed(events)
        return outcomes

    def _apply_batch_waiting(
        self, conn: sqlite3.Connection, ops: list[Op]
    ) -> list[OpResult | RtError]:
        """`_apply_batch_sync` in a worker thread, waiting for another process's lock."""
        if not self.inline:
            return self._apply_batch_sync(conn, ops)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            return self._apply_batch_sync(conn, ops)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    async def run(self) -> None:
        """Checkpoint the WAL off the event loop (inline commits never do)."""
        if not self.inline:
            return
        while True:
            with trio.move_on_after(CHECKPOINT_EVERY):
                await self._checkpoint_due.wait()
            self._checkpoint_due = trio.Event()
            if self._unchecked and self._checkpointer is not None:
                self._unchecked = 0
                await trio.to_thread.run_sync(
                    _checkpoint, self._checkpointer, limiter=self._checkpoint_limiter
                )
                self.checkpoints += 1

    def _apply_batch_sync(
        self, conn: sqlite3.Connection, ops: list[Op]
    ) -> list[OpResult | RtError]:
        outcomes: list[OpResult | RtError] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    outcome = self._apply_one(conn, op, last + 1)
                except RtError as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append(exc)
                    continue
                conn.execute("RELEASE op")
                outcomes.append(outcome)
                if outcome.event is not None:
                    last = outcome.event.id
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _apply_one(self, conn: sqlite3.Connection, op: Op, event_id: int) -> OpResult:
        """Apply one op inside the open savepoint, exactly as MemoryLog._apply."""
        seen = conn.execute(
            "SELECT fingerprint, event_id, body FROM ops WHERE user = ? AND uuid = ?",
            (op.user, op.uuid),
        ).fetchone()
        if seen is not None:
            fingerprint, seen_id, body = seen
            if fingerprint != op.fingerprint:
                raise RtError(
                    "uuid_mismatch",
                    f"uuid {op.uuid} was used for another op; make a new uuid for a new op",
                )
            if seen_id is not None:
                row = conn.execute("SELECT body FROM events WHERE id = ?", (seen_id,)).fetchone()
                return OpResult(200, orjson.loads(row[0]), replay=True)
            return OpResult(200, orjson.loads(body), replay=True)
        state = None
        if op.message is not None:
            row = conn.execute(
                f"SELECT {STATE_COLUMNS} FROM messages WHERE id = ?", (op.message,)
            ).fetchone()
            state = state_from_row(row) if row is not None else None
        owner = None
        if op.kind == "delete":
            row = conn.execute("SELECT owner FROM flows WHERE name = ?", (op.flow,)).fetchone()
            owner = row[0] if row is not None else None
        decision = plan(op, state, owner)
        if not isinstance(decision, Change):
            body = decision.body()
            conn.execute(
                "INSERT INTO ops VALUES (?, ?, ?, NULL, ?)",
                (op.user, op.uuid, op.fingerprint, dumps(body)),
            )
            return OpResult(200, body)
        data = {"id": event_id, **decision.fields, "sent": now_ms()}
        new = next_state(state, data)
        kind = data["type"]
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                data["flow"],
                kind,
                data["user"],
                data["sent"],
                data["uuid"],
                new.id,
                dumps(data),
            ),
        )
        conn.execute(
            f"INSERT OR REPLACE INTO messages ({STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.id,
                new.flow,
                new.user,
                new.sent,
                new.content,
                dumps(list(new.tags)),
                None if new.edited is False else new.edited,
                int(new.deleted),
            ),
        )
        if kind == "tag":
            assert state is not None
            old, now = set(state.tags), set(new.tags)
            conn.executemany(
                "DELETE FROM message_tags WHERE flow = ? AND tag = ? AND message = ?",
                [(new.flow, t, new.id) for t in old - now],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO message_tags VALUES (?, ?, ?)",
                [(new.flow, t, new.id) for t in now - old],
            )
        elif kind == "delete":
            rows = conn.execute(
                "SELECT id, body FROM events WHERE message = ? AND type IN ('message', 'edit')",
                (new.id,),
            ).fetchall()
            conn.executemany(
                "UPDATE events SET body = ? WHERE id = ?",
                [(dumps({**orjson.loads(body), "content": ""}), id_) for id_, body in rows],
            )
        conn.execute(
            "INSERT INTO ops VALUES (?, ?, ?, ?, NULL)",
            (op.user, op.uuid, op.fingerprint, event_id),
        )
        event = Event(data)
        return OpResult(201 if kind == "message" else 200, event.data, event)

    # -- reads -------------------------------------------------------------

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(conn, *args)` in a thread on a free read connection."""
        async with self._read_slots:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(fn, conn, *args, limiter=self._read_limiter)
            finally:
                self._readers.append(conn)

    async def read(self, flows: Iterable[str], after: int, upto: int, limit: int) -> list[Event]:
        wanted = sorted(set(flows))
        if limit <= 0 or not wanted:
            return []
        return await self._read(_read_events, wanted, after, upto, limit)

    async def history(self, flow, *, before, after, limit, tag, upto):
        if limit <= 0:
            return []
        return await self._read(_history, flow, before, after, limit, tag, upto)

    async def message(self, message_id: int) -> MessageState | None:
        return await self._read(_message, message_id)

    async def uuid_used(self, user: str, uuid: str) -> bool:
        # One connection behind a FIFO limiter, entered with no checkpoint before
        # it: the answers come back in the order they were asked, so ops that one
        # connection sends back to back still reach the writer in that order (the
        # service awaits this between receiving an op and submitting it).
        assert self._uuids is not None, "the log is not open"
        return await trio.to_thread.run_sync(
            _uuid_used, self._uuids, user, uuid, limiter=self._uuid_limiter
        )


# -- queries, run in a thread on a read connection ------------------------------


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    ) or ("locked" in str(exc))


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE: copies what no reader still needs, never waits for anyone.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _tail(conn: sqlite3.Connection, count: int) -> tuple[int, list[Event]]:
    head = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    rows = conn.execute(
        "SELECT body FROM events WHERE id <= ? ORDER BY id DESC LIMIT ?", (head, count)
    ).fetchall()
    return head, [Event(orjson.loads(body)) for (body,) in reversed(rows)]


def _read_events(
    conn: sqlite3.Connection, flows: list[str], after: int, upto: int, limit: int
) -> list[Event]:
    if len(flows) <= PER_FLOW_READ_MAX:
        rows: list[tuple[int, str]] = []
        for flow in flows:
            rows += conn.execute(
                "SELECT id, body FROM events WHERE flow = ? AND id > ? AND id <= ? "
                "ORDER BY id LIMIT ?",
                (flow, after, upto, limit),
            ).fetchall()
        rows.sort()
        del rows[limit:]
    else:
        rows = conn.execute(
            "SELECT id, body FROM events WHERE id > ? AND id <= ? "
            "AND flow IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (after, upto, dumps(flows), limit),
        ).fetchall()
    return [Event(orjson.loads(body)) for _, body in rows]


def _history(
    conn: sqlite3.Connection,
    flow: str,
    before: int | None,
    after: int | None,
    limit: int,
    tag: str | None,
    upto: int,
) -> list[MessageState]:
    if tag is None:
        source, args = "messages WHERE flow = ? AND id <= ?", [flow, upto]
        columns, key = STATE_COLUMNS, "id"
    else:
        source = (
            "message_tags t JOIN messages m ON m.id = t.message "
            "WHERE t.flow = ? AND t.tag = ? AND t.message <= ?"
        )
        args = [flow, tag, upto]
        columns = ", ".join(f"m.{c.strip()}" for c in STATE_COLUMNS.split(","))
        key = "t.message"
    if after is not None:
        source += f" AND {key} > ?"
        args.append(after)
    if before is not None:
        source += f" AND {key} < ?"
        args.append(before)
    # After given: the oldest `limit`; otherwise the newest, returned in id order.
    order = "ASC" if after is not None else "DESC"
    rows = conn.execute(
        f"SELECT {columns} FROM {source} ORDER BY {key} {order} LIMIT ?", (*args, limit)
    ).fetchall()
    if after is None:
        rows.reverse()
    return [state_from_row(row) for row in rows]


def _message(conn: sqlite3.Connection, message_id: int) -> MessageState | None:
    row = conn.execute(
        f"SELECT {STATE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    return state_from_row(row) if row is not None else None


def _uuid_used(conn: sqlite3.Connection, user: str, uuid: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM ops WHERE user = ? AND uuid = ?", (user, uuid)).fetchone()
        is not None
    )
