"""`SqliteDirectory`: users, tokens, flows and members in rt's SQLite file.

Served from memory: users, tokens and flows are loaded once and kept in
caches, so `authenticate` and `flow` never block. Changes go through the
**admin** connection; a **watch** connection lets `refresh` notice changes
another process (the `rt` CLI, with its own SqliteDirectory on the same
file) made: triggers count every change of the directory tables in
`meta.dir_version`, which `refresh` compares with the version the caches
were loaded at (after `PRAGMA data_version` says that anything at all was
committed elsewhere). Both connections are used under one lock, so a
reload never races a local write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from rt.core.errors import RtError
from rt.core.events import Flow
from rt.store.contracts import Directory, UserRecord, hash_token, new_token, now_ms
from rt.store.sqlite_files import check_sync, connect, prepare

_T = TypeVar("_T")


class _Cache:
    """Users, tokens and flows as loaded from the database."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.tokens: dict[str, str] = {}  # hash -> user
        self.flows: dict[str, Flow] = {}
        self.version = 0


def _load(conn: sqlite3.Connection) -> _Cache:
    d = _Cache()
    conn.execute("BEGIN")  # one snapshot for all four tables
    try:
        d.version = conn.execute("SELECT value FROM meta WHERE key = 'dir_version'").fetchone()[0]
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


class SqliteDirectory(Directory):
    def __init__(self, path: str | os.PathLike[str], *, sync: str = "normal") -> None:
        self.path = os.fspath(path)
        self.sync = check_sync(sync)
        self._admin: sqlite3.Connection | None = None
        self._watch: sqlite3.Connection | None = None
        self._admin_limiter = trio.CapacityLimiter(1)
        self._dir_lock = trio.Lock()
        self._dir = _Cache()
        self._data_version: int | None = None

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        admin = connect(self.path, self.sync)
        try:
            prepare(admin, self.path)
            watch = connect(self.path, self.sync)
        except BaseException:
            admin.close()
            raise
        self._data_version = watch.execute("PRAGMA data_version").fetchone()[0]
        self._dir = _load(watch)
        self._admin, self._watch = admin, watch

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._dir_lock, self._admin_limiter:
                for conn in (self._admin, self._watch):
                    if conn is not None:
                        conn.close()
                self._admin = self._watch = None

    async def _admin_write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(conn, *args)` in one write transaction on the admin connection.

        Call with `_dir_lock` held. If nobody else changed the directory since
        the caches were loaded, the caches (which the caller updates) stay
        current; otherwise the next `refresh` reloads them.
        """
        return await trio.to_thread.run_sync(
            self._admin_write_sync, fn, args, limiter=self._admin_limiter
        )

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
            loaded = await trio.to_thread.run_sync(
                self._refresh_sync, self._watch, limiter=self._admin_limiter
            )
            if loaded is None:
                return False
            self._dir = loaded
            return True

    def _refresh_sync(self, conn: sqlite3.Connection) -> _Cache | None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return None  # no other connection committed anything
        self._data_version = version
        if _dir_version(conn) == self._dir.version:
            return None  # only events (or our own directory writes) changed
        return _load(conn)


def _dir_version(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM meta WHERE key = 'dir_version'").fetchone()[0]


# -- directory writes, run by SqliteDirectory._admin_write --------------------------


def _require_user(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
        raise RtError("not_found", f"no user named {name}")


def _require_flow(conn: sqlite3.Connection, name: str) -> Flow:
    row = conn.execute("SELECT private, owner FROM flows WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise RtError("not_found", f"no flow named {name}")
    members = frozenset(
        u for (u,) in conn.execute("SELECT user FROM members WHERE flow = ?", (name,))
    )
    return Flow(name, bool(row[0]), row[1], members)


def _create_user(conn: sqlite3.Connection, record: UserRecord, digest: str) -> None:
    try:
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?)", (record.name, int(record.guest), record.created)
        )
    except sqlite3.IntegrityError:
        raise RtError("exists", f"user {record.name} already exists; pick another name") from None
    conn.execute("INSERT INTO tokens VALUES (?, ?)", (digest, record.name))


def _add_token(conn: sqlite3.Connection, name: str, digest: str) -> None:
    _require_user(conn, name)
    conn.execute("INSERT INTO tokens VALUES (?, ?)", (digest, name))


def _revoke_tokens(conn: sqlite3.Connection, name: str) -> None:
    _require_user(conn, name)
    conn.execute("DELETE FROM tokens WHERE user = ?", (name,))


def _create_flow(
    conn: sqlite3.Connection, name: str, private: bool, owner: str | None, members: frozenset[str]
) -> None:
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
