"""Resume under fire: reconnects at random moments, some between commit and publish.

Two posters post 500 messages each while one subscriber reconnects from its
cursor at least 20 times, alternating ws and sse, at moments drawn from a
seeded generator (the seed is in the failure message), and at least 5
times while a batch is committed but not yet published (the store's
`after_commit` hook holds the writer there). The subscriber must see every
id exactly once, in increasing order, equal to history.
"""

from __future__ import annotations

import os
import random

import pytest
import trio

from rt.service import Hooks
from tests.helpers import new_flow, new_user, serve_rt, sse_stream, uuid, ws_stream

POSTS_EACH = 500
RECONNECTS = 20
IN_GAP = 5
EXPECTED = POSTS_EACH + POSTS_EACH // 2  # all of poster0's, half of poster1's


class CommitGap:
    """An `after_commit` hook that can hold the writer between commit and publish."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = trio.Event()
        self.release = trio.Event()

    def arm(self) -> None:
        self.armed, self.reached, self.release = True, trio.Event(), trio.Event()

    async def __call__(self, events) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            with trio.move_on_after(5):
                await self.release.wait()


@pytest.mark.parametrize("db", [":memory:", "sqlite"])
async def test_resume_under_fire(db, tmp_path):
    seed = int(os.environ.get("RT_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    gap = CommitGap()
    seen: list[int] = []
    with trio.fail_after(int(os.environ.get("RT_TEST_DEADLINE", 90))):
        async with serve_rt(
            db=str(tmp_path / "rt.db") if db == "sqlite" else ":memory:",
            window=200,
            hooks=Hooks(after_commit=gap),
            ops_rate=100000,
            ops_burst=100000,
            heartbeat=1,
        ) as server:
            await new_flow(server, "general")
            await new_flow(server, "other")
            posters = [await new_user(server, f"poster{i}") for i in range(2)]
            reader = await new_user(server, "reader")
            posted = 0

            async def poster(api, flow_cycle) -> None:
                nonlocal posted
                for i in range(POSTS_EACH):
                    r = await api.post(flow_cycle[i % len(flow_cycle)], f"m{i}", uuid())
                    assert r.status_code == 201, r.text
                    posted += 1

            cursor = epoch = None
            reconnects = in_gap = 0
            done = trio.Event()

            async def subscriber() -> None:
                nonlocal cursor, epoch, reconnects, in_gap
                transports = ["ws", "sse"]
                while True:
                    transport = transports[reconnects % 2]
                    opener = ws_stream if transport == "ws" else sse_stream
                    want_gap = in_gap < IN_GAP and rng.random() < 0.4 and not done.is_set()
                    budget = rng.randint(1, 30)
                    async with opener(reader, ["general"], cursor=cursor, epoch=epoch) as s:
                        ready = await s.next()
                        assert ready["type"] == "ready", ready
                        assert not ready["reset"], (seed, ready)
                        epoch = ready["epoch"]
                        if gap.reached.is_set() and not gap.release.is_set():
                            gap.release.set()  # this stream opened inside the gap
                            in_gap += 1
                        while budget > 0 or (done.is_set() and len(seen) < EXPECTED):
                            if done.is_set() and len(seen) >= EXPECTED:
                                break  # all seen: reconnect until enough reconnects
                            obj = await s.next()
                            if obj.get("type") == "message":
                                assert obj["flow"] == "general"
                                assert not seen or obj["id"] > seen[-1], (seed, obj, seen[-3:])
                                seen.append(obj["id"])
                                cursor = obj["id"]
                                budget -= 1
                            if done.is_set() and len(seen) >= EXPECTED and reconnects >= RECONNECTS:
                                return
                    reconnects += 1
                    if want_gap:
                        gap.arm()
                        with trio.move_on_after(2):
                            await gap.reached.wait()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                async with trio.open_nursery() as posting:
                    posting.start_soon(poster, posters[0], ["general"])
                    posting.start_soon(poster, posters[1], ["other", "general"])
                done.set()
                gap.armed = False
                gap.release.set()
                # Everything is posted: the subscriber must catch up promptly; if it
                # never does, stop it and let the comparison with history say why.
                nursery.cancel_scope.deadline = trio.current_time() + 10
            history = []
            before = None
            while True:
                params = {"limit": 500, **({"before": before} if before else {})}
                page = (await reader.history("general", **params))["messages"]
                if not page:
                    break
                history = [m["id"] for m in page] + history
                before = page[0]["id"]
    message = f"seed {seed} (rerun with RT_TEST_SEED={seed})"
    assert posted == 2 * POSTS_EACH, message
    assert len(seen) == len(set(seen)), message
    assert seen == sorted(seen), message
    missing = sorted(set(history) - set(seen))
    assert seen == history, (
        message,
        "missing",
        missing[:10],
        "extra",
        sorted(set(seen) - set(history))[:10],
    )
    assert len(seen) == EXPECTED, message
    assert reconnects >= RECONNECTS, (reconnects, message)
    assert in_gap >= IN_GAP, (in_gap, message)
