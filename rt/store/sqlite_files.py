"""The SQLite file rt keeps its log and its directory in: schema, migration, connections.

One file holds both (`SqliteLog` and `SqliteDirectory` each open their own
connections on it). WAL mode; `synchronous` NORMAL (a commit survives a
crash of the process) or FULL (it also survives a power loss). The schema
version lives in `PRAGMA user_version` and is migrated at start, by
whichever opens the file first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from rt.core.events import MessageState
from rt.store.contracts import new_epoch

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

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


def state_from_row(row: Sequence[Any]) -> MessageState:
    id_, flow, user, sent, content, tags, edited, deleted = row
    return MessageState(
        id_,
        flow,
        user,
        sent,
        content,
        tuple(orjson.loads(tags)),
        False if edited is None else edited,
        bool(deleted),
    )


STATE_COLUMNS = "id, flow, user, sent, content, tags, edited, deleted"


def connect(path: str, sync: str) -> sqlite3.Connection:
    """A connection with rt's settings; used by one thread at a time."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA synchronous = {'FULL' if sync == 'full' else 'NORMAL'}")
    return conn


def check_sync(sync: str) -> str:
    sync = sync.lower()
    if sync not in ("normal", "full"):
        raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
    return sync


def prepare(conn: sqlite3.Connection, path: str) -> str:
    """Switch the file to WAL, create or migrate its schema; return its epoch."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{path}: could not switch to WAL mode (got {mode})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")  # another process may be creating it too
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} has schema version {version}, newer than this rt "
                    f"understands ({SCHEMA_VERSION}); upgrade rt"
                )
            if version == 0:
                for statement in _schema_v1().split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta VALUES ('epoch', ?), ('dir_version', 0)", (new_epoch(),)
                )
            # Future migrations go here: `if version == 1: ...; version = 2`.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
