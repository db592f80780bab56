"""`SqliteStore`: the log in one SQLite file (DESIGN.md section 4).

Connections, each used by one thread at a time:

- the **writer** connection, used only by `_apply_batch` through a
  `CapacityLimiter(1)` of its own: one thread applies each batch of ops in
  one transaction, each op in a savepoint, and commits once;
- a small pool of **read** connections for catch-up, history and message
  reads, behind another limiter, so reads never starve commits, and one
  for `uuid_used`, which answers in the order it is asked;
- an **admin** connection for users, tokens, flows and members, and a
  **watch** connection that `refresh` polls with `PRAGMA data_version`.
  Both are used under `_dir_lock`, so a reload never races a local write.

The newest `window` events stay in an `EventWindow`: most resumes never
touch disk. Users, tokens, flows and members are cached in memory, so
`authenticate` and `flow` never block; the `rt` CLI (another process with
another SqliteStore on the same file) changes the directory tables, and
triggers count every such change in `meta.dir_version`, which `refresh`
compares with the version the caches were loaded at.

Schema version 1 lives in `PRAGMA user_version`; WAL mode; `synchronous`
NORMAL (a commit survives a process crash) or FULL (it survives power loss).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
import trio

from rt.core.errors import RtError
from rt.core.events import Event, Flow, MessageState
from rt.core.ops import Change, Op, next_state, plan
from rt.store.base import (
    OpResult,
    Store,
    UserRecord,
    hash_token,
    new_epoch,
    new_token,
    now_ms,
)
from rt.store.window import EventWindow

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
READERS = 4
# A disk read for at most this many flows uses one indexed query per flow
# (each reads at most `limit` rows); for more, one scan of the id range.
PER_FLOW_READ_MAX = 32

_T = TypeVar("_T")

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    flow TEXT NOT NULL,
    type TEXT NOT NULL,
    user TEXT NOT NULL,
    sent INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    message INTEGER NOT NULL,  -- the message it is about (a post: its own id)
    body TEXT NOT NULL         -- the event as JSON
);
CREATE INDEX events_flow ON events (flow, id);
CREATE INDEX events_message ON events (message);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    flow TEXT NOT NULL,
    user TEXT NOT NULL,
    sent INTEGER NOT NULL,
    content TEXT NOT NULL,
    tags TEXT NOT NULL,        -- JSON list, sorted
    edited INTEGER,            -- id of the last edit, NULL if never edited
    deleted INTEGER NOT NULL
);
CREATE INDEX messages_flow ON messages (flow, id);
CREATE TABLE message_tags (
    flow TEXT NOT NULL,
    tag TEXT NOT NULL,
    message INTEGER NOT NULL,
    PRIMARY KEY (flow, tag, message)
) WITHOUT ROWID;
CREATE TABLE ops (
    user TEXT NOT NULL,
    uuid TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    event_id INTEGER,          -- the event it stored, or NULL for a no-op
    body TEXT,                 -- a no-op's answer as JSON
    PRIMARY KEY (user, uuid)
) WITHOUT ROWID;
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    guest INTEGER NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX tokens_user ON tokens (user);
CREATE TABLE flows (
    name TEXT PRIMARY KEY,
    private INTEGER NOT NULL,
    owner TEXT
) WITHOUT ROWID;
CREATE TABLE members (
    flow TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (flow, user)
) WITHOUT ROWID;
"""

_DIRECTORY_TABLES = ("users", "tokens", "flows", "members")


def _schema_v1() -> str:
    triggers = "".join(
        f"CREATE TRIGGER {table}_{verb.lower()} AFTER {verb} ON {table} BEGIN "
        "UPDATE meta SET value = value + 1 WHERE key = 'dir_version'; END;\n"
        for table in _DIRECTORY_TABLES
        for verb in ("INSERT", "UPDATE", "DELETE")
    )
    return _SCHEMA_V1 + triggers


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _state(row: Sequence[Any]) -> MessageState:
    id_, flow, user, sent, content, tags, edited, deleted = row
    return MessageState(id_, flow, user, sent, content, tuple(orjson.loads(tags)),
                        False if edited is None else edited, bool(deleted))


_STATE_COLUMNS = "id, flow, user, sent, content, tags, edited, deleted"


