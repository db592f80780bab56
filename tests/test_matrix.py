"""Tier 2: the conformance matrix. Every behaviour of PROTOCOL.md sections 3, 3.1, 3.2,
5 and 6 that a stream shows, on each of the seven transports, with the real clients
of tests/clients.py against the real in-process server.

A row runs on every transport it applies to. Where a transport is exempt, EXEMPT
below says why (as PROTOCOL.md does for polling), and the row is parametrised only
over the others: nothing here is skipped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from rt.transports import ALL_TRANSPORTS, FRAMERS, STREAM_HEADERS
from rt.transports.multipart import BOUNDARY
from tests import worlds
from tests.clients import (
    HEARTBEAT,
    POLLING,
    STORED_TYPES,
    STREAMING,
    StreamClient,
    open_stream,
    raw_stream,
    refusal,
)
from tests.helpers import Api, client_id, uuid, wait_for
from tests.worlds import FastApi, World

TRANSPORTS = ["ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"]

_POLL_ONE_BODY = (
    "a poll is answered with one whole body, then the client polls again (PROTOCOL.md 3.2)"
)
_NOT_ROTATING = "rotation is for xhr, multipart and htmlfile only (PROTOCOL.md 3.1: 'ends')"
_SSE_ONLY = "Last-Event-ID is the SSE resume header (PROTOCOL.md 3); others send cursor and epoch"

# Why a row does not apply to a transport. A row runs on every transport not named here.
EXEMPT: dict[str, dict[str, str]] = {
    "ready": {},
    "live": {},
    "resume_under_posters": {},
    "last_event_id": {t: _SSE_ONLY for t in TRANSPORTS if t != "sse"},
    "stale_epoch": {},
    "heartbeats": {
        "poll": "no heartbeat: an idle poll answers [] after poll-timeout (PROTOCOL.md 3.1 table)",
        "jsonp": "no heartbeat: an idle poll answers F([]) after poll-timeout (PROTOCOL.md 3.1)",
    },
    "takeover": {},
    "rotation": {
        "ws": _NOT_ROTATING,
        "sse": _NOT_ROTATING,
        "poll": _POLL_ONE_BODY,
        "jsonp": _POLL_ONE_BODY,
    },
    "slow_reader": {
        t: _POLL_ONE_BODY + "; a poller holds no per-connection buffer: stored events come "
        "from the log by cursor and ephemeral ones wait in the bounded mailbox"
        for t in POLLING
    },
    "stopped_reader": {
        t: _POLL_ONE_BODY + "; a poll answer that cannot be written is bounded by the same "
        "hypercorn write deadline but holds no stream to drop"
        for t in POLLING
    },
    "presence_typing": {},
    "refusals": {},
    "hostile": {},
    "flush": {
        t: _POLL_ONE_BODY + ": no batches to flush (the live-delivery row checks that "
        "a pending poll answers promptly)"
        for t in POLLING
    },
}


def over(row: str) -> list[str]:
    """The transports row `row` runs on."""
    return [t for t in TRANSPORTS if t not in EXEMPT[row]]


READY_FIELDS = {
    "type",
    "protocol",
    "cursor",
    "epoch",
    "reset",
    "flows",
    "client",
    "transport",
    "heartbeat",
    "poll_timeout",
    "presence",
}
HOSTILE = (
    "</script><script>alert(1)</script> \u2028 \u2029 --> ]]> <!-- "
    f'\r\n--{BOUNDARY}--\r\n\n\ndata: {{}}\n\nevent: close\n\n");/**/x(['
)
# Short real timings (docs/architecture.md: Tier 2 uses short real intervals where time must pass).
FAST = dict(poll_rate=1000, ops_rate=100000, ops_burst=100000, poll_timeout=1, write_timeout=1)


def test_the_exemption_table_covers_every_transport_and_gives_reasons():
    assert sorted(TRANSPORTS) == sorted(ALL_TRANSPORTS) == sorted(STREAMING + POLLING)
    for row, exempt in EXEMPT.items():
        assert set(exempt) <= set(TRANSPORTS), row
        assert all(len(reason) > 20 for reason in exempt.values()), row
        assert over(row), f"row {row} runs on no transport"
    assert over("rotation") == [t for t in TRANSPORTS if FRAMERS[t].rotates]
    assert over("heartbeats") == [t for t in TRANSPORTS if not FRAMERS[t].polling]
    assert over("last_event_id") == ["sse"]


# -- the world -----------------------------------------------------------------------------


@asynccontextmanager
async def world(**overrides: Any) -> AsyncIterator[World]:
    """`tests.worlds.world` with generous limits and bob's private flow `secret`."""
    async with worlds.world(secret=True, **{**FAST, **overrides}) as w:
        yield w


