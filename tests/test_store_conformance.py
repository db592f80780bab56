"""One conformance suite for every Store (rt/store/base.py), then SQLite-only tests.

Each behaviour runs on the MemoryStore (the verified fake) and on the
SqliteStore with a tiny window (so reads go to disk) and a large one (so
they come from memory).
"""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from rt.core.errors import RtError
from rt.core.events import Event
from rt.core.ops import Op
from rt.store.base import OpResult, Store, hash_token
from rt.store.memory import MemoryStore
from rt.store.sqlite import SqliteStore

_uuids = itertools.count(1)


def uid() -> str:
    return f"uuid-{next(_uuids):08d}"


def post(user: str, flow: str, content: str, uuid: str | None = None) -> Op:
    return Op("message", user, flow, uuid or uid(), content=content)


def edit(user: str, flow: str, message: int, content: str, uuid: str | None = None) -> Op:
    return Op("edit", user, flow, uuid or uid(), message=message, content=content)


def tag(user: str, flow: str, message: int, add: Sequence[str] = (),
        remove: Sequence[str] = (), uuid: str | None = None) -> Op:
    return Op("tag", user, flow, uuid or uid(), message=message,
              add=tuple(sorted(set(add))), remove=tuple(sorted(set(remove))))


def delete(user: str, flow: str, message: int, uuid: str | None = None) -> Op:
    return Op("delete", user, flow, uuid or uid(), message=message)


async def setup_directory(store: Store) -> dict[str, str]:
    """alice, bob and carol; `lobby` (owned by carol) and `side`, both open."""
    tokens = {name: await store.create_user(name) for name in ("alice", "bob", "carol")}
    await store.create_flow("lobby", owner="carol")
    await store.create_flow("side")
    return tokens


def make_store(kind: str, tmp_path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite-window5":
        return SqliteStore(tmp_path / "t.db", window=5)
    assert kind == "sqlite-window10k"
    return SqliteStore(str(tmp_path / "t.db"), window=10_000)


@pytest.fixture(params=["memory", "sqlite-window5", "sqlite-window10k"])
async def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    async with s:
        yield s


@pytest.fixture
async def chat(store):
    """The store with the standard users and flows."""
    await setup_directory(store)
    return store


async def outcome(store: Store, op: Op) -> OpResult | RtError:
    try:
        return await store.submit(op)
    except RtError as exc:
        return exc


async def queued_together(store: Store, ops: Sequence[Op]) -> list[OpResult | RtError]:
    """Submit `ops` so that they are queued in this order and applied in one batch.

    A first op's `after_commit` holds the writer while the others queue up.
    """
    results: list[OpResult | RtError | None] = [None] * len(ops)
    holding, release = trio.Event(), trio.Event()
    hook = store.after_commit

    async def hold(events: list[Event]) -> None:
        holding.set()
        await release.wait()

    async def run(i: int, op: Op) -> None:
        results[i] = await outcome(store, op)

    store.after_commit = hold
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.submit, post("alice", "side", "hold the writer"))
            await holding.wait()
            store.after_commit = hook
            for i, op in enumerate(ops):
                nursery.start_soon(run, i, op)
                await trio.testing.wait_all_tasks_blocked()
            release.set()
    finally:
        store.after_commit = hook
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


async def all_events(store: Store, flows=("lobby", "side")) -> list[Event]:
    out: list[Event] = []
    after = 0
    while True:
        page = await store.read(flows, after, 3)
        if not page:
            return out
        out += page
        after = page[-1].id


# -- ids, publishing, head ----------------------------------------------------


async def test_ids_strictly_increase_across_flows(chat):
    with trio.fail_after(10):
        ids = []
        for i in range(12):
            result = await chat.submit(post("alice", ("lobby", "side")[i % 2], f"m{i}"))
            ids.append(result.body["id"])
        assert ids == sorted(set(ids))
        assert chat.head == ids[-1]
        assert [e.id for e in await all_events(chat)] == ids
        assert [e.id for e in await chat.read(["side"], 0, 100)] == ids[1::2]


async def test_publish_gets_events_in_id_order_and_head_advances(chat):
    with trio.fail_after(10):
        published: list[int] = []

        def publish(events: list[Event]) -> None:
            ids = [e.id for e in events]
            assert ids == sorted(ids)
            assert chat.head < ids[0]  # head moves in the same step, after publishing
            published.extend(ids)

        chat.publish = publish
        start = chat.head
        results: list[OpResult] = []

        async def one(i: int) -> None:
            result = await chat.submit(post("bob", ("lobby", "side")[i % 2], f"c{i}"))
            assert chat.head >= result.body["id"]  # woken only after publishing
            results.append(result)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert published == sorted(published)
        assert len(set(published)) == 30
        assert sorted(r.body["id"] for r in results) == published
        assert all(i > start for i in published)
        assert chat.head == published[-1]


