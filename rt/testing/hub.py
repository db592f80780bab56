"""`HubChecks`: the hub's conformance checks (rt/hub/contracts.py).

Subclass it with `hub()` returning a fresh, empty hub.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from rt.core.events import Event, presence_event, typing_event

BIG = 1 << 30  # a buffer bound that is never reached


def ev(event_id: int, flow: str = "a", content: str = "x") -> Event:
    return Event(
        {
            "id": event_id,
            "flow": flow,
            "type": "message",
            "user": "alice",
            "sent": 1_700_000_000_000 + event_id,
            "uuid": f"uuid-{event_id:05d}",
            "content": content,
        }
    )


def sub_all(hub: Any, flows: list[str], *, max_objects: int = BIG, max_bytes: int = BIG) -> Any:
    return hub.subscribe(flows, max_objects=max_objects, max_bytes=max_bytes)


def ids(events: list[Event]) -> list[int | None]:
    return [e.id for e in events]


async def _waiter(sub: Any, woke: trio.Event) -> None:
    await sub.wait()
    woke.set()


class Taker:
    """A `DirectSink` that records what it is offered and takes it or not."""

    def __init__(self, take: bool = True) -> None:
        self.take = take
        self.offers: list[list[int | None]] = []

    def offer(self, events: Any) -> bool:
        self.offers.append(ids(list(events)))
        return self.take


class HubChecks:
    """The hub's contract, one test each. Subclasses define `hub()`."""

    def make_hub(self) -> Any:
        raise NotImplementedError

    @pytest.fixture
    async def hub(self) -> Any:
        return self.make_hub()

    # -- subscribe and publish ---------------------------------------------------------

    async def test_subscriber_gets_every_later_event_in_order(self, hub: Any) -> None:
        hub.publish([ev(1)])
        sub = sub_all(hub, ["a"])  # synchronous: effective on return
        hub.publish([ev(2), ev(3)])
        hub.publish([ev(4)])
        hub.publish([ev(7), ev(9), ev(10)])
        assert ids(sub.take_all()) == [2, 3, 4, 7, 9, 10]
        assert sub.take_all() == []
        hub.publish([ev(11)])
        assert ids(sub.take_all()) == [11]

    async def test_late_subscriber_sees_only_later_events(self, hub: Any) -> None:
        early = sub_all(hub, ["a"])
        hub.publish([ev(1), ev(2)])
        late = sub_all(hub, ["a"])
        hub.publish([ev(3)])
        assert ids(early.take_all()) == [1, 2, 3]
        assert ids(late.take_all()) == [3]

    async def test_fan_out_by_flow(self, hub: Any) -> None:
        ab = sub_all(hub, ["a", "b"])
        a = sub_all(hub, ["a"])
        c = sub_all(hub, ["c"])
        dup = sub_all(hub, ["b", "b", "a"])
        hub.publish([ev(1, "a"), ev(2, "b"), ev(3, "a")])
        hub.publish([ev(4, "d"), ev(5, "b")])
        hub.publish_ephemeral(presence_event("b", "bob", "online"))
        hub.publish([ev(6, "a")])
        expected_ab = [(1, "a"), (2, "b"), (3, "a"), (5, "b"), (None, "b"), (6, "a")]
        assert [(e.id, e.flow) for e in ab.take_all()] == expected_ab
        assert [(e.id, e.flow) for e in dup.take_all()] == expected_ab  # each event once
        assert [(e.id, e.flow) for e in a.take_all()] == [(1, "a"), (3, "a"), (6, "a")]
        assert c.take_all() == []
        assert len(c) == 0

    async def test_each_event_is_one_object_for_every_subscriber(self, hub: Any) -> None:
        subs = [sub_all(hub, ["a"]), sub_all(hub, ["a", "b"]), sub_all(hub, ["a"])]
        events = [ev(1, "a", "<hello>"), ev(2, "a", "world")]
        raws = [e.raw for e in events]
        hub.publish(events)
        ephemeral = typing_event("a", "bob")
        hub.publish_ephemeral(ephemeral)
        delivered = [sub.take_all() for sub in subs]
        for got in delivered:
            assert len(got) == 3
            for mine, original in zip(got, [*events, ephemeral], strict=True):
                assert mine is original
            for mine, raw in zip(got, raws, strict=False):
                assert mine.raw is raw  # encoded once, bytes shared
        for i in range(3):
            assert delivered[0][i].raw is delivered[1][i].raw is delivered[2][i].raw

    async def test_ephemeral_events(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        other = sub_all(hub, ["b"])
        hub.publish([ev(1)])
        online = presence_event("a", "bob", "online")
        hub.publish_ephemeral(online)
        hub.publish_ephemeral(typing_event("a", "bob"))
        hub.publish_ephemeral(typing_event("zzz", "bob"))  # nobody follows it: no error
        hub.publish([ev(2)])
        got = sub.take_all()
        assert [(e.type, e.id) for e in got] == [
            ("message", 1),
            ("presence", None),
            ("typing", None),
            ("message", 2),
        ]
        assert got[1] is online
        assert other.take_all() == []
        # Ephemeral events do not take part in the id order.
        hub.publish([ev(3)])
        assert ids(sub.take_all()) == [3]

    async def test_count_and_unsubscribe(self, hub: Any) -> None:
        baseline = hub.count()
        a = sub_all(hub, ["a"])
        b = sub_all(hub, ["a", "b"])
        assert hub.count() == baseline + 2
        hub.unsubscribe(a)
        assert hub.count() == baseline + 1
        hub.unsubscribe(a)  # idempotent
        assert hub.count() == baseline + 1
        hub.publish([ev(1, "a"), ev(2, "b")])
        hub.publish_ephemeral(typing_event("a", "bob"))
        assert a.take_all() == []
        assert [e.id for e in b.take_all()] == [1, 2, None]
        hub.unsubscribe(b)
        hub.unsubscribe(b)
        assert hub.count() == baseline
        hub.publish([ev(3, "a"), ev(4, "b")])
        assert b.take_all() == []

    async def test_unsubscribe_keeps_what_was_buffered(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        hub.publish([ev(1), ev(2)])
        hub.unsubscribe(sub)
        hub.publish([ev(3)])
        assert ids(sub.take_all()) == [1, 2]
        assert sub.detached
        assert not sub.lagging

    # -- bounded buffers -----------------------------------------------------------------

    async def test_lagging_by_objects(self, hub: Any) -> None:
        baseline = hub.count()
        sub = sub_all(hub, ["a", "b"], max_objects=3)
        steady = sub_all(hub, ["a", "b"])
        hub.publish([ev(1), ev(2)])
        hub.publish([ev(3, "b")])
        assert not sub.lagging  # exactly full is not lagging
        hub.publish([ev(4), ev(5)])
        assert sub.lagging
        assert sub.detached
        assert hub.count() == baseline + 1
        # Detached from every flow: nothing more arrives.
        hub.publish([ev(6, "b")])
        hub.publish_ephemeral(presence_event("a", "bob", "online"))
        assert ids(sub.take_all()) == [1, 2, 3]  # keeps what it had, in order
        assert sub.take_all() == []
        with trio.fail_after(5):
            await sub.wait()  # returns at once: the stream must end with `lagging`
        assert ids(steady.take_all()) == [1, 2, 3, 4, 5, 6, None]

    async def test_lagging_by_bytes(self, hub: Any) -> None:
        events = [ev(1, content="a" * 100), ev(2, content="b" * 50), ev(3, content="c")]
        sizes = [len(e.raw) for e in events]
        exact = sub_all(hub, ["a"], max_bytes=sizes[0] + sizes[1])
        short = sub_all(hub, ["a"], max_bytes=sizes[0] + sizes[1] - 1)
        hub.publish(events[:2])
        assert not exact.lagging  # exactly at the bound fits
        assert short.lagging and short.detached
        hub.publish(events[2:])
        assert exact.lagging and exact.detached
        assert ids(exact.take_all()) == [1, 2]
        assert ids(short.take_all()) == [1]

    async def test_single_event_over_the_byte_bound(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"], max_bytes=10)
        hub.publish([ev(1)])
        assert sub.lagging
        assert sub.take_all() == []

    async def test_take_all_frees_the_buffer(self, hub: Any) -> None:
        first, second = ev(1), ev(2)
        size = max(len(first.raw), len(second.raw))
        sub = sub_all(hub, ["a"], max_objects=1, max_bytes=size)
        for i in range(1, 6):
            hub.publish([ev(i)])
            assert ids(sub.take_all()) == [i]
        assert not sub.lagging
        assert not sub.detached

    async def test_lagging_by_ephemeral_events(self, hub: Any) -> None:
        baseline = hub.count()
        sub = sub_all(hub, ["a"], max_objects=2)
        for _ in range(3):
            hub.publish_ephemeral(typing_event("a", "bob"))
        assert sub.lagging and sub.detached
        assert len(sub.take_all()) == 2
        assert hub.count() == baseline

    async def test_lagging_subscriber_does_not_disturb_others(self, hub: Any) -> None:
        subs = [sub_all(hub, ["a"], max_objects=n) for n in (1, 2, 3, 100)]
        hub.publish([ev(i) for i in range(1, 6)])
        assert [s.lagging for s in subs] == [True, True, True, False]
        assert [ids(s.take_all()) for s in subs] == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4, 5]]

    # -- wait ---------------------------------------------------------------------------

    async def test_wait_blocks_until_an_event_arrives(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        woke = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_waiter, sub, woke)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                hub.publish([ev(1, "b")])  # another flow: no wake-up
                hub.publish_ephemeral(typing_event("b", "bob"))
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                hub.publish([ev(2, "a")])
                await woke.wait()
        assert ids(sub.take_all()) == [2]

    async def test_wait_wakes_on_ephemeral(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        woke = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_waiter, sub, woke)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                hub.publish_ephemeral(presence_event("a", "bob", "online"))
                await woke.wait()
        assert [e.type for e in sub.take_all()] == ["presence"]

    async def test_wait_returns_at_once_when_something_is_buffered(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        hub.publish([ev(1)])
        with trio.fail_after(5):
            await sub.wait()
            await sub.wait()  # still buffered: still returns
        assert ids(sub.take_all()) == [1]

    async def test_wait_wakes_when_lagging(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"], max_objects=1)
        hub.publish([ev(1)])
        assert ids(sub.take_all()) == [1]
        woke = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_waiter, sub, woke)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                # Two in one batch: the second overflows; the waiter must see it.
                hub.publish([ev(2), ev(3)])
                await woke.wait()
        assert sub.lagging
        assert ids(sub.take_all()) == [2]
        with trio.fail_after(5):
            await sub.wait()  # empty but lagging: returns

    async def test_wait_wakes_when_unsubscribed(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        woke = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_waiter, sub, woke)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                hub.unsubscribe(sub)
                await woke.wait()
            await sub.wait()  # detached: returns at once
        assert sub.take_all() == []

    async def test_many_waiters_all_wake(self, hub: Any) -> None:
        subs = [sub_all(hub, ["a"]) for _ in range(5)]
        woken = [trio.Event() for _ in subs]
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for sub, woke in zip(subs, woken, strict=True):
                    nursery.start_soon(_waiter, sub, woke)
                await trio.testing.wait_all_tasks_blocked()
                assert not any(w.is_set() for w in woken)
                hub.publish([ev(1)])
                for woke in woken:
                    await woke.wait()
        assert all(ids(s.take_all()) == [1] for s in subs)

    # -- direct delivery -------------------------------------------------------------------

    async def test_direct_takes_events_instead_of_the_buffer(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        sub.direct = taker = Taker()
        hub.publish([ev(1)])
        hub.publish([ev(2)])
        assert taker.offers == [[1], [2]]
        assert len(sub) == 0

    async def test_direct_gets_a_batch_at_once_and_only_its_flows(self, hub: Any) -> None:
        both, only_a = sub_all(hub, ["a", "b"]), sub_all(hub, ["a"])
        both.direct, only_a.direct = Taker(), Taker()
        hub.publish([ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "c")])
        assert both.direct.offers == [[1, 2, 3]]
        assert only_a.direct.offers == [[1, 3]]

    async def test_direct_refusal_buffers_and_no_offer_while_buffered(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        sub.direct = taker = Taker(take=False)
        hub.publish([ev(1), ev(2)])
        assert taker.offers == [[1, 2]]
        taker.take = True
        hub.publish([ev(3)])
        hub.publish_ephemeral(typing_event("a", "bob"))
        # older events wait in the buffer: the newer ones must queue behind them
        assert taker.offers == [[1, 2]]
        assert ids(sub.take_all()) == [1, 2, 3, None]
        hub.publish([ev(4)])
        assert taker.offers == [[1, 2], [4]]

    async def test_direct_refusal_past_the_bound_lags(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"], max_objects=2)
        sub.direct = Taker(take=False)
        hub.publish([ev(1), ev(2), ev(3)])
        assert sub.lagging
        assert ids(sub.take_all()) == [1, 2]
        assert hub.count() == 0

    async def test_unsubscribe_drops_direct(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        sub.direct = taker = Taker()
        hub.unsubscribe(sub)
        hub.publish([ev(1)])
        assert taker.offers == [] and sub.direct is None

    # -- the id order ---------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param([1, 2], [2], id="repeat"),
            pytest.param([5], [3], id="lower"),
            pytest.param([1], [3, 2], id="decreasing-in-batch"),
            pytest.param([1], [2, 2], id="repeat-in-batch"),
            pytest.param([], [2, 1], id="first-batch"),
        ],
    )
    async def test_publish_out_of_order_raises(
        self, hub: Any, first: list[int], second: list[int]
    ) -> None:
        sub = sub_all(hub, ["a"])
        if first:
            hub.publish([ev(i) for i in first])
        with pytest.raises(AssertionError, match=r"out of order.*invariant 1"):
            hub.publish([ev(i) for i in second])
        # The refused batch delivered nothing and did not move the order on.
        assert ids(sub.take_all()) == first
        hub.publish([ev(max([*first, *second]) + 1)])
        assert ids(sub.take_all()) == [max([*first, *second]) + 1]

    async def test_publish_refuses_events_without_id(self, hub: Any) -> None:
        with pytest.raises(AssertionError):
            hub.publish([presence_event("a", "bob", "online")])

    async def test_publish_empty_batch(self, hub: Any) -> None:
        sub = sub_all(hub, ["a"])
        hub.publish([])
        hub.publish([ev(1)])
        hub.publish([])
        assert ids(sub.take_all()) == [1]