async def expect_ready(s: StreamClient, **expected: Any) -> dict[str, Any]:
    ready = await s.next_any()
    assert ready["type"] == "ready", f"{s.transport}: the first object must be ready: {ready}"
    for key, value in expected.items():
        assert ready[key] == value, (key, ready)
    return ready


async def expect_clean_end(s: StreamClient, ws_code: int, reason: str) -> None:
    """After `close`: the WebSocket closes with `ws_code`, an HTTP response ends whole."""
    end = await s.ended()
    if s.transport == "ws":
        assert (end.code, end.reason) == (ws_code, reason)
    else:
        assert end.code is None and end.clean, f"{s.transport}: unclean end: {end}"


# -- ready, live delivery ------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("ready"))
async def test_ready_is_first(transport):
    with trio.fail_after(10):
        async with world(heartbeat=7, poll_timeout=11) as w:
            for _ in range(2):
                await w.post(w.bob)
            store = w.service.feed
            cid = client_id()
            async with open_stream(w.alice, transport, ["other", "general"], cid) as s:
                ready = await expect_ready(s)
                assert set(ready) == READY_FIELDS
                assert (ready["protocol"], ready["cursor"], ready["epoch"], ready["reset"]) == (
                    1,
                    store.head,
                    store.epoch,
                    False,
                )
                assert store.head == 2
                assert ready["flows"] == ["other", "general"]
                assert (ready["client"], ready["transport"]) == (cid, transport)
                assert (ready["heartbeat"], ready["poll_timeout"]) == (7, 11)
                assert ready["presence"] == {"other": ["alice"], "general": ["alice"]}
                if transport == "sse":
                    assert s.info == {"event": "ready", "last_event_id": f"{store.epoch}:2"}
                    assert s.raw.startswith(b"retry: ")
                    assert s.retry is not None and 1000 <= s.retry <= 5000
                elif transport in POLLING:
                    assert s.info == {"poll": 0, "index": 0}  # first of the first answer
                elif transport == "htmlfile":
                    assert s.raw.find(b"<script>p(") >= 1024  # after the preamble
                if transport != "ws":
                    assert s.status == 200 and s.headers is not None
                    assert s.headers["content-type"] == FRAMERS[transport].content_type
                    for name, value in STREAM_HEADERS.items():
                        assert s.headers.get(name) == value, name


@pytest.mark.parametrize("transport", over("live"))
async def test_live_delivery_of_every_stored_type_and_echo(transport):
    with trio.fail_after(10):
        async with world() as w:
            async with open_stream(w.alice, transport, ["general"]) as s:
                await expect_ready(s)
                from_bob = await w.post(w.bob, content="from bob")
                acknowledged = trio.current_time()
                assert await s.stored() == from_bob
                # promptly (a pending poll answers after poll-linger, 20 ms)
                assert trio.current_time() - acknowledged < 0.5
                await w.post(w.alice, "other", "not followed")
                own = await w.post(w.alice, content="own echo")
                assert await s.stored() == own, "an unfollowed flow's event was delivered"
                r = await w.alice.http.patch(
                    f"/flows/general/messages/{own['id']}",
                    json={"content": "edited", "uuid": uuid()},
                )
                assert r.status_code == 200, r.text
                assert await s.stored() == r.json()
                r = await w.alice.http.post(
                    f"/flows/general/messages/{own['id']}/tags",
                    json={"add": ["x"], "remove": [], "uuid": uuid()},
                )
                assert r.status_code == 200, r.text
                assert await s.stored() == r.json()
                r = await w.bob.http.delete(
                    f"/flows/general/messages/{from_bob['id']}", params={"uuid": uuid()}
                )
                assert r.status_code == 200, r.text
                assert await s.stored() == r.json()
                assert [o["type"] for o in s.received if o["type"] in STORED_TYPES] == [
                    "message",
                    "message",
                    "edit",
                    "tag",
                    "delete",
                ]


