"""Presence and typing on the service with the memory store and hub (Tier 1, autojump clock)."""

from __future__ import annotations

import pytest
import trio

from rt.config import Config
from rt.service import open_service

GRACE = 10.0


@pytest.fixture
async def service():
    config = Config(db=":memory:", presence_grace=GRACE)
    async with open_service(config) as svc:
        for name in ("alice", "bob"):
            await svc.directory.create_user(name)
        await svc.directory.create_flow("general")
        yield svc


class Watcher:
    """A stream of bob's that records every ephemeral event it is given."""

    def __init__(self, service, flows=("general",)):
        self.service = service
        self.sub = service.hub.subscribe(flows, max_objects=1000, max_bytes=1 << 20)
        self.seen: list[dict] = []

    def drain(self) -> list[dict]:
        self.seen.extend(e.data for e in self.sub.take_all() if e.id is None)
        return self.seen

    def presence_of(self, user: str) -> list[str]:
        return [e["state"] for e in self.drain() if e["type"] == "presence" and e["user"] == user]


async def open_stream(service, user="alice", client="client-0000000001"):
    return await service.open_stream(
        user=user,
        token="t",
        client=client,
        flows=["general"],
        transport="ws",
        cursor=None,
        epoch=None,
    )


async def test_reconnect_within_grace_sends_no_offline(service, autojump_clock):
    with trio.fail_after(60):
        watcher = Watcher(service)
        first = await open_stream(service)
        assert watcher.presence_of("alice") == ["online"]
        first.finish()
        await trio.sleep(GRACE / 2)
        second = await open_stream(service)
        await trio.sleep(GRACE * 3)
        assert watcher.presence_of("alice") == ["online"]
        assert service.presence.online("general") == ["alice"]
        second.finish()


async def test_gone_past_grace_gives_exactly_one_offline(service, autojump_clock):
    with trio.fail_after(60):
        watcher = Watcher(service)
        session = await open_stream(service)
        session.finish()
        await trio.sleep(GRACE - 0.5)
        assert watcher.presence_of("alice") == ["online"]
        assert service.presence.online("general") == ["alice"]  # still within grace
        await trio.sleep(1.0)
        assert watcher.presence_of("alice") == ["online", "offline"]
        await trio.sleep(GRACE * 3)
        assert watcher.presence_of("alice") == ["online", "offline"]
        assert service.presence.online("general") == []


async def test_two_streams_of_one_user_announce_once(service, autojump_clock):
    with trio.fail_after(60):
        watcher = Watcher(service)
        one = await open_stream(service, client="client-0000000001")
        two = await open_stream(service, client="client-0000000002")
        assert watcher.presence_of("alice") == ["online"]
        one.finish()
        await trio.sleep(GRACE * 2)
        assert watcher.presence_of("alice") == ["online"]  # the second tab is still there
        two.finish()
        await trio.sleep(GRACE + 1)
        assert watcher.presence_of("alice") == ["online", "offline"]


async def test_ready_snapshot_includes_the_user_and_others(service, autojump_clock):
    with trio.fail_after(60):
        bob = await open_stream(service, user="bob", client="client-000000000b")
        alice = await open_stream(service)
        assert alice.ready["presence"] == {"general": ["alice", "bob"]}
        assert bob.ready["presence"] == {"general": ["bob"]}
        alice.finish()
        bob.finish()


async def test_typing_above_one_a_second_is_dropped(service, autojump_clock):
    with trio.fail_after(60):
        watcher = Watcher(service)
        for _ in range(5):
            await service.typing("alice", "general")
        typing = [e for e in watcher.drain() if e["type"] == "typing"]
        assert typing == [{"type": "typing", "flow": "general", "user": "alice"}]
        await trio.sleep(1.01)
        await service.typing("alice", "general")
        await service.typing("bob", "general")  # another user is not limited by alice
        typing = [e for e in watcher.drain() if e["type"] == "typing"]
        assert [e["user"] for e in typing] == ["alice", "alice", "bob"]


async def test_revoked_access_goes_offline_at_once(service, autojump_clock):
    with trio.fail_after(60):
        await service.directory.create_flow("secret", private=True, owner="bob", members=["alice"])
        watcher = Watcher(service, flows=("secret",))
        session = await service.open_stream(
            user="alice",
            token="t",
            client="client-0000000001",
            flows=["secret"],
            transport="ws",
            cursor=None,
            epoch=None,
        )
        await service.directory.remove_member("secret", "alice")
        service.revalidate()
        assert session.ended is not None and session.ended.reason == "unauthorized"
        assert watcher.presence_of("alice") == ["online", "offline"]
        session.finish()
        await trio.sleep(GRACE * 2)
        assert watcher.presence_of("alice") == ["online", "offline"]
