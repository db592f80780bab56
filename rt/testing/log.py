"""`LogChecks`: the log's conformance checks (rt/store/contracts.py), run with a feed and a
writer as a node runs them (`rt.testing.storage.Storage`).

Subclass it in a test module with `storage()` returning an unopened
`Storage` for the implementation under test; tests/test_store_conformance.py
runs it on the memory log and on SQLite with a tiny window (reads go to
disk) and a large one (they come from memory).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from rt.core.errors import RtError
from rt.core.events import Event
from rt.core.ops import Op
from rt.store import OpResult
from rt.testing.storage import Storage

_uuids = itertools.count(1)


def uid() -> str:
    return f"uuid-{next(_uuids):08d}"


def post(user: str, flow: str, content: str, uuid: str | None = None) -> Op:
    return Op("message", user, flow, uuid or uid(), content=content)


def edit(user: str, flow: str, message: int, content: str, uuid: str | None = None) -> Op:
    return Op("edit", user, flow, uuid or uid(), message=message, content=content)


def tag(
    user: str,
    flow: str,
    message: int,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    uuid: str | None = None,
) -> Op:
    return Op(
        "tag",
        user,
        flow,
        uuid or uid(),
        message=message,
        add=tuple(sorted(set(add))),
        remove=tuple(sorted(set(remove))),
    )


def delete(user: str, flow: str, message: int, uuid: str | None = None) -> Op:
    return Op("delete", user, flow, uuid or uid(), message=message)


async def setup_directory(store: Storage) -> dict[str, str]:
    """alice, bob and carol; `lobby` (owned by carol) and `side`, both open."""
    tokens = {name: await store.create_user(name) for name in ("alice", "bob", "carol")}
    await store.create_flow("lobby", owner="carol")
    await store.create_flow("side")
    return tokens


async def outcome(store: Storage, op: Op) -> OpResult | RtError:
    try:
        return await store.submit(op)
    except RtError as exc:
        return exc


async def queued_together(store: Storage, ops: Sequence[Op]) -> list[OpResult | RtError]:
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


async def all_events(store: Storage, flows=("lobby", "side")) -> list[Event]:
    out: list[Event] = []
    after = 0
    while True:
        page = await store.read(flows, after, 3)
        if not page:
            return out
        out += page
        after = stored_id(page[-1])


def stored_id(event: Event) -> int:
    """The id of a stored event (ephemeral events have none)."""
    assert event.id is not None, event
    return event.id


class LogChecks:
    """The log's contract, one test each. Subclasses define `storage(tmp_path)`."""

    def storage(self, tmp_path) -> Storage:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, tmp_path):
        async with self.storage(tmp_path) as s:
            yield s

    @pytest.fixture
    async def chat(self, store):
        """The storage with the standard users and flows."""
        await setup_directory(store)
        return store

    # -- ids, publishing, head ----------------------------------------------------

    async def test_ids_strictly_increase_across_flows(self, chat):
        with trio.fail_after(10):
            ids = []
            for i in range(12):
                result = await chat.submit(post("alice", ("lobby", "side")[i % 2], f"m{i}"))
                ids.append(result.body["id"])
            assert ids == sorted(set(ids))
            assert chat.head == ids[-1]
            assert [e.id for e in await all_events(chat)] == ids
            assert [e.id for e in await chat.read(["side"], 0, 100)] == ids[1::2]

    async def test_publish_gets_events_in_id_order_and_head_advances(self, chat):
        with trio.fail_after(10):
            published: list[int] = []

            def publish(events: list[Event]) -> None:
                ids = [stored_id(e) for e in events]
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

    async def test_after_commit_runs_between_commit_and_publish(self, chat):
        with trio.fail_after(10):
            steps: list[str] = []

            async def after_commit(events: list[Event]) -> None:
                ids = [e.id for e in events]
                assert chat.head < ids[0]
                # Committed in the log, but not read through the feed before it is
                # published: a stream from `head` would deliver it twice otherwise.
                committed = await chat.log.read(["lobby"], chat.head, ids[-1], 100)
                assert [e.id for e in committed][-len(ids) :] == ids
                assert await chat.read(["lobby"], chat.head, 100) == []
                assert (await chat.message(ids[0])).content == "hello"
                await trio.sleep(0)
                steps.append("after_commit")

            chat.after_commit = after_commit
            chat.publish = lambda events: steps.append("publish")
            result = await chat.submit(post("alice", "lobby", "hello"))
            assert steps == ["after_commit", "publish"]
            assert chat.head == result.body["id"]

    # -- the four ops -------------------------------------------------------------

    async def test_post_edit_tag_delete(self, chat):
        with trio.fail_after(10):
            p = await chat.submit(post("alice", "lobby", "hello"))
            assert p.status == 201 and p.changed and p.event is not None
            mid = p.body["id"]
            assert p.body == {
                "id": mid,
                "flow": "lobby",
                "type": "message",
                "user": "alice",
                "uuid": p.body["uuid"],
                "content": "hello",
                "sent": p.body["sent"],
            }
            assert isinstance(p.body["sent"], int) and p.body["sent"] > 1_600_000_000_000
            assert p.event.data == p.body and p.event.id == mid
            state = await chat.message(mid)
            assert state.to_dict() == {
                "id": mid,
                "flow": "lobby",
                "user": "alice",
                "sent": p.body["sent"],
                "content": "hello",
                "tags": [],
                "edited": False,
                "deleted": False,
            }

            e = await chat.submit(edit("alice", "lobby", mid, "hello!"))
            assert e.status == 200 and e.event is not None
            assert e.body["type"] == "edit" and e.body["message"] == mid
            assert e.body["content"] == "hello!" and e.body["id"] > mid
            state = await chat.message(mid)
            assert state.content == "hello!" and state.edited == e.body["id"]

            t = await chat.submit(tag("bob", "lobby", mid, add=["b", "a"]))
            assert t.status == 200 and t.body["type"] == "tag"
            assert (
                t.body["add"] == ["a", "b"]
                and t.body["remove"] == []
                and t.body["tags"] == ["a", "b"]
            )
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
                x.body["id"] for x in (p, e, t, t2, d)
            )
            assert chat.head == d.body["id"]

            for op in (edit("alice", "lobby", mid, "again"), tag("bob", "lobby", mid, add=["x"])):
                with pytest.raises(RtError) as err:
                    await chat.submit(op)
                assert err.value.code == "deleted" and err.value.status == 409

    async def test_no_ops_store_nothing_and_consume_their_uuid(self, chat):
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

    async def test_uuid_retry_returns_the_same_event(self, chat):
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

    async def test_uuid_mismatch(self, chat):
        with trio.fail_after(10):
            op = post("alice", "lobby", "one", uuid="same-uuid-1")
            first = await chat.submit(op)
            mid = first.body["id"]
            head = chat.head
            for other in (
                post("alice", "lobby", "two", uuid=op.uuid),
                post("alice", "side", "one", uuid=op.uuid),
                edit("alice", "lobby", mid, "one", uuid=op.uuid),
                delete("alice", "lobby", mid, uuid=op.uuid),
            ):
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

    async def test_a_failed_op_consumes_nothing(self, chat):
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
            assert (
                await chat.submit(post("alice", "lobby", "ok", uuid="reused-uuid-5"))
            ).status == 201

    async def test_permissions_and_flows(self, chat):
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
            for op in (
                edit("alice", "side", mid2, "there"),
                delete("alice", "side", mid2),
                tag("alice", "side", mid2, add=["x"]),
                edit("alice", "lobby", 10**9, "x"),
            ):
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

    async def test_duplicate_op_in_one_batch(self, chat):
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

    async def test_concurrent_tag_changes_lose_nothing(self, chat):
        with trio.fail_after(10):
            mid = (await chat.submit(post("alice", "lobby", "tag me"))).body["id"]
            rng = random.Random(7)
            ops = []
            for i in range(20):
                t = f"t{rng.randrange(5)}"
                user = ("alice", "bob", "carol")[i % 3]
                ops.append(
                    tag(user, "lobby", mid, add=[t])
                    if rng.random() < 0.6
                    else tag(user, "lobby", mid, remove=[t])
                )
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

    async def test_ops_checked_then_submitted_keep_their_order(self, chat):
        """As the service does: `uuid_used` (for the rate limit), then `submit`.

        Ops that one connection sends back to back must reach the writer in that
        order, so the uuid check must answer in the order it is asked.
        """
        with trio.fail_after(10):
            mid = (await chat.submit(post("alice", "lobby", "toggle"))).body["id"]
            ops = [
                tag("bob", "lobby", mid, add=["x"])
                if i % 2 == 0
                else tag("bob", "lobby", mid, remove=["x"])
                for i in range(20)
            ]

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
    async def test_an_edit_never_lands_after_the_delete_it_raced(self, chat, edit_first):
        with trio.fail_after(10):
            mid = (await chat.submit(post("alice", "lobby", "before"))).body["id"]
            e, d = edit("alice", "lobby", mid, "after"), delete("alice", "lobby", mid)
            ops = [e, d] if edit_first else [d, e]
            results = dict(
                zip(
                    ("edit", "delete") if edit_first else ("delete", "edit"),
                    await queued_together(chat, ops),
                    strict=True,
                )
            )
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

    async def test_edit_and_delete_race_unordered(self, chat):
        with trio.fail_after(10):
            for round_ in range(6):
                mid = (await chat.submit(post("alice", "lobby", f"r{round_}"))).body["id"]
                results: dict[str, OpResult | RtError] = {}

                async def run(name: str, op: Op, results=results) -> None:
                    results[name] = await outcome(chat, op)

                async with trio.open_nursery() as nursery:
                    pair = [
                        ("edit", edit("alice", "lobby", mid, "changed")),
                        ("delete", delete("alice", "lobby", mid)),
                    ]
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

    async def test_delete_blanks_content_in_events_history_and_retries(self, chat):
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
                (mid, "", True),
                (keep, "visible", False),
            ]
            assert (await chat.submit(p_op)).body["content"] == ""
            assert (await chat.submit(e_op)).body["content"] == ""
            # Events read back equal across window and disk paths.
            assert [x.raw for x in await all_events(chat)] == [
                x.raw for x in await chat.read(["lobby", "side"], 0, 100)
            ]

    # -- reads ------------------------------------------------------------------------

    async def test_history_paging(self, chat):
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

    async def test_read_filters_flows_and_respects_limit(self, chat):
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
            assert [e.id for e in await chat.read(many, by_flow["side"][1], 2)] == by_flow["side"][
                2:4
            ]
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
            assert first.data == {
                "id": first.id,
                "flow": "lobby",
                "type": "message",
                "user": "alice",
                "uuid": first.data["uuid"],
                "content": "0",
                "sent": first.data["sent"],
            }