# -- resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("resume_under_posters"))
async def test_resume_from_cursor_and_epoch_while_two_posters_run(transport):
    with trio.fail_after(20):
        async with world() as w:
            stop = trio.Event()
            finished: list[str] = []

            async def poster(api: Api, name: str) -> None:
                n = 0
                while not stop.is_set():
                    await w.post(api, content=f"{name} {n}")
                    n += 1
                finished.append(name)

            cid = client_id()
            got: list[int] = []
            async with trio.open_nursery() as nursery:
                async with open_stream(w.alice, transport, ["general"], cid) as s:
                    start = (await expect_ready(s))["cursor"]
                    nursery.start_soon(poster, w.alice, "alice")
                    nursery.start_soon(poster, w.bob, "bob")
                    while len(got) < 20:
                        got.append((await s.stored())["id"])
                    cursor, epoch = s.cursor, s.epoch
                assert cursor == got[-1] and epoch == w.service.feed.epoch
                # posts continue while the client is away
                await wait_for(lambda: w.service.feed.head >= cursor + 3)
                away = w.service.feed.head
                async with open_stream(
                    w.alice, transport, ["general"], cid, cursor=cursor, epoch=epoch
                ) as s:
                    if transport in POLLING:
                        # The session (user, client id) is still alive: a poll with a
                        # cursor continues it, without a new `ready` (PROTOCOL.md 3.2).
                        assert w.service.claims.by_key[("alice", cid)].transport == transport
                    else:
                        await expect_ready(s, reset=False, cursor=cursor, epoch=epoch)
                    while len(got) < 40 or got[-1] <= away + 5:
                        got.append((await s.stored())["id"])
                    stop.set()
                    await wait_for(lambda: len(finished) == 2)
                    head = w.service.feed.head
                    while got[-1] < head:
                        got.append((await s.stored())["id"])
                    if transport in POLLING:
                        assert not any(o["type"] == "ready" for o in s.received)
            history = await w.alice.history("general", after=start, limit=500)
            expected = [m["id"] for m in history["messages"]]
            assert got == expected, "a gap or a duplicate"
            assert len(expected) == head - start
            assert cursor < away < head, "the posters did not run both while away and after"


@pytest.mark.parametrize("transport", over("last_event_id"))
async def test_last_event_id_resumes_an_event_source(transport):
    with trio.fail_after(10):
        async with world() as w:
            epoch = w.service.feed.epoch
            cid = client_id()
            async with open_stream(w.alice, transport, ["general"], cid) as s:
                await expect_ready(s)
                seen = [(await w.post(w.bob))["id"] for _ in range(3)]
                assert [(await s.stored())["id"] for _ in seen] == seen
                assert s.info["event"] == "message"
                last_event_id = s.last_event_id  # what a browser's EventSource would send
            assert last_event_id == f"{epoch}:{seen[-1]}"
            missed = [(await w.post(w.bob))["id"] for _ in range(3)]
            # the header wins over parameters that alone would reset
            async with open_stream(
                w.alice,
                transport,
                ["general"],
                cid,
                cursor=1,
                epoch="a-stale-epoch",
                headers={"Last-Event-ID": last_event_id},
            ) as s:
                await expect_ready(s, reset=False, cursor=seen[-1], epoch=epoch)
                assert [(await s.stored())["id"] for _ in missed] == missed
                live = await w.post(w.bob)
                assert await s.stored() == live


@pytest.mark.parametrize("transport", over("stale_epoch"))
async def test_a_stale_epoch_gives_reset(transport):
    with trio.fail_after(10):
        async with world() as w:
            for _ in range(3):
                await w.post(w.bob)
            store = w.service.feed
            async with open_stream(
                w.alice, transport, ["general"], cursor=1, epoch="an-older-epoch"
            ) as s:
                await expect_ready(s, reset=True, cursor=3, epoch=store.epoch)
                live = await w.post(w.bob)
                assert await s.stored() == live  # nothing of the old cursor's backlog