async def test_after_commit_runs_between_commit_and_publish(chat):
    with trio.fail_after(10):
        steps: list[str] = []

        async def after_commit(events: list[Event]) -> None:
            ids = [e.id for e in events]
            assert chat.head < ids[0]
            seen = await chat.read(["lobby"], chat.head, 100)
            assert [e.id for e in seen][-len(ids):] == ids
            assert (await chat.message(ids[0])).content == "hello"
            await trio.sleep(0)
            steps.append("after_commit")

        chat.after_commit = after_commit
        chat.publish = lambda events: steps.append("publish")
        result = await chat.submit(post("alice", "lobby", "hello"))
        assert steps == ["after_commit", "publish"]
        assert chat.head == result.body["id"]


# -- the four ops -------------------------------------------------------------


async def test_post_edit_tag_delete(chat):
    with trio.fail_after(10):
        p = await chat.submit(post("alice", "lobby", "hello"))
        assert p.status == 201 and p.changed and p.event is not None
        mid = p.body["id"]
        assert p.body == {"id": mid, "flow": "lobby", "type": "message", "user": "alice",
                          "uuid": p.body["uuid"], "content": "hello", "sent": p.body["sent"]}
        assert isinstance(p.body["sent"], int) and p.body["sent"] > 1_600_000_000_000
        assert p.event.data == p.body and p.event.id == mid
        state = await chat.message(mid)
        assert state.to_dict() == {"id": mid, "flow": "lobby", "user": "alice",
                                   "sent": p.body["sent"], "content": "hello", "tags": [],
                                   "edited": False, "deleted": False}

        e = await chat.submit(edit("alice", "lobby", mid, "hello!"))
        assert e.status == 200 and e.event is not None
        assert e.body["type"] == "edit" and e.body["message"] == mid
        assert e.body["content"] == "hello!" and e.body["id"] > mid
        state = await chat.message(mid)
        assert state.content == "hello!" and state.edited == e.body["id"]

        t = await chat.submit(tag("bob", "lobby", mid, add=["b", "a"]))
        assert t.status == 200 and t.body["type"] == "tag"
        assert t.body["add"] == ["a", "b"] and t.body["remove"] == [] and t.body["tags"] == ["a", "b"]
        t2 = await chat.submit(tag("bob", "lobby", mid, add=["c", "a"], remove=["b", "zz"]))
        assert t2.body["add"] == ["a", "c"] and t2.body["remove"] == ["b", "zz"]
        assert t2.body["tags"] == ["a", "c"]
        assert (await chat.message(mid)).tags == ("a", "c")

        d = await chat.submit(delete("alice", "lobby", mid))
        assert d.status == 200 and d.body["type"] == "delete" and d.body["message"] == mid
        assert "content" not in d.body
        state = await chat.message(mid)
        assert state.deleted is True and state.content == ""
        assert state.tags == ("a", "c") and state.edited == e.body["id"]
        assert [x.body["id"] for x in (p, e, t, t2, d)] == sorted(
            x.body["id"] for x in (p, e, t, t2, d))
        assert chat.head == d.body["id"]

        for op in (edit("alice", "lobby", mid, "again"), tag("bob", "lobby", mid, add=["x"])):
            with pytest.raises(RtError) as err:
                await chat.submit(op)
            assert err.value.code == "deleted" and err.value.status == 409


