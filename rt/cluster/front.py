"""A round-robin TCP front over a cluster's nodes.

Each accepted connection goes to the next node in turn, as nginx's default
upstream balancing does; a node that refuses (killed, restarting) is skipped
for the next one, so clients reconnect onto the live nodes. Bytes are passed
on untouched in both directions, so WebSocket upgrades and endless streams
need nothing special. Enough to try a cluster on one machine; in production
put nginx in front (docs/cluster.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

Address = tuple[str, int]


class RoundRobin:
    """The next upstream to connect to, round robin, skipping those that do not answer.

    Shared by the front and the race lab's fault proxy (rt/chaos/proxy.py).
    """

    def __init__(self, upstreams: Sequence[Address], connect_timeout: float = 5.0) -> None:
        if not upstreams:
            raise ValueError("RoundRobin needs at least one upstream")
        self.upstreams = list(upstreams)
        self.connect_timeout = connect_timeout
        self._next = 0

    async def connect(self) -> trio.SocketStream | None:
        """A connection to the next upstream that answers; None when none does."""
        start = self._next
        self._next = (start + 1) % len(self.upstreams)
        for i in range(len(self.upstreams)):
            host, port = self.upstreams[(start + i) % len(self.upstreams)]
            try:
                with trio.fail_after(self.connect_timeout):
                    return await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError):
                continue
        return None


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    """Copy `source` to `sink` until `source` ends, then half-close `sink`."""
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _forward(client: trio.SocketStream, balancer: RoundRobin) -> None:
    async with client:
        upstream = await balancer.connect()
        if upstream is None:
            return  # no node answers: the client sees the connection close
        async with upstream, trio.open_nursery() as nursery:
            # When both directions have ended the connection is done; when one
            # side resets, its pump ends and the `async with` closes both.
            nursery.start_soon(_pump, client, upstream)
            await _pump(upstream, client)
            nursery.cancel_scope.cancel()


async def serve_front(
    listeners: list[trio.SocketListener],
    balancer: RoundRobin,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on `listeners` for ever, each connection forwarded to `balancer.connect()`."""

    async def handler(stream: trio.SocketStream) -> None:
        await _forward(stream, balancer)

    await trio.serve_listeners(handler, listeners, task_status=task_status)
