"""The event log and the directory of users, tokens and flows (rt/store/contracts.py).

`MemoryLog`/`MemoryDirectory` and `SqliteLog`/`SqliteDirectory` implement
the contracts; `Feed` (this node's publisher) and `BatchWriter` (its single
writer) work with any log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from rt.store.contracts import Directory, Log, OpResult, UserRecord
from rt.store.feed import Feed
from rt.store.memory import MemoryDirectory, MemoryLog
from rt.store.writer import BatchWriter


@asynccontextmanager
async def open_storage(db: str, *, sync: str = "normal") -> AsyncIterator[tuple[Log, Directory]]:
    """The log and the directory for a `--db` value: `:memory:`, or a SQLite file."""
    log: Log
    directory: Directory
    if db == ":memory:":
        directory = MemoryDirectory()
        log = MemoryLog(directory)
    else:
        from rt.store.sqlite_directory import SqliteDirectory
        from rt.store.sqlite_log import SqliteLog

        directory, log = SqliteDirectory(db, sync=sync), SqliteLog(db, sync=sync)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(directory)
        await stack.enter_async_context(log)
        yield log, directory


@asynccontextmanager
async def open_directory(db: str) -> AsyncIterator[Directory]:
    """The directory alone (the `rt user` and `rt flow` commands)."""
    if db == ":memory:":
        async with MemoryDirectory() as directory:
            yield directory
        return
    from rt.store.sqlite_directory import SqliteDirectory

    async with SqliteDirectory(db) as directory:
        yield directory


__all__ = [
    "BatchWriter",
    "Directory",
    "Feed",
    "Log",
    "MemoryDirectory",
    "MemoryLog",
    "OpResult",
    "UserRecord",
    "open_directory",
    "open_storage",
]