async def test_no_ops_store_nothing_and_consume_their_uuid(chat):
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "same"))).body["id"]
        await chat.submit(tag("alice", "lobby", mid, add=["x"]))
        head = chat.head
        cases = [
            edit("alice", "lobby", mid, "same"),
            tag("bob", "lobby", mid, add=["x"]),
            tag("bob", "lobby", mid, remove=["nope"]),
            tag("bob", "lobby", mid, add=["x"], remove=["nope"]),
        ]
        first = {}
        for op in cases:
            result = await chat.submit(op)
            assert result.status == 200 and result.event is None and not result.changed
            state = (await chat.message(mid)).to_dict()
            assert result.body == {"changed": False, "state": state}
            assert await chat.uuid_used(op.user, op.uuid)
            first[op.uuid] = result.body
        assert chat.head == head
        assert len(await chat.read(["lobby"], 0, 100)) == 2

        # The state changes; a retry of a no-op still gets the first answer.
        await chat.submit(tag("carol", "lobby", mid, add=["y"]))
        for op in cases:
            retry = await chat.submit(op)
            assert retry.status == 200 and retry.event is None
            assert retry.body == first[op.uuid]

        d = await chat.submit(delete("alice", "lobby", mid))
        again = delete("carol", "lobby", mid)  # the owner deletes a deleted message
        result = await chat.submit(again)
        assert result.body == {"changed": False, "state": (await chat.message(mid)).to_dict()}
        assert result.body["state"]["deleted"] is True
        assert chat.head == d.body["id"]
        assert (await chat.submit(again)).body == result.body


async def test_uuid_retry_returns_the_same_event(chat):
    with trio.fail_after(10):
        op = post("alice", "lobby", "once")
        first = await chat.submit(op)
        head = chat.head
        retry = await chat.submit(op)
        assert retry.status == 200 and retry.event is None and retry.body == first.body
        assert chat.head == head
        assert len(await chat.read(["lobby"], 0, 100)) == 1

        e = edit("alice", "lobby", first.body["id"], "twice")
        e_first = await chat.submit(e)
        assert (await chat.submit(e)).body == e_first.body
        assert await chat.uuid_used("alice", op.uuid)
        assert not await chat.uuid_used("bob", op.uuid)
        assert not await chat.uuid_used("alice", uid())

        # Uuids are per user: bob may use alice's.
        other = await chat.submit(post("bob", "lobby", "once", uuid=op.uuid))
        assert other.status == 201 and other.body["id"] != first.body["id"]


async def test_uuid_mismatch(chat):
    with trio.fail_after(10):
        op = post("alice", "lobby", "one", uuid="same-uuid-1")
        first = await chat.submit(op)
        mid = first.body["id"]
        head = chat.head
        for other in (post("alice", "lobby", "two", uuid=op.uuid),
                      post("alice", "side", "one", uuid=op.uuid),
                      edit("alice", "lobby", mid, "one", uuid=op.uuid),
                      delete("alice", "lobby", mid, uuid=op.uuid)):
            with pytest.raises(RtError) as err:
                await chat.submit(other)
            assert err.value.code == "uuid_mismatch" and err.value.status == 409
        t = tag("bob", "lobby", mid, add=["a"], uuid="same-uuid-2")
        await chat.submit(t)
        with pytest.raises(RtError) as err:
            await chat.submit(tag("bob", "lobby", mid, add=["b"], uuid=t.uuid))
        assert err.value.code == "uuid_mismatch"
        assert chat.head == head + 1
        # The mismatch comes before any other check: even on a deleted message.
        await chat.submit(delete("alice", "lobby", mid))
        with pytest.raises(RtError) as err:
            await chat.submit(edit("alice", "lobby", mid, "x", uuid=op.uuid))
        assert err.value.code == "uuid_mismatch"
        assert (await chat.submit(op)).body["content"] == ""


async def test_a_failed_op_consumes_nothing(chat):
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "mine"))).body["id"]
        head = chat.head
        failing = [
            (edit("bob", "lobby", 9999, "x", uuid="reused-uuid-1"), "not_found"),
            (edit("bob", "lobby", mid, "x", uuid="reused-uuid-2"), "forbidden"),
            (delete("bob", "lobby", mid, uuid="reused-uuid-3"), "forbidden"),
            (tag("bob", "side", mid, add=["a"], uuid="reused-uuid-4"), "not_found"),
        ]
        for op, code in failing:
            with pytest.raises(RtError) as err:
                await chat.submit(op)
            assert err.value.code == code
            assert not await chat.uuid_used(op.user, op.uuid)
        assert chat.head == head
        for op, _ in failing:
            result = await chat.submit(post("bob", "side", "now it works", uuid=op.uuid))
            assert result.status == 201
        # `deleted` consumes nothing either.
        await chat.submit(delete("alice", "lobby", mid))
        with pytest.raises(RtError):
            await chat.submit(edit("alice", "lobby", mid, "late", uuid="reused-uuid-5"))
        assert not await chat.uuid_used("alice", "reused-uuid-5")
        assert (await chat.submit(post("alice", "lobby", "ok", uuid="reused-uuid-5"))).status == 201


