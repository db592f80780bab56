"""A backend: everything a node shares with the others (rt/backend/contracts.py).

`Backend` bundles the log and the directory (rt/store) with tickets,
presence, claims and the bus; `open_backend(config, hub)` opens the local one
for `--db` (a SQLite file, or `:memory:`). The service is handed a backend
and never learns which one it got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from rt.backend.bus import LocalBus
from rt.backend.claims import LocalClaims
from rt.backend.contracts import Bus, Claims, Presence, RateLimit, Tickets
from rt.backend.limits import LocalRateLimit
from rt.backend.presence import LocalPresence
from rt.backend.tickets import LocalTickets
from rt.config import Config
from rt.hub.contracts import Hub
from rt.store import open_storage
from rt.store.contracts import Directory, Log


@dataclass
class Backend:
    log: Log
    directory: Directory
    tickets: Tickets
    presence: Presence
    claims: Claims
    bus: Bus

    def rate_limit(self, name: str, rate: float, burst: float) -> RateLimit:
        """Token buckets `name` (`ops`, `polls`, `guests`), shared as widely as the backend."""
        return LocalRateLimit(rate, burst)

    async def run(self) -> None:
        """The backend's background work, for as long as the node runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.log.run)
            nursery.start_soon(self.bus.run)
            nursery.start_soon(self.presence.run)


@asynccontextmanager
async def open_backend(config: Config, hub: Hub) -> AsyncIterator[Backend]:
    """The backend `config` asks for: Redis with `--redis`, else the local one (storage
    from `config.db`, the rest in this process)."""
    if config.redis:
        from rt.backend.redis import open_redis_backend

        async with open_redis_backend(config, hub) as redis_backend:
            yield redis_backend
        return
    async with open_storage(config.db, sync=config.sync) as (log, directory):
        bus = LocalBus(hub)
        yield Backend(
            log=log,
            directory=directory,
            tickets=LocalTickets(config.ticket_ttl),
            presence=LocalPresence(config.presence_grace, bus.publish),
            claims=LocalClaims(config.write_timeout, config.max_streams),
            bus=bus,
        )


__all__ = ["Backend", "open_backend"]
