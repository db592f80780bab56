"""`Storage`: a log and a directory run as a node runs them, for the conformance checks."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

import trio

from rt.core.events import Event, MessageState
from rt.core.ops import Op
from rt.store import BatchWriter, Directory, Feed, Log, OpResult


class Storage:
    """A `Log` with its `Feed` and `BatchWriter`, and a `Directory`.

    `async with Storage(log, directory, window=N) as s:` opens both, loads
    the feed and runs the writer. `publish` (what the feed hands to the hub)
    and `after_commit` (the feed's test hook) may be set at any time; the
    directory's methods are reachable on this object too.
    """

    def __init__(self, log: Log, directory: Directory, *, window: int = 10_000) -> None:
        self.log = log
        self.directory = directory
        self.feed = Feed(log, window=window)
        self.writer = BatchWriter(log, self.feed)

    async def __aenter__(self) -> Storage:
        stack = AsyncExitStack()
        async with stack:
            await stack.enter_async_context(self.directory)
            await stack.enter_async_context(self.log)
            await self.feed.start()
            reading = await stack.enter_async_context(trio.open_nursery())
            reading.start_soon(self.log.run)  # a shared log's reader (a local log: nothing)
            stack.callback(reading.cancel_scope.cancel)  # last: after the writer drained
            nursery = await stack.enter_async_context(trio.open_nursery())
            nursery.start_soon(self.writer.run)
            stack.callback(self.writer.close)  # runs first: the writer drains, then ends
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.aclose()

    # -- the feed's and the writer's ------------------------------------------------

    @property
    def epoch(self) -> str:
        return self.feed.epoch

    @property
    def head(self) -> int:
        return self.feed.head

    @property
    def publish(self) -> Any:
        return self.feed.publish_to

    @publish.setter
    def publish(self, publish: Any) -> None:
        self.feed.publish_to = publish

    @property
    def after_commit(self) -> Any:
        return self.feed.after_commit

    @after_commit.setter
    def after_commit(self, hook: Any) -> None:
        self.feed.after_commit = hook

    async def submit(self, op: Op) -> OpResult:
        return await self.writer.submit(op)

    async def read(self, flows: Iterable[str], after: int, limit: int) -> list[Event]:
        return await self.feed.read(flows, after, limit)

    async def history(
        self,
        flow: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        tag: str | None = None,
    ) -> list[MessageState]:
        return await self.feed.history(flow, before=before, after=after, limit=limit, tag=tag)

    async def message(self, message_id: int) -> MessageState | None:
        return await self.log.message(message_id)

    async def uuid_used(self, user: str, uuid: str) -> bool:
        return await self.log.uuid_used(user, uuid)

    # -- the directory's -----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        return getattr(self.directory, name)


def memory_storage(**kwargs: Any) -> Storage:
    from rt.store import MemoryDirectory, MemoryLog

    directory = MemoryDirectory()
    return Storage(MemoryLog(directory), directory, **kwargs)


def sqlite_storage(path: Any, *, window: int = 10_000, sync: str = "normal") -> Storage:
    from rt.store.sqlite_directory import SqliteDirectory
    from rt.store.sqlite_log import SqliteLog

    return Storage(SqliteLog(path, sync=sync), SqliteDirectory(path, sync=sync), window=window)


class RedisStorage(Storage):
    """A Redis log and directory under their own key prefix, with their own client."""

    def __init__(self, url: str, prefix: str, *, window: int = 10_000) -> None:
        import coredis

        from rt.backend.redis.directory import RedisDirectory
        from rt.backend.redis.keys import Keys
        from rt.backend.redis.log import RedisLog

        self.client = coredis.Redis.from_url(url, decode_responses=False)
        keys = Keys(prefix)
        directory = RedisDirectory(self.client, keys)
        super().__init__(RedisLog(self.client, keys, directory), directory, window=window)

    async def __aenter__(self) -> Storage:
        await self.client.__aenter__()
        try:
            return await super().__aenter__()
        except BaseException:
            await self.client.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            await self.client.__aexit__(None, None, None)