async def test_permissions_and_flows(chat):
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "alice's"))).body["id"]
        with pytest.raises(RtError) as err:
            await chat.submit(edit("bob", "lobby", mid, "bob's now"))
        assert err.value.code == "forbidden" and err.value.status == 403
        with pytest.raises(RtError) as err:
            await chat.submit(delete("bob", "lobby", mid))
        assert err.value.code == "forbidden"
        # Anyone may tag; the flow's owner may delete.
        assert (await chat.submit(tag("bob", "lobby", mid, add=["ok"]))).changed
        d = await chat.submit(delete("carol", "lobby", mid))
        assert d.status == 200 and d.body["user"] == "carol"
        assert (await chat.message(mid)).deleted

        mid2 = (await chat.submit(post("alice", "lobby", "here"))).body["id"]
        for op in (edit("alice", "side", mid2, "there"), delete("alice", "side", mid2),
                   tag("alice", "side", mid2, add=["x"]), edit("alice", "lobby", 10**9, "x")):
            with pytest.raises(RtError) as err:
                await chat.submit(op)
            assert err.value.code == "not_found" and err.value.status == 404
        # Carol owns lobby, not side: she may not delete alice's message there.
        mid3 = (await chat.submit(post("alice", "side", "side"))).body["id"]
        with pytest.raises(RtError) as err:
            await chat.submit(delete("carol", "side", mid3))
        assert err.value.code == "forbidden"
        assert await chat.message(10**9) is None


# -- races inside the writer ----------------------------------------------------


async def test_duplicate_op_in_one_batch(chat):
    with trio.fail_after(10):
        op = post("alice", "lobby", "twice at once")
        results = await queued_together(chat, [op, op])
        assert [r.status for r in results] == [201, 200]
        assert results[0].body == results[1].body
        assert results[0].event is not None and results[1].event is None
        # And unordered, the plain way.
        op = post("alice", "lobby", "again at once")
        got: list[OpResult] = []

        async def one() -> None:
            got.append(await chat.submit(op))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
        assert sorted(r.status for r in got) == [200, 201]
        assert got[0].body == got[1].body
        lobby = await chat.read(["lobby"], 0, 100)
        assert [e.data["content"] for e in lobby] == ["twice at once", "again at once"]


async def test_concurrent_tag_changes_lose_nothing(chat):
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "tag me"))).body["id"]
        rng = random.Random(7)
        ops = []
        for i in range(20):
            t = f"t{rng.randrange(5)}"
            user = ("alice", "bob", "carol")[i % 3]
            ops.append(tag(user, "lobby", mid, add=[t]) if rng.random() < 0.6
                       else tag(user, "lobby", mid, remove=[t]))
        results: list[OpResult | RtError] = []

        async def one(op: Op) -> None:
            results.append(await outcome(chat, op))

        async with trio.open_nursery() as nursery:
            for op in ops:
                nursery.start_soon(one, op)
        assert all(isinstance(r, OpResult) for r in results)
        events = [e for e in await chat.read(["lobby"], mid, 100) if e.type == "tag"]
        assert events, "some change must have been stored"
        assert len(events) == sum(1 for r in results if r.changed)
        # Replaying the events in id order gives each event's `tags`.
        tags: set[str] = set()
        for e in events:
            tags = (tags | set(e.data["add"])) - set(e.data["remove"])
            assert e.data["tags"] == sorted(tags)
        state = await chat.message(mid)
        assert list(state.tags) == events[-1].data["tags"]
        [history] = await chat.history("lobby", before=None, after=None, limit=10)
        assert list(history.tags) == events[-1].data["tags"]


async def test_ops_checked_then_submitted_keep_their_order(chat):
    """As the service does: `uuid_used` (for the rate limit), then `submit`.

    Ops that one connection sends back to back must reach the writer in that
    order, so the uuid check must answer in the order it is asked.
    """
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "toggle"))).body["id"]
        ops = [tag("bob", "lobby", mid, add=["x"]) if i % 2 == 0
               else tag("bob", "lobby", mid, remove=["x"]) for i in range(20)]

        async def apply(op: Op) -> None:
            assert not await chat.uuid_used(op.user, op.uuid)
            await chat.submit(op)

        async with trio.open_nursery() as nursery:
            for op in ops:
                nursery.start_soon(apply, op)
                await trio.sleep(0)  # as a reader between two frames
        events = await chat.read(["lobby"], mid, 100)
        assert [e.data["uuid"] for e in events] == [op.uuid for op in ops]
        assert (await chat.message(mid)).tags == ()


