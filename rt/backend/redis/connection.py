"""Connecting to Redis or Valkey, and checking that it keeps what `--sync` promises.

URLs: `redis://[:password@]host[:port][/db]`, `rediss://` (TLS), and
`unix:///path/to/socket?db=N&password=P`.

An op is acknowledged once the script that applied it returned, that is
once Redis has it in memory and, with AOF on, written to its append-only
file. What survives what depends on Redis's settings, so rt checks them at
start and refuses, with one line saying how to fix it, settings that cannot
keep the promise of `--sync`:

| `--sync` | Redis must have | an acknowledged event survives |
|---|---|---|
| `normal` | `appendonly yes` (any `appendfsync`) | the kill of an rt node, and a crash or `kill -9` of Redis (the AOF is written before the answer); a power loss may lose the last second with `everysec` |
| `full` | `appendonly yes` and `appendfsync always` | also a power loss or an OS crash of the Redis host |
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import coredis

from rt.core.errors import RtError

log = logging.getLogger("rt.redis")

# What a Redis that is unreachable, restarting or loading raises.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    coredis.exceptions.ConnectionError,
    coredis.exceptions.BusyLoadingError,
)


class RedisSettingsError(Exception):
    """Redis's persistence cannot keep `--sync`'s promise: the message says how to fix it."""


@asynccontextmanager
async def open_client(url: str) -> AsyncIterator[Any]:
    client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        yield client


async def check_persistence(client: Any, sync: str) -> None:
    try:
        settings = await client.config_get(["appendonly", "appendfsync"])
    except coredis.exceptions.ResponseError as error:  # CONFIG disabled (a managed Redis)
        log.warning(
            "rt: cannot read Redis's persistence settings (%s); make sure it runs "
            "with appendonly yes%s",
            error,
            " and appendfsync always" if sync == "full" else "",
        )
        return
    values = {
        k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
        for k, v in settings.items()
    }
    if values.get("appendonly") != "yes":
        raise RedisSettingsError(
            "Redis runs with appendonly no, so acknowledged events would not survive a restart "
            "of Redis: start it with --appendonly yes (or CONFIG SET appendonly yes)"
        )
    if sync == "full" and values.get("appendfsync") != "always":
        raise RedisSettingsError(
            f"--sync full needs Redis's appendfsync always (it has {values.get('appendfsync')}): "
            "start it with --appendfsync always, or use --sync normal"
        )


@contextmanager
def reachable(what: str) -> Iterator[None]:
    """Redis unreachable: the op or read fails with 503 and `Retry-After` (retry class)."""
    try:
        yield
    except UNREACHABLE:
        raise RtError(
            "shutting_down",
            f"the server's storage is unreachable ({what}); retry shortly",
            retry_after=1,
        ) from None


P = ParamSpec("P")
R = TypeVar("R")


def reaching(
    what: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a method that talks to Redis on a request's path: `reachable(what)`
    around all of it, so an unreachable Redis is a 503, never a 500 or a broken stream."""

    def decorate(
        fn: Callable[P, Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        @wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with reachable(what):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate
