"""Conformance checks of a backend's live state (rt/backend/contracts.py).

Subclass each with its factory: `TicketsChecks.make_tickets(ttl)`,
`PresenceChecks.make_presence(grace, publish)`,
`ClaimsChecks.make_claims(write_timeout, max_streams)`,
`BusChecks.make_bus(hub)`. Times run on Trio's clock (`autojump_clock`).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from rt.core.errors import RtError
from rt.core.events import Event, typing_event
from rt.hub import MemoryHub


class TicketsChecks:
    TTL = 60.0

    def make_tickets(self, ttl: float) -> Any:
        raise NotImplementedError

    async def test_a_ticket_is_redeemed_for_its_client_only(self) -> None:
        tickets = self.make_tickets(self.TTL)
        ticket, expires = await tickets.issue("alice", "client-0000000001", "rt_token")
        assert ticket.startswith("tk_") and isinstance(expires, int)
        record = await tickets.redeem(ticket, "client-0000000001")
        assert (record.user, record.client, record.token) == (
            "alice",
            "client-0000000001",
            "rt_token",
        )
        again = await tickets.redeem(ticket, "client-0000000001")  # any number of times
        assert again.user == "alice"
        for bad_ticket, client in ((ticket, "client-0000000002"), ("tk_unknown", "c" * 16)):
            with pytest.raises(RtError) as info:
                await tickets.redeem(bad_ticket, client)
            assert info.value.code == "unauthorized"

    async def test_a_ticket_lapses_ttl_after_its_last_use(self, autojump_clock) -> None:
        tickets = self.make_tickets(self.TTL)
        ticket, _ = await tickets.issue("alice", "client-0000000001", "rt_token")
        await trio.sleep(self.TTL * 0.9)
        await tickets.redeem(ticket, "client-0000000001")  # extends its life
        await trio.sleep(self.TTL * 0.9)
        await tickets.redeem(ticket, "client-0000000001")
        await trio.sleep(self.TTL * 1.01)
        with pytest.raises(RtError):
            await tickets.redeem(ticket, "client-0000000001")


class PresenceChecks:
    GRACE = 10.0

    def make_presence(self, grace: float, publish: Any) -> Any:
        raise NotImplementedError

    @pytest.fixture
    def published(self) -> list[tuple[str, str, str]]:
        return []

    @pytest.fixture
    async def presence(self, published):
        def publish(event: Event) -> None:
            published.append((event.flow, event.data["user"], event.data["state"]))

        presence = self.make_presence(self.GRACE, publish)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(presence.run)
            yield presence
            nursery.cancel_scope.cancel()

    async def test_online_once_per_user_and_flow(self, presence, published, autojump_clock) -> None:
        presence.join("alice", ["a", "b"])
        presence.join("alice", ["a"])  # a second tab
        assert published == [("a", "alice", "online"), ("b", "alice", "online")]
        assert presence.online("a") == ["alice"]
        assert presence.snapshot(["a", "b", "c"]) == {"a": ["alice"], "b": ["alice"], "c": []}

    async def test_offline_after_grace_and_a_quick_return_does_not_flap(
        self, presence, published, autojump_clock
    ) -> None:
        presence.join("alice", ["a"])
        presence.join("alice", ["a"])
        presence.leave("alice", ["a"])
        presence.leave("alice", ["a"])
        await trio.sleep(self.GRACE / 2)
        assert presence.online("a") == ["alice"]  # within the grace: still there
        presence.join("alice", ["a"])  # back in time: no event at all
        presence.leave("alice", ["a"])
        await trio.sleep(self.GRACE * 1.5)
        assert published == [("a", "alice", "online"), ("a", "alice", "offline")]
        assert presence.online("a") == []

    async def test_leave_now_is_at_once(self, presence, published, autojump_clock) -> None:
        presence.join("alice", ["a", "b"])
        presence.leave_now("alice", ["a"])
        assert published[-1] == ("a", "alice", "offline")
        assert presence.online("a") == [] and presence.online("b") == ["alice"]


class _Claimant:
    def __init__(self, user: str, client: str, stubborn: bool = False) -> None:
        self.user, self.client = user, client
        self.done = trio.Event()
        self.ended: str | None = None
        self.stubborn = stubborn  # never finishes on its own

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.client)

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason


class ClaimsChecks:
    WRITE_TIMEOUT = 3.0

    def make_claims(self, write_timeout: float, max_streams: int) -> Any:
        raise NotImplementedError

    async def _finish_when_ended(self, claims: Any, claimant: _Claimant) -> None:
        while claimant.ended is None:
            await trio.sleep(0.01)
        claims.release(claimant)
        claimant.done.set()

    async def test_a_new_claimant_supersedes_the_old_and_waits_for_it(self, autojump_clock) -> None:
        claims = self.make_claims(self.WRITE_TIMEOUT, 32)
        taken: list[Any] = []
        claims.on_takeover = taken.append
        old = _Claimant("alice", "tab")
        assert await claims.claim(old) and claims.holder(old.key) is old
        new = _Claimant("alice", "tab")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._finish_when_ended, claims, old)
            started = trio.current_time()
            assert await claims.claim(new)
            assert trio.current_time() - started < self.WRITE_TIMEOUT
        assert old.ended == "superseded" and taken == [old]
        assert claims.holder(new.key) is new and len(claims) == 1
        claims.release(old)  # a late release of the old one changes nothing
        assert claims.holder(new.key) is new

    async def test_a_stuck_old_claimant_is_waited_for_at_most_write_timeout(
        self, autojump_clock
    ) -> None:
        claims = self.make_claims(self.WRITE_TIMEOUT, 32)
        old = _Claimant("alice", "tab", stubborn=True)
        await claims.claim(old)
        started = trio.current_time()
        assert await claims.claim(_Claimant("alice", "tab"))
        assert abs(trio.current_time() - started - self.WRITE_TIMEOUT) < 0.5

    async def test_of_three_racing_claimants_the_last_wins(self, autojump_clock) -> None:
        claims = self.make_claims(self.WRITE_TIMEOUT, 32)
        first = _Claimant("alice", "tab", stubborn=True)
        await claims.claim(first)
        second, third = _Claimant("alice", "tab"), _Claimant("alice", "tab")
        won: dict[str, bool] = {}

        async def claim(name: str, claimant: _Claimant) -> None:
            won[name] = await claims.claim(claimant)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, "second", second)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(claim, "third", third)
        assert won == {"second": False, "third": True}
        assert claims.holder(third.key) is third and second.ended == "superseded"

    async def test_past_max_streams_the_oldest_is_evicted(self, autojump_clock) -> None:
        claims = self.make_claims(self.WRITE_TIMEOUT, 2)
        streams = [_Claimant("alice", f"tab-{i}") for i in range(3)]
        for claimant in streams:
            assert await claims.claim(claimant)
        assert [s.ended for s in streams] == ["evicted", None, None]
        other = _Claimant("bob", "tab-0")
        assert await claims.claim(other) and other.ended is None  # per user
        assert {c.key for c in claims.claimants()} >= {s.key for s in streams[1:]}


class BusChecks:
    def make_bus(self, hub: MemoryHub) -> Any:
        raise NotImplementedError

    async def test_ephemeral_events_reach_the_hub(self) -> None:
        hub = MemoryHub()
        bus = self.make_bus(hub)
        sub = hub.subscribe(["a"], max_objects=100, max_bytes=1 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus.run)
            bus.publish(typing_event("a", "alice"))
            bus.publish(typing_event("b", "alice"))
            with trio.fail_after(5):
                await sub.wait()
            nursery.cancel_scope.cancel()
        assert [(e.type, e.flow) for e in sub.take_all()] == [("typing", "a")]