@pytest.mark.parametrize("edit_first", [True, False])
async def test_an_edit_never_lands_after_the_delete_it_raced(chat, edit_first):
    with trio.fail_after(10):
        mid = (await chat.submit(post("alice", "lobby", "before"))).body["id"]
        e, d = edit("alice", "lobby", mid, "after"), delete("alice", "lobby", mid)
        ops = [e, d] if edit_first else [d, e]
        results = dict(zip(("edit", "delete") if edit_first else ("delete", "edit"),
                           await queued_together(chat, ops), strict=True))
        assert isinstance(results["delete"], OpResult) and results["delete"].changed
        if edit_first:
            assert isinstance(results["edit"], OpResult)
            assert results["edit"].body["id"] < results["delete"].body["id"]
            assert results["edit"].body["content"] == "after"  # as acknowledged
        else:
            assert isinstance(results["edit"], RtError) and results["edit"].code == "deleted"
        state = await chat.message(mid)
        assert state.deleted and state.content == ""
        events = await chat.read(["lobby"], 0, 100)
        delete_id = results["delete"].body["id"]
        assert not [x for x in events if x.type == "edit" and x.id > delete_id]
        assert all(x.data.get("content", "") == "" for x in events)


async def test_edit_and_delete_race_unordered(chat):
    with trio.fail_after(10):
        for round_ in range(6):
            mid = (await chat.submit(post("alice", "lobby", f"r{round_}"))).body["id"]
            results: dict[str, OpResult | RtError] = {}

            async def run(name: str, op: Op, results=results) -> None:
                results[name] = await outcome(chat, op)

            async with trio.open_nursery() as nursery:
                pair = [("edit", edit("alice", "lobby", mid, "changed")),
                        ("delete", delete("alice", "lobby", mid))]
                if round_ % 2:
                    pair.reverse()
                for name, op in pair:
                    nursery.start_soon(run, name, op)
            d = results["delete"]
            assert isinstance(d, OpResult) and d.changed
            if isinstance(results["edit"], RtError):
                assert results["edit"].code == "deleted"
            else:
                assert results["edit"].body["id"] < d.body["id"]
            state = await chat.message(mid)
            assert state.deleted and state.content == ""


# -- deletes blank content everywhere --------------------------------------------


async def test_delete_blanks_content_in_events_history_and_retries(chat):
    with trio.fail_after(10):
        p_op = post("alice", "lobby", "secret")
        p = await chat.submit(p_op)
        mid = p.body["id"]
        e_op = edit("alice", "lobby", mid, "more secret")
        await chat.submit(e_op)
        await chat.submit(tag("bob", "lobby", mid, add=["kept"]))
        # Push the message out of a small window before deleting it.
        for i in range(8):
            await chat.submit(post("bob", "side", f"filler {i}"))
        keep = (await chat.submit(post("bob", "lobby", "visible"))).body["id"]
        await chat.submit(delete("alice", "lobby", mid))
        for after in (0, mid - 1):
            events = await chat.read(["lobby"], after, 100)
            by_type = {x.type: x for x in events if x.data.get("message", x.id) == mid}
            assert by_type["message"].data["content"] == ""
            assert by_type["edit"].data["content"] == ""
            assert by_type["tag"].data["tags"] == ["kept"]
            assert "content" not in by_type["delete"].data
            assert b"secret" not in b"".join(x.raw for x in events)
            assert [x.data["content"] for x in events if x.id == keep] == ["visible"]
        history = await chat.history("lobby", before=None, after=None, limit=10)
        assert [(s.id, s.content, s.deleted) for s in history] == [
            (mid, "", True), (keep, "visible", False)]
        assert (await chat.submit(p_op)).body["content"] == ""
        assert (await chat.submit(e_op)).body["content"] == ""
        # Events read back equal across window and disk paths.
        assert [x.raw for x in await all_events(chat)] == [
            x.raw for x in await chat.read(["lobby", "side"], 0, 100)]


# -- reads ------------------------------------------------------------------------


