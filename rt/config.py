"""One frozen Config with every setting of `rt serve` (PROTOCOL.md sections 6, 8).

Values come from flags, then `RT_*` environment variables, then these
defaults (rt/cli.py does the reading). Times are in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

_LIMIT_NAMES = (
    "ops_rate ops_burst poll_rate max_body max_flows max_streams buffer_objects "
    "buffer_bytes heartbeat write_timeout poll_timeout poll_linger poll_mailbox "
    "rotate_bytes presence_grace window guest_rate"
).split()


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "rt.db"
    guests: bool = False
    allow_origin: tuple[str, ...] = ()
    sync: str = "normal"
    metrics_token: str | None = None
    users: tuple[str, ...] = ()
    flows: tuple[str, ...] = ()

    # PROTOCOL.md section 6: limits and timings.
    ops_rate: float = 20.0
    ops_burst: int = 50
    poll_rate: float = 10.0
    max_body: int = 65536
    max_flows: int = 100
    max_streams: int = 32
    buffer_objects: int = 10000
    buffer_bytes: int = 8 * 1024 * 1024
    heartbeat: float = 15.0
    write_timeout: float = 3.0
    poll_timeout: float = 25.0
    poll_linger: float = 0.02
    poll_mailbox: int = 100
    rotate_bytes: int = 131072
    presence_grace: float = 10.0
    window: int = 10000
    guest_rate: float = 10.0  # guest accounts a minute per client address

    # The TCP layer's bounds against idle and hostile connections (issue 10;
    # rt/web/admission.py). None: the cap follows the open-file limit; 0: no cap.
    keep_alive_timeout: float = 5.0
    head_timeout: float = 10.0
    max_head: int = 16 * 1024
    max_connections: int | None = None
    max_connections_per_address: int = 1000

    # The race lab (LAB.md): forced rare answers (rt/service/chaos.py), and a
    # JSON-lines record of what each stream delivered when (rt/service/deliveries.py).
    # Many nodes as one server (rt/backend/redis): the dataset's URL and key prefix.
    redis: str | None = None
    redis_prefix: str = "rt"

    chaos: str | None = None
    chaos_seed: int | None = None
    delivery_record: str | None = None

    # Not on the wire: how long draining lasts on SIGTERM, and a bench-only switch.
    drain_seconds: float = 1.0
    ticket_ttl: float = 60.0
    # The fast paths: idle streams get events written by `publish` straight to
    # the socket (rt/service/streams.py), and `/stream/ws` upgrades are served
    # without hypercorn's and Quart's WebSocket layers (rt/web/raw_routes.py). Off,
    # every byte takes the ASGI path: kept for tests of the buffered path and
    # for `rt bench`'s before/after comparison (`--bench-asgi-only`).
    fast_paths: bool = True

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def limits(self) -> dict:
        """The limits as `/info` shows them, named as on the command line."""
        return {n.replace("_", "-"): getattr(self, n) for n in _LIMIT_NAMES}


# The limit flags of PROTOCOL.md section 6 and their types (from the defaults).
LIMIT_TYPES: dict[str, type] = {
    name.replace("-", "_"): type(value) for name, value in Config().limits().items()
}