# -- heartbeats ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("heartbeats"))
async def test_heartbeats_on_an_idle_stream(transport):
    heartbeat = 0.3
    with trio.fail_after(10):
        async with world(heartbeat=heartbeat) as w:
            async with open_stream(w.alice, transport, ["general"]) as s:
                await expect_ready(s)
                last = trio.current_time()
                gaps = []
                while len(gaps) < 3:
                    obj = await s.next_any()
                    assert obj == HEARTBEAT, f"an idle stream sent {obj}"
                    now = trio.current_time()
                    gaps.append(now - last)
                    last = now
                # ws: the client's Ping frames keep the socket open, but are not rt
                # writes, so heartbeats still come
                assert all(heartbeat * 0.5 <= gap <= heartbeat * 2.5 for gap in gaps), gaps
                event = await w.post(w.bob)
                assert await s.stored() == event


# -- takeover ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"), [(t, t) for t in over("takeover")] + [("poll", "ws"), ("ws", "poll")]
)
async def test_takeover_supersedes_the_old_connection(old, new):
    with trio.fail_after(10):
        async with world(write_timeout=0.5) as w:
            cid = client_id()
            registry = w.service.claims
            async with open_stream(w.alice, old, ["general"], cid) as first:
                await expect_ready(first)
                session = registry.by_key[("alice", cid)]
                if old in POLLING:  # the client's next poll is waiting in the session
                    await wait_for(lambda: session.pending > 0)
                async with open_stream(w.alice, new, ["general"], cid) as second:
                    await expect_ready(second, client=cid, transport=new, reset=False)
                    assert await first.closing() == {"type": "close", "reason": "superseded"}
                    await expect_clean_end(first, 4009, "superseded")
                    event = await w.post(w.bob)
                    assert await second.stored() == event
                    assert registry.by_key[("alice", cid)].transport == new
                    assert session.ended is not None and session.ended.reason == "superseded"
                    assert not [o for o in first.received if o["type"] in STORED_TYPES]
                    if old in POLLING:  # superseded: the client does not poll again
                        assert first.requests == 2


# -- rotation ------------------------------------------------------------------------------


def _unit_starts(transport: str, raw: bytes) -> list[int]:
    """Where each batch (xhr: each line) of a rotating response starts."""
    if transport == "xhr":
        return [0] + [i + 1 for i, b in enumerate(raw[:-1]) if b == 0x0A]
    marker = b"--" + BOUNDARY.encode() + b"\r\n" if transport == "multipart" else b"<script>p("
    starts, at = [], raw.find(marker)
    while at >= 0:
        starts.append(at)
        at = raw.find(marker, at + 1)
    return starts


async def _until_rotation(
    s: StreamClient, mark: int, posts: list[int] | None = None, post: Any = None
) -> list[int]:
    """Stored ids up to `close` reason `rotate`, which must end the response cleanly.

    With `post`, one more event is posted each time the last one arrived while
    the body is below the mark, so that every batch is one live event, and
    the close after the batch that reached the mark must come on its own.
    """
    got: list[int] = []
    while True:
        if post is not None and len(s.raw) < mark and (not got or posts and got[-1] == posts[-1]):
            assert posts is not None
            posts.append((await post())["id"])
        obj = await s.next()
        if obj["type"] == "close":
            break
        assert obj["type"] in STORED_TYPES, obj
        got.append(obj["id"])
    assert obj == {"type": "close", "reason": "rotate", "retry_ms": 0}
    await expect_clean_end(s, 0, "")
    return got


def _check_rotation_point(transport: str, raw: bytes, mark: int) -> None:
    """The close batch starts at or after the mark; the batch before it, before the mark."""
    starts = _unit_starts(transport, raw)
    close_start = max(p for p in starts if p <= raw.find(b'{"type":"close"'))
    previous = max(p for p in starts if p < close_start)
    assert previous < mark <= close_start, (previous, close_start)
    if transport == "multipart":
        assert raw.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
    elif transport == "htmlfile":
        assert raw.endswith(b"</script>\n</body></html>\n")
    else:
        assert raw.endswith(b'"retry_ms":0}\n')