async def test_history_paging(chat):
    with trio.fail_after(10):
        ids = []
        for i in range(10):
            ids.append((await chat.submit(post("alice", "lobby", f"m{i}"))).body["id"])
            await chat.submit(post("bob", "side", f"s{i}"))
        for i in (1, 4, 5, 8):
            await chat.submit(tag("bob", "lobby", ids[i], add=["red"]))
        await chat.submit(tag("bob", "lobby", ids[5], remove=["red"]))  # current tags count

        async def page(**kw):
            kw.setdefault("before", None)
            kw.setdefault("after", None)
            return [s.id for s in await chat.history("lobby", **kw)]

        assert await page(limit=3) == ids[-3:]
        assert await page(limit=50) == ids
        assert await page(after=ids[2], limit=3) == ids[3:6]
        assert await page(after=ids[8], limit=3) == ids[9:]
        assert await page(before=ids[5], limit=3) == ids[2:5]
        assert await page(before=ids[1], limit=3) == ids[:1]
        assert await page(after=ids[1], before=ids[8], limit=3) == ids[2:5]
        assert await page(after=ids[1], before=ids[8], limit=50) == ids[2:8]
        assert await page(after=ids[3], before=ids[4], limit=5) == []
        assert await page(limit=0) == []
        assert await page(after=0, limit=2) == ids[:2]
        assert await page(tag="red", limit=50) == [ids[1], ids[4], ids[8]]
        assert await page(tag="red", limit=2) == [ids[4], ids[8]]
        assert await page(tag="red", after=ids[1], limit=1) == [ids[4]]
        assert await page(tag="red", before=ids[8], limit=1) == [ids[4]]
        assert await page(tag="blue", limit=5) == []
        states = await chat.history("lobby", before=None, after=None, limit=1, tag="red")
        assert states[0].tags == ("red",) and states[0].content == "m8"
        side = await chat.history("side", before=None, after=None, limit=50)
        assert [s.content for s in side] == [f"s{i}" for i in range(10)]
        assert await chat.history("nowhere", before=None, after=None, limit=5) == []


async def test_read_filters_flows_and_respects_limit(chat):
    with trio.fail_after(10):
        await chat.create_flow("third")
        by_flow: dict[str, list[int]] = {"lobby": [], "side": [], "third": []}
        for i in range(15):
            flow = ("lobby", "side", "third")[i % 3]
            by_flow[flow].append((await chat.submit(post("alice", flow, f"{i}"))).body["id"])
        assert [e.id for e in await chat.read(["lobby"], 0, 3)] == by_flow["lobby"][:3]
        both = sorted(by_flow["lobby"] + by_flow["third"])
        assert [e.id for e in await chat.read({"lobby", "third"}, 0, 100)] == both
        assert [e.id for e in await chat.read(("third", "lobby"), both[3], 4)] == both[4:8]
        assert await chat.read(["lobby"], chat.head, 10) == []
        assert await chat.read([], 0, 10) == []
        assert await chat.read(["nowhere"], 0, 10) == []
        # Many flows (a different query on disk).
        many = [f"f{i}" for i in range(40)] + ["side"]
        assert [e.id for e in await chat.read(many, 0, 100)] == by_flow["side"]
        assert [e.id for e in await chat.read(many, by_flow["side"][1], 2)] == by_flow["side"][2:4]
        # Paging with every limit gives the same events.
        whole = [e.id for e in await chat.read(["lobby", "side", "third"], 0, 1000)]
        assert whole == sorted(sum(by_flow.values(), []))
        for limit in (1, 2, 4, 7):
            got, after = [], 0
            while page := await chat.read(["lobby", "side", "third"], after, limit):
                assert len(page) <= limit
                got += [e.id for e in page]
                after = page[-1].id
            assert got == whole
        for after in range(chat.head + 1):  # from below, at and above the window's floor
            page = await chat.read(["lobby", "side", "third"], after, 4)
            assert [e.id for e in page] == [i for i in whole if i > after][:4]
        first = (await chat.read(["lobby"], 0, 1))[0]
        assert first.data == {"id": first.id, "flow": "lobby", "type": "message",
                              "user": "alice", "uuid": first.data["uuid"], "content": "0",
                              "sent": first.data["sent"]}


# -- users, tokens, flows -----------------------------------------------------------


async def test_users_and_tokens(store):
    with trio.fail_after(10):
        token = await store.create_user("dana")
        assert token and store.authenticate(token) == "dana"
        assert store.user_exists("dana") and not store.user_exists("erin")
        assert store.authenticate("rt_nope") is None
        with pytest.raises(RtError) as err:
            await store.create_user("dana")
        assert err.value.code == "exists" and err.value.status == 409
        second = await store.add_token("dana")
        assert second != token and store.authenticate(second) == "dana"
        assert store.authenticate(token) == "dana"
        guest = await store.create_user("erin", guest=True)
        users = await store.list_users()
        assert [(u.name, u.guest) for u in users] == [("dana", False), ("erin", True)]
        assert all(isinstance(u.created, int) for u in users)
        await store.revoke_tokens("dana")
        assert store.authenticate(token) is None and store.authenticate(second) is None
        assert store.authenticate(guest) == "erin" and store.user_exists("dana")
        third = await store.add_token("dana")
        assert store.authenticate(third) == "dana"
        for call in (store.add_token, store.revoke_tokens):
            with pytest.raises(RtError) as err:
                await call("nobody")
            assert err.value.code == "not_found"


