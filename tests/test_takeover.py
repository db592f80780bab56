"""Takeover race: many streams of one client id opened at once, 200 times.

While a poster posts, open two and then three streams with one client id
concurrently; the server's record of delivery intervals per client id must
show no overlap (never do two streams of one client id deliver events), the
losers get `superseded`, and afterwards the hub's subscriber count and the
task tree return to their baseline.
"""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from rt.service import Hooks
from tests.helpers import (
    client_id,
    new_flow,
    new_user,
    serve_rt,
    sse_stream,
    uuid,
    wait_for,
    ws_stream,
)

ROUNDS = 200


def count_tasks() -> int:
    def walk(task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


async def one_stream(opener, reader, client: str, streams: int, outcomes: list[str]) -> None:
    """Read until superseded, or until a message arrives once every rival lost."""
    async with opener(reader, ["general"], client=client) as s:
        while True:
            obj = await s.next()
            if obj.get("type") == "close":
                assert obj["reason"] == "superseded", obj
                assert "retry_ms" not in obj
                outcomes.append("superseded")
                return
            if obj.get("type") == "message" and len(outcomes) == streams - 1:
                outcomes.append("won")  # the last one standing delivers
                return


class Deliveries:
    """An `on_delivery` hook: when each stream of each client id delivered (first, last)."""

    def __init__(self) -> None:
        # keyed by the session itself (held, so no id is reused while we count)
        self.by_key: dict[tuple[str, str], dict[object, list[float]]] = {}

    def __call__(self, session, events) -> None:
        now = trio.current_time()
        times = self.by_key.setdefault(session.key, {}).setdefault(session, [now, now])
        times[1] = now

    def intervals(self) -> dict[tuple[str, str], list[tuple[float, float]]]:
        return {key: [tuple(t) for t in streams.values()] for key, streams in self.by_key.items()}


async def test_takeover_race_never_overlaps_and_cleans_up():
    with trio.fail_after(120):
        deliveries = Deliveries()
        async with serve_rt(
            ops_rate=100000, ops_burst=100000, max_streams=64, hooks=Hooks(on_delivery=deliveries)
        ) as server:
            await new_flow(server, "general")
            poster = await new_user(server, "poster")
            reader = await new_user(server, "reader")
            service = server.service
            stop_posting = trio.Event()

            async def post_forever() -> None:
                while not stop_posting.is_set():
                    r = await poster.post("general", "tick", uuid())
                    assert r.status_code == 201

            # Warm up the keep-alive connections both users' clients hold, so that
            # the baseline counts their server-side tasks too.
            assert (await poster.post("general", "warm-up", uuid())).status_code == 201
            await reader.ticket(client_id())
            await trio.testing.wait_all_tasks_blocked()
            baseline_subs = service.hub.count()
            baseline_tasks = count_tasks()
            superseded = 0
            winners = 0
            async with trio.open_nursery() as background:
                background.start_soon(post_forever)
                for round_ in range(ROUNDS):
                    client = client_id()
                    streams = 2 if round_ % 2 == 0 else 3
                    opener = ws_stream if round_ % 4 < 2 else sse_stream
                    outcomes: list[str] = []
                    async with trio.open_nursery() as nursery:
                        for _ in range(streams):
                            nursery.start_soon(
                                one_stream, opener, reader, client, streams, outcomes
                            )
                    assert sorted(outcomes) == ["superseded"] * (streams - 1) + ["won"], outcomes
                    superseded += streams - 1
                    winners += 1
                stop_posting.set()
            # Everything closed: the hub and the task tree return to their baseline.
            await wait_for(lambda: service.hub.count() == baseline_subs)
            await wait_for(lambda: len(service.claims) == 0)
            # A closed stream's connection may idle in keep-alive until
            # --keep-alive-timeout (5 s) before its tasks end: wait past that.
            with trio.fail_after(15):
                await wait_for(lambda: count_tasks() <= baseline_tasks)
            assert len(deliveries.by_key) == ROUNDS
            for key, intervals in deliveries.intervals().items():
                ordered = sorted(intervals)
                for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
                    assert start >= end, (key, ordered)
            assert superseded == ROUNDS // 2 * 1 + ROUNDS // 2 * 2
            assert winners == ROUNDS