@pytest.mark.parametrize("transport", over("rotation"))
async def test_rotation_after_rotate_bytes_then_resume(transport):
    mark = 8192
    with trio.fail_after(10):
        async with world(rotate_bytes=mark) as w:
            cid = client_id()
            epoch = w.service.feed.epoch
            # ~1.15 KB each: more than the mark, and what is left after the cut is less
            posted = [(await w.post(w.bob, content=f"{i} " + "r" * 1000))["id"] for i in range(10)]
            # 1. catch-up: one big batch, cut at the mark (the rest comes on resume)
            async with open_stream(
                w.alice, transport, ["general"], cid, cursor=0, epoch=epoch
            ) as s:
                await expect_ready(s, reset=False, cursor=0)
                got = await _until_rotation(s, mark)
                _check_rotation_point(transport, bytes(s.raw), mark)
                cursor = s.cursor
            assert 0 < len(got) < len(posted) and got == posted[: len(got)]
            assert cursor == got[-1]
            # 2. resume: the rest of the catch-up, then live batches until the mark
            async with open_stream(
                w.alice, transport, ["general"], cid, cursor=cursor, epoch=epoch
            ) as s:
                await expect_ready(s, reset=False, cursor=cursor)
                got += await _until_rotation(
                    s, mark, posted, lambda: w.post(w.bob, content="live " + "r" * 1000)
                )
                _check_rotation_point(transport, bytes(s.raw), mark)
                cursor = s.cursor
            assert len(got) > 10, "no live event before the rotation"
            # 3. and on (the event posted last may have come after the close)
            async with open_stream(
                w.alice, transport, ["general"], cid, cursor=cursor, epoch=epoch
            ) as s:
                await expect_ready(s, reset=False, cursor=got[-1])
                while got[-1] < posted[-1]:
                    got.append((await s.stored())["id"])
                live = await w.post(w.bob)
                assert await s.stored() == live
            assert got == posted, "a gap or a duplicate across rotations"


# -- slow and stopped readers --------------------------------------------------------------


async def _raw_after_ready(w: World, transport: str, cid: str):
    raw = await raw_stream(
        w.server, transport, {"flows": "general", "client": cid}, w.alice.token, rcvbuf=4096
    )
    await raw.read_until(lambda body: b'"type":"ready"' in body)
    await wait_for(lambda: ("alice", cid) in w.service.claims.by_key)
    return raw


@pytest.mark.parametrize("transport", over("slow_reader"))
async def test_slow_reader_gets_lagging_or_is_dropped(transport):
    write_timeout = 0.5
    with trio.fail_after(15):
        async with world(
            write_timeout=write_timeout,
            buffer_objects=10,
            buffer_bytes=64 * 1024,
            rotate_bytes=1 << 30,
        ) as w:
            cid = client_id()
            raw = await _raw_after_ready(w, transport, cid)
            registry = w.service.claims
            try:
                async with trio.open_nursery() as nursery:

                    async def slow() -> None:
                        while not raw.done:
                            await raw.read_some(1024)
                            await trio.sleep(1)  # time must pass: 1 KiB a second

                    nursery.start_soon(slow)
                    started = trio.current_time()
                    flooded = 0
                    while ("alice", cid) in registry.by_key and flooded < 400:
                        flooded += len(await w.burst("bob", 5, content="s" * 16000))
                    flood_end = trio.current_time()
                    with trio.fail_after(write_timeout + 1):
                        await wait_for(
                            lambda: (
                                ("alice", cid) not in registry.by_key and w.service.hub.count() == 0
                            )
                        )
                    dropped = trio.current_time()
                    nursery.cancel_scope.cancel()
            finally:
                await raw.aclose()
            lagging = w.sample("rt_lagging_total", transport)
            timeouts = w.sample("rt_write_timeouts_total", transport)
            assert lagging + timeouts >= 1, "the stream ended for another reason"
            assert raw.received > 0, "the slow reader never got a byte"
            assert dropped - flood_end <= write_timeout + 1
            assert started < flood_end
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", over("stopped_reader"))
async def test_stopped_reader_is_dropped_within_write_timeout(transport):
    write_timeout = 0.5
    with trio.fail_after(15):
        async with world(
            write_timeout=write_timeout,
            buffer_bytes=1 << 27,
            buffer_objects=100000,
            rotate_bytes=1 << 30,
        ) as w:
            cid = client_id()
            raw = await _raw_after_ready(w, transport, cid)
            registry = w.service.claims
            try:
                assert w.counts() == (1, 1)
                started = trio.current_time()
                await w.burst("bob", 400, content="x" * 16000)  # far more than socket buffers hold
                flood_end = trio.current_time()
                with trio.fail_after(write_timeout + 1):
                    await wait_for(lambda: w.counts() == (0, 0))
                dropped = trio.current_time()
                assert ("alice", cid) not in registry.by_key
            finally:
                await raw.aclose()
            assert w.sample("rt_write_timeouts_total", transport) == 1
            assert w.sample("rt_lagging_total", transport) == 0
            assert dropped - started >= write_timeout * 0.8, "dropped before the write timeout"
            assert dropped - flood_end <= write_timeout + 1