async def test_flows_and_members(store):
    with trio.fail_after(10):
        for name in ("owner", "m1", "m2"):
            await store.create_user(name)
        assert store.flow("club") is None
        club = await store.create_flow("club", private=True, owner="owner", members=["m1"])
        assert club.private and club.owner == "owner"
        assert club.members == {"owner", "m1"}
        assert store.flow("club") == club
        assert club.readable_by("m1") and not club.readable_by("m2")
        with pytest.raises(RtError) as err:
            await store.create_flow("club")
        assert err.value.code == "exists"
        for kw in ({"owner": "ghost"}, {"members": ["ghost"]}):
            with pytest.raises(RtError) as err:
                await store.create_flow("haunted", **kw)
            assert err.value.code == "not_found"
        assert store.flow("haunted") is None
        open_ = await store.create_flow("open")
        assert not open_.private and open_.owner is None and open_.members == frozenset()
        assert [f.name for f in store.flows()] == ["club", "open"]

        await store.add_member("club", "m2")
        await store.add_member("club", "m2")  # already a member: fine
        assert store.flow("club").members == {"owner", "m1", "m2"}
        await store.remove_member("club", "m1")
        await store.remove_member("club", "m1")
        assert store.flow("club").members == {"owner", "m2"}
        assert store.flow("club").owner == "owner" and store.flow("club").private
        with pytest.raises(RtError) as err:
            await store.add_member("club", "ghost")
        assert err.value.code == "not_found"
        for call in (store.add_member, store.remove_member):
            with pytest.raises(RtError) as err:
                await call("nowhere", "m1")
            assert err.value.code == "not_found"


# -- SQLite only ----------------------------------------------------------------------