class _Directory:
    """Users, tokens and flows as loaded from the database."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.tokens: dict[str, str] = {}  # hash -> user
        self.flows: dict[str, Flow] = {}
        self.version = 0


def _load_directory(conn: sqlite3.Connection) -> _Directory:
    d = _Directory()
    conn.execute("BEGIN")  # one snapshot for all four tables
    try:
        d.version = conn.execute(
            "SELECT value FROM meta WHERE key = 'dir_version'").fetchone()[0]
        for name, guest, created in conn.execute("SELECT name, guest, created FROM users"):
            d.users[name] = UserRecord(name, bool(guest), created)
        d.tokens = dict(conn.execute("SELECT hash, user FROM tokens").fetchall())
        members: dict[str, set[str]] = {}
        for flow, user in conn.execute("SELECT flow, user FROM members"):
            members.setdefault(flow, set()).add(user)
        for name, private, owner in conn.execute("SELECT name, private, owner FROM flows"):
            d.flows[name] = Flow(name, bool(private), owner, frozenset(members.get(name, ())))
    finally:
        conn.execute("COMMIT")
    return d


class SqliteStore(Store):
    def __init__(self, path: str | os.PathLike[str], *, window: int = 10000,
                 sync: str = "normal", **_: object) -> None:
        super().__init__()
        sync = sync.lower()
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        if window < 0:
            raise ValueError("window must be at least 0")
        self.path = os.fspath(path)
        self.sync = sync
        self.epoch = ""
        self.head = 0
        self._window = EventWindow(capacity=window)
        self._committed = 0  # the last event id known to be committed
        self._writer_conn: sqlite3.Connection | None = None
        self._writer_limiter = trio.CapacityLimiter(1)
        self._readers: list[sqlite3.Connection] = []
        self._read_slots = trio.Semaphore(READERS)
        self._read_limiter = trio.CapacityLimiter(READERS)
        self._uuids: sqlite3.Connection | None = None
        self._uuid_limiter = trio.CapacityLimiter(1)  # FIFO: see uuid_used
        self._admin: sqlite3.Connection | None = None
        self._watch: sqlite3.Connection | None = None
        self._admin_limiter = trio.CapacityLimiter(1)
        self._dir_lock = trio.Lock()
        self._dir = _Directory()
        self._data_version: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.sync == 'full' else 'NORMAL'}")
        return conn

    async def _open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        conns: list[sqlite3.Connection] = []
        try:
            writer = self._connect()
            conns.append(writer)
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: could not switch to WAL mode (got {mode})")
            self._migrate(writer)
            self.epoch = writer.execute(
                "SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            for _ in range(READERS):
                conns.append(self._connect())
            uuids = self._connect()
            admin = self._connect()
            watch = self._connect()
            conns += [uuids, admin, watch]
            self._load_window(writer)
            self._data_version = watch.execute("PRAGMA data_version").fetchone()[0]
            self._dir = _load_directory(watch)
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        self._writer_conn = writer
        self._readers = conns[1:1 + READERS]
        self._uuids = uuids
        self._admin = admin
        self._watch = watch

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")  # another process may be creating it too
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this rt "
                    f"understands ({SCHEMA_VERSION}); upgrade rt")
            if version == 0:
                for statement in _schema_v1().split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('epoch', ?), ('dir_version', 0)",
                             (new_epoch(),))
            # Future migrations go here: `if version == 1: ...; version = 2`.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _load_window(self, conn: sqlite3.Connection) -> None:
        head = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        capacity = self._window.capacity or 0
        rows = conn.execute("SELECT body FROM events ORDER BY id DESC LIMIT ?",
                            (capacity,)).fetchall()
        events = [Event(orjson.loads(body)) for (body,) in reversed(rows)]
        if len(events) < capacity:
            floor = 0  # every event is held
        elif events:
            floor = events[0].id - 1  # type: ignore[operator]
        else:
            floor = head  # a window of 0 holds nothing
        self._window = EventWindow(capacity=capacity, floor=floor)
        self._window.append(events)
        self.head = self._committed = head

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            # Wait for reads in flight: a connection must not close under its thread.
            for _ in range(READERS):
                await self._read_slots.acquire()
            async with self._dir_lock, self._uuid_limiter:
                conns = [self._writer_conn, *self._readers, self._uuids, self._admin,
                         self._watch]
                self._writer_conn = self._uuids = self._admin = self._watch = None
                self._readers = []
                for conn in conns:
                    if conn is not None:
                        conn.close()
            for _ in range(READERS):
                self._read_slots.release()

    # -- the writer --------------------------------------------------------

    async def _apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        assert self._writer_conn is not None, "the store is not open"
        outcomes, deleted, last = await trio.to_thread.run_sync(
            self._apply_batch_sync, self._writer_conn, list(ops),
            limiter=self._writer_limiter)
        # Committed. No checkpoint from here on: window and `_committed` move together.
        events = [o.event for o in outcomes if isinstance(o, OpResult) and o.event is not None]
        if events:
            self._window.append(events)
            for message_id in deleted:
                self._window.blank(message_id)
        self._committed = max(self._committed, last)
        return outcomes

    def _apply_batch_sync(
        self, conn: sqlite3.Connection, ops: list[Op],
    ) -> tuple[list[OpResult | RtError], list[int], int]:
        outcomes: list[OpResult | RtError] = []
        deleted: list[int] = []
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
                    if outcome.event.type == "delete":
                        deleted.append(outcome.event.data["message"])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes, deleted, last

    def _apply_one(self, conn: sqlite3.Connection, op: Op, event_id: int) -> OpResult:
        """Apply one op inside the open savepoint, exactly as MemoryStore._apply."""
        seen = conn.execute("SELECT fingerprint, event_id, body FROM ops "
                            "WHERE user = ? AND uuid = ?", (op.user, op.uuid)).fetchone()
        if seen is not None:
            fingerprint, seen_id, body = seen
            if fingerprint != op.fingerprint:
                raise RtError("uuid_mismatch", f"uuid {op.uuid} was used for another op; "
                                               "make a new uuid for a new op")
            if seen_id is not None:
                row = conn.execute("SELECT body FROM events WHERE id = ?", (seen_id,)).fetchone()
                return OpResult(200, orjson.loads(row[0]), replay=True)
            return OpResult(200, orjson.loads(body), replay=True)
        state = None
        if op.message is not None:
            row = conn.execute(f"SELECT {_STATE_COLUMNS} FROM messages WHERE id = ?",
                               (op.message,)).fetchone()
            state = _state(row) if row is not None else None
        owner = None
        if op.kind == "delete":
            row = conn.execute("SELECT owner FROM flows WHERE name = ?", (op.flow,)).fetchone()
            owner = row[0] if row is not None else None
        decision = plan(op, state, owner)
        if not isinstance(decision, Change):
            body = decision.body()
            conn.execute("INSERT INTO ops VALUES (?, ?, ?, NULL, ?)",
                         (op.user, op.uuid, op.fingerprint, _dumps(body)))
            return OpResult(200, body)
        data = {"id": event_id, **decision.fields, "sent": now_ms()}
        new = next_state(state, data)
        kind = data["type"]
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (event_id, data["flow"], kind, data["user"], data["sent"], data["uuid"],
                      new.id, _dumps(data)))
        conn.execute(f"INSERT OR REPLACE INTO messages ({_STATE_COLUMNS}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (new.id, new.flow, new.user, new.sent, new.content, _dumps(list(new.tags)),
                      None if new.edited is False else new.edited, int(new.deleted)))
        if kind == "tag":
            assert state is not None
            old, now = set(state.tags), set(new.tags)
            conn.executemany("DELETE FROM message_tags WHERE flow = ? AND tag = ? AND message = ?",
                             [(new.flow, t, new.id) for t in old - now])
            conn.executemany("INSERT OR IGNORE INTO message_tags VALUES (?, ?, ?)",
                             [(new.flow, t, new.id) for t in now - old])
        elif kind == "delete":
            rows = conn.execute("SELECT id, body FROM events WHERE message = ? "
                                "AND type IN ('message', 'edit')", (new.id,)).fetchall()
            conn.executemany("UPDATE events SET body = ? WHERE id = ?",
                             [(_dumps({**orjson.loads(body), "content": ""}), id_)
                              for id_, body in rows])
        conn.execute("INSERT INTO ops VALUES (?, ?, ?, ?, NULL)",
                     (op.user, op.uuid, op.fingerprint, event_id))
        event = Event(data)
        return OpResult(201 if kind == "message" else 200, event.data, event)

    # -- reads -------------------------------------------------------------

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(conn, *args)` in a thread on a free read connection."""
        async with self._read_slots:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(fn, conn, *args,
                                                     limiter=self._read_limiter)
            finally:
                self._readers.append(conn)

    async def read(self, flows: Iterable[str], after: int, limit: int) -> list[Event]:
        wanted = frozenset(flows)
        if limit <= 0 or not wanted:
            return []
        if self._window.covers(after):
            return self._window.read(wanted, after, limit)
        return await self._read(_read_events, sorted(wanted), after, self._committed, limit)

    async def history(self, flow, *, before, after, limit, tag=None):
        if limit <= 0:
            return []
        # Only messages up to `head`: a page read with cursor `head` must not hold a
        # message that is committed but not yet published, or the stream from that
        # cursor would deliver it a second time.
        return await self._read(_history, flow, before, after, limit, tag, self.head)

    async def message(self, message_id: int) -> MessageState | None:
        return await self._read(_message, message_id)

    async def uuid_used(self, user: str, uuid: str) -> bool:
        # One connection behind a FIFO limiter, entered with no checkpoint before
        # it: the answers come back in the order they were asked, so ops that one
        # connection sends back to back still reach the writer in that order (the
        # service awaits this between receiving an op and submitting it).
        assert self._uuids is not None, "the store is not open"
        return await trio.to_thread.run_sync(_uuid_used, self._uuids, user, uuid,
                                             limiter=self._uuid_limiter)

    # -- the directory: users, tokens, flows ---------------------------------

    async def _admin_write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(conn, *args)` in one write transaction on the admin connection.

        Call with `_dir_lock` held. If nobody else changed the directory since
        the caches were loaded, the caches (which the caller updates) stay
        current; otherwise the next `refresh` reloads them.
        """
        return await trio.to_thread.run_sync(self._admin_write_sync, fn, args,
                                             limiter=self._admin_limiter)

    def _admin_write_sync(self, fn: Callable[..., _T], args: tuple) -> _T:
        conn = self._admin
        assert conn is not None, "the store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = _dir_version(conn)
            result = fn(conn, *args)
            after = _dir_version(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if before == self._dir.version:
            self._dir.version = after
        return result

    async def create_user(self, name: str, *, guest: bool = False) -> str:
        async with self._dir_lock:
            if name in self._dir.users:
                raise RtError("exists", f"user {name} already exists; pick another name")
            token = new_token()
            record = UserRecord(name, guest, now_ms())
            digest = hash_token(token)
            await self._admin_write(_create_user, record, digest)
            self._dir.users[name] = record
            self._dir.tokens[digest] = name
            return token

    async def add_token(self, name: str) -> str:
        async with self._dir_lock:
            token = new_token()
            digest = hash_token(token)
            await self._admin_write(_add_token, name, digest)
            self._dir.tokens[digest] = name
            return token

    async def revoke_tokens(self, name: str) -> None:
        async with self._dir_lock:
            await self._admin_write(_revoke_tokens, name)
            self._dir.tokens = {h: u for h, u in self._dir.tokens.items() if u != name}

    def authenticate(self, token: str) -> str | None:
        return self._dir.tokens.get(hash_token(token))

    def user_exists(self, name: str) -> bool:
        return name in self._dir.users

    async def list_users(self) -> list[UserRecord]:
        return sorted(self._dir.users.values(), key=lambda u: u.name)

    async def create_flow(self, name, *, private=False, owner=None, members=()):
        async with self._dir_lock:
            if name in self._dir.flows:
                raise RtError("exists", f"flow {name} already exists")
            members = frozenset(members) | ({owner} if owner else set())
            await self._admin_write(_create_flow, name, bool(private), owner, members)
            flow = Flow(name, bool(private), owner, members)
            self._dir.flows[name] = flow
            return flow

    def flow(self, name: str) -> Flow | None:
        return self._dir.flows.get(name)

    def flows(self) -> list[Flow]:
        return sorted(self._dir.flows.values(), key=lambda f: f.name)

    async def add_member(self, flow: str, user: str) -> None:
        async with self._dir_lock:
            f = await self._admin_write(_add_member, flow, user)
            self._dir.flows[flow] = Flow(f.name, f.private, f.owner, f.members | {user})

    async def remove_member(self, flow: str, user: str) -> None:
        async with self._dir_lock:
            f = await self._admin_write(_remove_member, flow, user)
            self._dir.flows[flow] = Flow(f.name, f.private, f.owner, f.members - {user})

    async def refresh(self) -> bool:
        """Reload the directory if another connection changed it; True if so."""
        async with self._dir_lock:
            if self._watch is None:
                return False
            loaded = await trio.to_thread.run_sync(self._refresh_sync, self._watch,
                                                   limiter=self._admin_limiter)
            if loaded is None:
                return False
            self._dir = loaded
            return True

    def _refresh_sync(self, conn: sqlite3.Connection) -> _Directory | None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return None  # no other connection committed anything
        self._data_version = version
        if _dir_version(conn) == self._dir.version:
            return None  # only events (or our own directory writes) changed
        return _load_directory(conn)


# -- queries, run in a thread on a connection of their own -----------------------


def _dir_version(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM meta WHERE key = 'dir_version'").fetchone()[0]


def _read_events(conn: sqlite3.Connection, flows: list[str], after: int, upto: int,
                 limit: int) -> list[Event]:
    if len(flows) <= PER_FLOW_READ_MAX:
        rows: list[tuple[int, str]] = []
        for flow in flows:
            rows += conn.execute(
                "SELECT id, body FROM events WHERE flow = ? AND id > ? AND id <= ? "
                "ORDER BY id LIMIT ?", (flow, after, upto, limit)).fetchall()
        rows.sort()
        del rows[limit:]
    else:
        rows = conn.execute(
            "SELECT id, body FROM events WHERE id > ? AND id <= ? "
            "AND flow IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (after, upto, _dumps(flows), limit)).fetchall()
    return [Event(orjson.loads(body)) for _, body in rows]


def _history(conn: sqlite3.Connection, flow: str, before: int | None, after: int | None,
             limit: int, tag: str | None, upto: int) -> list[MessageState]:
    if tag is None:
        source, args = "messages WHERE flow = ? AND id <= ?", [flow, upto]
        columns, key = _STATE_COLUMNS, "id"
    else:
        source = ("message_tags t JOIN messages m ON m.id = t.message "
                  "WHERE t.flow = ? AND t.tag = ? AND t.message <= ?")
        args = [flow, tag, upto]
        columns = ", ".join(f"m.{c.strip()}" for c in _STATE_COLUMNS.split(","))
        key = "t.message"
    if after is not None:
        source += f" AND {key} > ?"
        args.append(after)
    if before is not None:
        source += f" AND {key} < ?"
        args.append(before)
    # After given: the oldest `limit`; otherwise the newest, returned in id order.
    order = "ASC" if after is not None else "DESC"
    rows = conn.execute(f"SELECT {columns} FROM {source} ORDER BY {key} {order} LIMIT ?",
                        (*args, limit)).fetchall()
    if after is None:
        rows.reverse()
    return [_state(row) for row in rows]


def _message(conn: sqlite3.Connection, message_id: int) -> MessageState | None:
    row = conn.execute(f"SELECT {_STATE_COLUMNS} FROM messages WHERE id = ?",
                       (message_id,)).fetchone()
    return _state(row) if row is not None else None


def _uuid_used(conn: sqlite3.Connection, user: str, uuid: str) -> bool:
    return conn.execute("SELECT 1 FROM ops WHERE user = ? AND uuid = ?",
                        (user, uuid)).fetchone() is not None


# -- directory writes, run by SqliteStore._admin_write --------------------------


def _require_user(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
        raise RtError("not_found", f"no user named {name}")


def _require_flow(conn: sqlite3.Connection, name: str) -> Flow:
    row = conn.execute("SELECT private, owner FROM flows WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise RtError("not_found", f"no flow named {name}")
    members = frozenset(u for (u,) in conn.execute(
        "SELECT user FROM members WHERE flow = ?", (name,)))
    return Flow(name, bool(row[0]), row[1], members)


def _create_user(conn: sqlite3.Connection, record: UserRecord, digest: str) -> None:
    try:
        conn.execute("INSERT INTO users VALUES (?, ?, ?)",
                     (record.name, int(record.guest), record.created))
    except sqlite3.IntegrityError:
        raise RtError("exists", f"user {record.name} already exists; "
                                "pick another name") from None
    conn.execute("INSERT INTO tokens VALUES (?, ?)", (digest, record.name))


def _add_token(conn: sqlite3.Connection, name: str, digest: str) -> None:
    _require_user(conn, name)
    conn.execute("INSERT INTO tokens VALUES (?, ?)", (digest, name))


def _revoke_tokens(conn: sqlite3.Connection, name: str) -> None:
    _require_user(conn, name)
    conn.execute("DELETE FROM tokens WHERE user = ?", (name,))


def _create_flow(conn: sqlite3.Connection, name: str, private: bool, owner: str | None,
                 members: frozenset[str]) -> None:
    if conn.execute("SELECT 1 FROM flows WHERE name = ?", (name,)).fetchone() is not None:
        raise RtError("exists", f"flow {name} already exists")
    for user in sorted(members):
        _require_user(conn, user)
    conn.execute("INSERT INTO flows VALUES (?, ?, ?)", (name, int(private), owner))
    conn.executemany("INSERT INTO members VALUES (?, ?)", [(name, u) for u in sorted(members)])


def _add_member(conn: sqlite3.Connection, flow: str, user: str) -> Flow:
    f = _require_flow(conn, flow)
    _require_user(conn, user)
    conn.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (flow, user))
    return f


def _remove_member(conn: sqlite3.Connection, flow: str, user: str) -> Flow:
    f = _require_flow(conn, flow)
    conn.execute("DELETE FROM members WHERE flow = ? AND user = ?", (flow, user))
    return f