# -- presence and typing -------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("presence_typing"))
async def test_presence_and_typing_reach_every_transport(transport):
    grace = 0.3
    with trio.fail_after(10):
        async with world(presence_grace=grace) as w:
            async with open_stream(w.alice, transport, ["general"]) as s:
                await expect_ready(s, presence={"general": ["alice"]})
                async with open_stream(w.bob, "ws", ["general"]) as b:
                    await expect_ready(b)
                    assert await s.next() == {
                        "type": "presence",
                        "flow": "general",
                        "user": "bob",
                        "state": "online",
                    }
                    r = await w.bob.http.post("/flows/general/typing")
                    assert r.status_code == 204, r.text
                    assert await s.next() == {"type": "typing", "flow": "general", "user": "bob"}
                left = trio.current_time()
                assert await s.next() == {
                    "type": "presence",
                    "flow": "general",
                    "user": "bob",
                    "state": "offline",
                }
                assert trio.current_time() - left >= grace * 0.8
                event = await w.post(w.bob)
                assert await s.next() == event


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("refusals"))
async def test_401_without_a_ticket_or_with_an_expired_one(transport):
    ttl = 0.3
    with trio.fail_after(10):
        async with world(ticket_ttl=ttl, presence_grace=0.2) as w:
            anonymous = FastApi(w.server)
            try:
                assert await refusal(anonymous, transport, ["general"]) == (401, "unauthorized")
            finally:
                await anonymous.aclose()
            assert await refusal(w.alice, transport, ["general"], ticket="tk_not-a-ticket") == (
                401,
                "unauthorized",
            )
            cid = client_id()
            ticket = await w.alice.ticket(cid)
            async with open_stream(w.alice, transport, ["general"], cid, ticket=ticket) as s:
                await expect_ready(s)  # the ticket works while fresh (and any number of times)
            await trio.sleep(ttl * 1.5)  # time must pass: beyond ticket-ttl since its last use
            assert await refusal(w.alice, transport, ["general"], client=cid, ticket=ticket) == (
                401,
                "unauthorized",
            )
            await w.wait_counts((0, 0))


@pytest.mark.parametrize("transport", over("refusals"))
async def test_403_on_a_private_flow(transport):
    with trio.fail_after(10):
        async with world() as w:
            assert await refusal(w.alice, transport, ["general", "secret"]) == (403, "forbidden")
            async with open_stream(w.bob, transport, ["general", "secret"]) as s:
                await expect_ready(s, flows=["general", "secret"])  # its member may


@pytest.mark.parametrize("transport", over("refusals"))
async def test_400_for_bad_parameters(transport):
    cases: list[dict[str, Any]] = [
        {"client": "short"},
        {"v": "2"},
        {"cursor": -1, "epoch": "abcdefgh"},
        {"cursor": "x", "epoch": "abcdefgh"},
        {"flows": ["Bad Flow"]},
        {"flows": [f"f{i}" for i in range(101)]},
        {"token": "in-the-url"},
    ]
    if transport in ("htmlfile", "jsonp"):
        cases += [
            {"callback": None},
            {"callback": "alert(1)//"},
            {"callback": "a" * 65},
            {"callback": "1abc"},
        ]
    with trio.fail_after(10):
        async with world() as w:
            for case in cases:
                case = dict(case)
                flows = case.pop("flows", ["general"])
                got = await refusal(w.alice, transport, flows, use_ticket=False, **case)
                assert got == (400, "bad_request"), case
            await w.wait_counts((0, 0))