async def test_sqlite_reopen_keeps_everything(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "keep.db"
        async with SqliteStore(path, window=5) as s:
            tokens = await setup_directory(s)
            await s.create_flow("club", private=True, owner="alice", members=["bob"])
            mid = (await s.submit(post("alice", "lobby", "first"))).body["id"]
            op = edit("alice", "lobby", mid, "edited")
            await s.submit(op)
            for i in range(10):
                await s.submit(post("bob", ("lobby", "side")[i % 2], f"n{i}"))
            await s.submit(tag("bob", "lobby", mid, add=["t"]))
            noop = tag("bob", "lobby", mid, add=["t"])
            noop_body = (await s.submit(noop)).body
            epoch, head = s.epoch, s.head
            events = [e.raw for e in await s.read(["lobby", "side"], 0, 100)]
            state = await s.message(mid)
        assert 8 <= len(epoch) <= 32
        for window in (5, 100):
            async with SqliteStore(path, window=window) as s:
                assert s.epoch == epoch and s.head == head
                assert [e.raw for e in await s.read(["lobby", "side"], 0, 100)] == events
                assert [e.raw for e in await all_events(s)] == events
                for after in range(head + 1):
                    page = await s.read(["lobby", "side"], after, 3)
                    assert [e.raw for e in page] == events[after:after + 3]
                assert await s.message(mid) == state
                assert s.authenticate(tokens["bob"]) == "bob" and s.user_exists("carol")
                assert s.flow("club").members == {"alice", "bob"} and s.flow("club").private
                assert s.flow("lobby").owner == "carol"
                assert (await s.submit(op)).body["content"] == "edited"
                assert (await s.submit(noop)).body == noop_body
                assert await s.uuid_used("alice", op.uuid)
        async with SqliteStore(path, window=5) as s:
            new = await s.submit(post("carol", "side", "after reopen"))
            assert new.body["id"] == head + 1 and s.head == head + 1
            assert (await s.read(["side"], head, 10))[0].id == head + 1
        async with SqliteStore(path, window=0) as s:
            assert [e.id for e in await s.read(["side"], head, 10)] == [head + 1]


async def test_sqlite_schema_wal_and_hashed_tokens(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "schema.db"
        async with SqliteStore(path) as s:
            token = await s.create_user("alice")
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            stored = conn.execute("SELECT hash, user FROM tokens").fetchall()
            assert stored == [(hash_token(token), "alice")]
            assert token not in str(conn.execute("SELECT * FROM tokens").fetchall())
            conn.execute("PRAGMA user_version = 2")
            conn.commit()
        finally:
            conn.close()
        with pytest.raises(RuntimeError, match="newer"):
            async with SqliteStore(path):
                pass


async def test_sqlite_history_stops_at_head(tmp_path):
    with trio.fail_after(10):
        async with SqliteStore(tmp_path / "h.db") as s:
            await setup_directory(s)
            first = (await s.submit(post("alice", "lobby", "published"))).body["id"]
            await s.submit(tag("bob", "lobby", first, add=["x"]))
            seen: list[list[int]] = []

            async def after_commit(events: list[Event]) -> None:
                # Committed, not yet published: a history page with cursor `head`
                # must not hold it, or the stream from `head` repeats it.
                for kw in ({}, {"tag": "x"}, {"after": 0}):
                    page = await s.history("lobby", before=None, after=kw.get("after"),
                                           limit=10, tag=kw.get("tag"))
                    seen.append([m.id for m in page])

            s.after_commit = after_commit
            second = await s.submit(post("alice", "lobby", "committed"))
            assert seen == [[first]] * 3
            s.after_commit = None
            page = await s.history("lobby", before=None, after=None, limit=10)
            assert [m.id for m in page] == [first, second.body["id"]]


async def test_sqlite_sync_full(tmp_path):
    with trio.fail_after(10):
        async with SqliteStore(tmp_path / "full.db", sync="full") as s:
            assert s._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            await setup_directory(s)
            r = await s.submit(post("alice", "lobby", "durable"))
            assert r.status == 201
        async with SqliteStore(tmp_path / "full.db") as s:
            assert s._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 1
            assert s.head == r.body["id"]
        with pytest.raises(ValueError):
            SqliteStore(tmp_path / "x.db", sync="sometimes")


async def test_sqlite_sees_another_process_after_refresh(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "shared.db"
        async with SqliteStore(path) as server:
            await setup_directory(server)
            assert await server.refresh() is False
            await server.submit(post("alice", "lobby", "events are not directory changes"))
            await server.create_user("own")  # our own change: nothing to reload
            assert await server.refresh() is False
            async with SqliteStore(path) as cli:
                assert cli.user_exists("own")
                token = await cli.create_user("dave")
                await cli.create_flow("cli-flow", private=True, owner="dave", members=["alice"])
                await cli.add_member("lobby", "dave")
                assert not server.user_exists("dave") and server.flow("cli-flow") is None
                assert await server.refresh() is True
                assert server.user_exists("dave") and server.authenticate(token) == "dave"
                assert server.flow("cli-flow").members == {"dave", "alice"}
                assert "dave" in server.flow("lobby").members
                assert await server.refresh() is False
                await cli.revoke_tokens("dave")
                assert await server.refresh() is True
                assert server.authenticate(token) is None
                # The server's own write after the CLI's does not hide the CLI's.
                await cli.remove_member("cli-flow", "alice")
                await server.create_user("mine")
                assert await server.refresh() is True
                assert server.flow("cli-flow").members == {"dave"}
                assert server.user_exists("mine")
                # A name the CLI took is taken for the server too, before any refresh.
                await cli.create_user("taken")
                with pytest.raises(RtError) as err:
                    await server.create_user("taken")
                assert err.value.code == "exists"
                # The CLI sees the server's events and directory.
                assert [e.data["content"] for e in await cli.read(["lobby"], 0, 10)] == [
                    "events are not directory changes"]
                assert cli.user_exists("mine") is False  # until it refreshes too
                assert await cli.refresh() is True and cli.user_exists("mine")


async def test_sqlite_concurrent_writers_on_one_file(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "busy.db"
        async with SqliteStore(path) as server, SqliteStore(path) as cli:
            await setup_directory(server)

            async def posts() -> None:
                for i in range(60):
                    await server.submit(post("alice", "lobby", f"p{i}"))

            async def admin() -> None:
                for i in range(15):
                    await cli.create_user(f"u{i}")
                    await cli.create_flow(f"f{i}", owner=f"u{i}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(posts)
                nursery.start_soon(admin)
            assert await server.refresh() is True
            assert all(server.user_exists(f"u{i}") for i in range(15))
            assert len(await server.read(["lobby"], 0, 100)) == 60
