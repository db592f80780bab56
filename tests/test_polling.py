"""Polling sessions on the service with the memory store and hub (Tier 1, autojump clock)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from rt.config import Config
from rt.core.errors import RtError
from rt.core.ops import post_op
from rt.service import open_service

GRACE = 10.0
CLIENT = "poller-000000000001"


@pytest.fixture
async def service():
    config = Config(
        db=":memory:",
        presence_grace=GRACE,
        poll_timeout=25,
        poll_linger=0.02,
        poll_mailbox=5,
        poll_rate=1000,
        ops_rate=1000,
        ops_burst=1000,
    )
    async with open_service(config) as svc:
        for name in ("alice", "bob"):
            await svc.directory.create_user(name)
        await svc.directory.create_flow("general")
        await svc.directory.create_flow("other")
        yield svc


async def poll(
    service,
    cursor=None,
    epoch=None,
    flows=("general",),
    client=CLIENT,
    user="alice",
    transport="poll",
) -> list[dict]:
    parts = await service.poll(
        user=user,
        token="t",
        client=client,
        flows=list(flows),
        transport=transport,
        cursor=cursor,
        epoch=epoch,
    )
    return [json.loads(p) for p in parts]


async def post(service, content: str, n: int, flow: str = "general", user: str = "bob"):
    return await service.apply(
        post_op(user, flow, {"content": content, "uuid": f"uuid-{flow}-{n:06d}"})
    )


async def test_first_poll_answers_ready_at_once(service, autojump_clock):
    with trio.fail_after(60):
        started = trio.current_time()
        answer = await poll(service)
        assert trio.current_time() - started < 0.01
        assert [o["type"] for o in answer] == ["ready"]
        ready = answer[0]
        assert ready["transport"] == "poll" and ready["reset"] is False
        assert ready["presence"] == {"general": ["alice"]}


async def test_poll_waits_for_an_event_and_a_lone_event_answers_at_once(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        answers = []
        answered_at = []

        async def poller():
            answers.append(await poll(service, ready["cursor"], ready["epoch"]))
            answered_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            await trio.sleep(5)
            assert answers == []  # nothing due: still waiting
            first = await post(service, "one", 1)
            posted_at = trio.current_time()
        assert [o["id"] for o in answers[0]] == [first.event.id]
        # Nothing else was on its way: no linger (0.02 s here).
        assert answered_at[0] - posted_at < 0.001


async def test_a_burst_being_written_leaves_as_one_answer(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        answers = []

        async def poller():
            answers.append(await poll(service, ready["cursor"], ready["epoch"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            await trio.sleep(5)
            async with trio.open_nursery() as burst:  # ten ops in the writer at once
                for n in range(10):
                    burst.start_soon(post, service, f"b{n}", n)
        assert len(answers[0]) == 10


async def test_a_poll_lingers_at_most_poll_linger_while_ops_keep_coming(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        answers = []

        async with trio.open_nursery() as nursery:

            async def hold_the_writer(events) -> None:
                if events[0].data["content"] == "one":
                    # While "one" is published, "two" is queued behind it; the
                    # writer then holds "two" for 10 s: more stays on its way.
                    nursery.start_soon(post, service, "two", 2)
                    await trio.testing.wait_all_tasks_blocked()
                else:
                    await trio.sleep(10)

            async def poller():
                answers.append(await poll(service, ready["cursor"], ready["epoch"]))
                answers.append(trio.current_time())

            service.feed.after_commit = hold_the_writer
            nursery.start_soon(poller)
            await trio.sleep(5)
            posted_at = trio.current_time()
            await post(service, "one", 1)
        objects, answered_at = answers
        assert [o["content"] for o in objects] == ["one"]
        # It waited for "two" (the linger, 0.02 s), but no longer.
        assert 0.019 <= answered_at - posted_at < 0.03, answered_at - posted_at


async def test_poll_times_out_with_an_empty_answer(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        started = trio.current_time()
        assert await poll(service, ready["cursor"], ready["epoch"]) == []
        assert 25 <= trio.current_time() - started < 26


async def test_a_newer_poll_makes_the_pending_one_answer_empty(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        answers: dict[str, list] = {}

        async def poller(name):
            answers[name] = await poll(service, ready["cursor"], ready["epoch"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller, "old")
            await trio.sleep(1)
            nursery.start_soon(poller, "new")
            await trio.sleep(1)
            assert answers.get("old") == []
            event = (await post(service, "hi", 1)).event
        assert [o["id"] for o in answers["new"]] == [event.id]


async def test_one_answer_carries_at_most_500_objects(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        for n in range(600):
            await post(service, f"m{n}", n)
        first = await poll(service, ready["cursor"], ready["epoch"])
        assert len(first) == 500
        ids = [o["id"] for o in first]
        assert ids == sorted(ids)
        second = await poll(service, ids[-1], ready["epoch"])
        assert len(second) == 100 and second[0]["id"] == ids[-1] + 1


async def test_a_cursor_on_a_new_session_gets_ready_and_the_backlog(service, autojump_clock):
    with trio.fail_after(60):
        events = [(await post(service, f"m{n}", n)).event for n in range(3)]
        answer = await poll(service, events[0].id, service.feed.epoch, client="poller-000000000009")
        assert answer[0]["type"] == "ready" and answer[0]["cursor"] == events[0].id
        assert [o["id"] for o in answer[1:]] == [e.id for e in events[1:]]
        stale = await poll(service, 2, "another-epoch", client="poller-00000000000a")
        assert stale[0]["reset"] is True and len(stale) == 1


async def test_presence_and_typing_reach_a_polling_client(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        bob = await service.open_stream(
            user="bob",
            token="t",
            client="bob-stream-000000001",
            flows=["general"],
            transport="ws",
            cursor=None,
            epoch=None,
        )
        await service.typing("bob", "general")
        answer = await poll(service, ready["cursor"], ready["epoch"])
        assert answer == [
            {"type": "presence", "flow": "general", "user": "bob", "state": "online"},
            {"type": "typing", "flow": "general", "user": "bob"},
        ]
        bob.finish()
        await trio.sleep(GRACE + 1)  # the session expires meanwhile; a new poll starts anew
        # the mailbox is bounded: the oldest are dropped
        ready = (await poll(service))[0]
        for _ in range(8):
            await trio.sleep(1.1)
            await service.typing("bob", "general")
        answer = await poll(service, ready["cursor"], ready["epoch"])
        assert len(answer) == 5


async def test_stored_events_come_before_ephemeral_ones(service, autojump_clock):
    with trio.fail_after(60):
        ready = (await poll(service))[0]
        await service.typing("bob", "general")
        event = (await post(service, "hi", 1)).event
        answer = await poll(service, ready["cursor"], ready["epoch"])
        assert [o["type"] for o in answer] == ["message", "typing"]
        assert answer[0]["id"] == event.id


async def test_session_expires_after_grace_then_presence_goes_offline(service, autojump_clock):
    with trio.fail_after(120):
        watcher = service.hub.subscribe(["general"], max_objects=100, max_bytes=1 << 20)
        await poll(service)
        assert service.presence.online("general") == ["alice"]
        await trio.sleep(GRACE - 1)
        assert len(service.claims) == 1  # still alive within grace
        await trio.sleep(2 + 1)
        assert len(service.claims) == 0  # expired
        assert service.presence.online("general") == ["alice"]  # offline comes a grace later
        await trio.sleep(GRACE + 1)
        states = [e.data["state"] for e in watcher.take_all() if e.type == "presence"]
        assert states == ["online", "offline"]


async def test_a_stream_supersedes_a_session_and_back(service, autojump_clock):
    with trio.fail_after(120):
        ready = (await poll(service))[0]
        answers = []

        async def poller():
            answers.append(await poll(service, ready["cursor"], ready["epoch"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            await trio.sleep(1)
            stream = await service.open_stream(
                user="alice",
                token="t",
                client=CLIENT,
                flows=["general"],
                transport="ws",
                cursor=None,
                epoch=None,
            )
        assert answers == [[{"type": "close", "reason": "superseded"}]]
        # a session's first poll supersedes the stream
        again = await poll(service)
        assert again[0]["type"] == "ready"
        assert stream.ended is not None and stream.ended.reason == "superseded"
        stream.finish()


async def test_polls_are_rate_limited_per_session(service, autojump_clock):
    service.polling.rate = type(service.polling.rate)(1, 2)
    with trio.fail_after(60):
        await poll(service)
        await poll(service)
        with pytest.raises(RtError) as caught:
            await poll(service)
        assert caught.value.code == "rate_limited" and caught.value.retry_after > 0
        await poll(service, client="poller-000000000002")  # another session is not limited