# -- hostile content -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("hostile"))
async def test_hostile_message_arrives_intact_and_stays_in_its_frame(transport):
    with trio.fail_after(10):
        async with world() as w:
            # live, then again from the log (catch-up after a resume from cursor 0)
            for cursor in (None, 0):
                epoch = w.service.feed.epoch if cursor == 0 else None
                async with open_stream(
                    w.alice, transport, ["general"], cursor=cursor, epoch=epoch
                ) as s:
                    await expect_ready(s)
                    if cursor is None:
                        hostile = await w.post(w.bob, content=HOSTILE)
                    got = await s.stored()
                    assert got == hostile and got["content"] == HOSTILE
                    if cursor is None:
                        after = await w.post(w.bob, content="after")
                    assert await s.stored() == after, "the framing broke after the message"
                    raw = bytes(s.raw)
                # one object each, and the decoders (WHATWG tokenizer, RFC 2046 parts, SSE
                # lines, NDJSON, the exact JSONP call) accepted every byte around them
                assert [o["type"] for o in s.received] == ["ready", "message", "message"]
                assert b"\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in raw
                for forbidden in (
                    b"<script>alert",
                    "\u2028".encode(),
                    "\u2029".encode(),
                    b"]]>",
                    b"</script><script>",
                    b"\r\n--" + BOUNDARY.encode() + b"--\r\n\n",
                ):
                    assert forbidden not in raw, forbidden
                in_preamble = 1 if transport == "htmlfile" else 0  # its padding comment
                assert raw.count(b"-->") == in_preamble and raw.count(b"<!--") == in_preamble
                if transport == "htmlfile":
                    assert (
                        raw.count(b"<script>") == raw.count(b"</script>") == 4 - (cursor == 0)
                    )  # catch-up: both in one batch
                if transport == "sse":  # retry, ready, two events: no forged event
                    assert raw.count(b"\n\n") == 4


# -- flush ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", over("flush"))
async def test_each_event_is_flushed_within_100_ms_of_its_acknowledgement(transport):
    with trio.fail_after(10):
        async with world() as w:
            raw = await raw_stream(
                w.server, transport, {"flows": "general", "client": client_id()}, w.alice.token
            )
            try:
                assert raw.status == (101 if transport == "ws" else 200)
                await raw.read_until(lambda body: b'"type":"ready"' in body)
                lags = []
                for i in range(5):
                    marker = f"flush-{i}-{uuid()}"
                    arrived: list[float] = []

                    async def watch(
                        marker: bytes = marker.encode(), arrived: list[float] = arrived
                    ) -> None:
                        await raw.read_until(lambda body: marker in body)
                        arrived.append(trio.current_time())

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch)
                        r = await w.alice.post("general", marker)
                        acknowledged = trio.current_time()
                        assert r.status_code == 201, r.text
                    lags.append(arrived[0] - acknowledged)
                    assert json.dumps(marker).encode() in raw.body
            finally:
                await raw.aclose()
            assert max(lags) < 0.1, lags


@pytest.mark.parametrize("transport", over("rotation"))
async def test_a_tiny_rotate_bytes_still_delivers_an_event_each_response(transport):
    """`ready` alone past the mark: each response still carries an object before it
    rotates, so resuming makes progress (it did not: the client looped for ever)."""
    with trio.fail_after(15):
        async with world(rotate_bytes=200) as w:
            cid = client_id()
            epoch = w.service.feed.epoch
            posted = [(await w.post(w.bob, content=f"tiny {i}"))["id"] for i in range(5)]
            cursor, got = 0, []
            for _ in range(len(posted)):  # at most one response per event
                async with open_stream(
                    w.alice, transport, ["general"], cid, cursor=cursor, epoch=epoch
                ) as s:
                    await expect_ready(s, reset=False, cursor=cursor)
                    while True:
                        obj = await s.next()
                        if obj.get("type") == "close":
                            assert obj["reason"] == "rotate"
                            break
                        if isinstance(obj.get("id"), int):
                            got.append(obj["id"])
                assert got and got[-1] > cursor, "a response rotated without an event"
                cursor = got[-1]
                if cursor == posted[-1]:
                    break
            assert got == posted
