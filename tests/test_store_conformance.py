"""The log and directory conformance checks (rt.testing) on the memory and SQLite
implementations, then SQLite-only tests (reopen, schema, sync, another process)."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from rt.core.errors import RtError
from rt.core.events import Event
from rt.store import MemoryDirectory
from rt.store.contracts import hash_token
from rt.store.sqlite_directory import SqliteDirectory
from rt.testing.directory import DirectoryChecks
from rt.testing.log import LogChecks, all_events, edit, post, setup_directory, tag
from rt.testing.storage import memory_storage, sqlite_storage


class TestMemoryLog(LogChecks):
    def storage(self, tmp_path):
        return memory_storage()


class TestSqliteLogWindow5(LogChecks):
    def storage(self, tmp_path):
        return sqlite_storage(tmp_path / "t.db", window=5)


class TestSqliteLogWindow10k(LogChecks):
    def storage(self, tmp_path):
        return sqlite_storage(str(tmp_path / "t.db"), window=10_000)


class TestMemoryDirectory(DirectoryChecks):
    def directory(self, tmp_path):
        return MemoryDirectory()


class TestSqliteDirectory(DirectoryChecks):
    def directory(self, tmp_path):
        return SqliteDirectory(tmp_path / "d.db")


async def test_sqlite_reopen_keeps_everything(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "keep.db"
        async with sqlite_storage(path, window=5) as s:
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
            async with sqlite_storage(path, window=window) as s:
                assert s.epoch == epoch and s.head == head
                assert [e.raw for e in await s.read(["lobby", "side"], 0, 100)] == events
                assert [e.raw for e in await all_events(s)] == events
                for after in range(head + 1):
                    page = await s.read(["lobby", "side"], after, 3)
                    assert [e.raw for e in page] == events[after : after + 3]
                assert await s.message(mid) == state
                assert s.authenticate(tokens["bob"]) == "bob" and s.user_exists("carol")
                assert s.flow("club").members == {"alice", "bob"} and s.flow("club").private
                assert s.flow("lobby").owner == "carol"
                assert (await s.submit(op)).body["content"] == "edited"
                assert (await s.submit(noop)).body == noop_body
                assert await s.uuid_used("alice", op.uuid)
        async with sqlite_storage(path, window=5) as s:
            new = await s.submit(post("carol", "side", "after reopen"))
            assert new.body["id"] == head + 1 and s.head == head + 1
            assert (await s.read(["side"], head, 10))[0].id == head + 1
        async with sqlite_storage(path, window=0) as s:
            assert [e.id for e in await s.read(["side"], head, 10)] == [head + 1]


async def test_sqlite_schema_wal_and_hashed_tokens(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "schema.db"
        async with sqlite_storage(path) as s:
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
            async with sqlite_storage(path):
                pass


async def test_sqlite_history_stops_at_head(tmp_path):
    with trio.fail_after(10):
        async with sqlite_storage(tmp_path / "h.db") as s:
            await setup_directory(s)
            first = (await s.submit(post("alice", "lobby", "published"))).body["id"]
            await s.submit(tag("bob", "lobby", first, add=["x"]))
            seen: list[list[int]] = []

            async def after_commit(events: list[Event]) -> None:
                # Committed, not yet published: a history page with cursor `head`
                # must not hold it, or the stream from `head` repeats it.
                for kw in ({}, {"tag": "x"}, {"after": 0}):
                    page = await s.history(
                        "lobby", before=None, after=kw.get("after"), limit=10, tag=kw.get("tag")
                    )
                    seen.append([m.id for m in page])

            s.after_commit = after_commit
            second = await s.submit(post("alice", "lobby", "committed"))
            assert seen == [[first]] * 3
            s.after_commit = None
            page = await s.history("lobby", before=None, after=None, limit=10)
            assert [m.id for m in page] == [first, second.body["id"]]


async def test_sqlite_sync_full(tmp_path):
    with trio.fail_after(10):
        async with sqlite_storage(tmp_path / "full.db", sync="full") as s:
            assert s.log._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            await setup_directory(s)
            r = await s.submit(post("alice", "lobby", "durable"))
            assert r.status == 201
        async with sqlite_storage(tmp_path / "full.db") as s:
            assert s.log._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 1
            assert s.head == r.body["id"]
        with pytest.raises(ValueError):
            sqlite_storage(tmp_path / "x.db", sync="sometimes")


async def test_sqlite_sees_another_process_after_refresh(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "shared.db"
        async with sqlite_storage(path) as server:
            await setup_directory(server)
            assert await server.refresh() is False
            await server.submit(post("alice", "lobby", "events are not directory changes"))
            await server.create_user("own")  # our own change: nothing to reload
            assert await server.refresh() is False
            async with sqlite_storage(path) as cli:
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
                    "events are not directory changes"
                ]
                assert cli.user_exists("mine") is False  # until it refreshes too
                assert await cli.refresh() is True and cli.user_exists("mine")


async def test_sqlite_concurrent_writers_on_one_file(tmp_path):
    with trio.fail_after(10):
        path = tmp_path / "busy.db"
        async with sqlite_storage(path) as server, sqlite_storage(path) as cli:
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


async def test_sqlite_a_write_lock_held_elsewhere_is_waited_for_off_the_loop(tmp_path):
    """Small batches commit on the Trio thread (--sync normal), never waiting there: while
    another process holds the file's write lock the post waits in a worker thread, the
    loop runs on, and the post commits once the lock is gone."""
    with trio.fail_after(20):
        path = tmp_path / "locked.db"
        async with sqlite_storage(path) as s:
            await setup_directory(s)
            assert s.log.inline
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            done = trio.Event()

            async def posting() -> None:
                await s.submit(post("alice", "lobby", "after the lock"))
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(posting)
                for _ in range(5):  # the loop is free: each short sleep ends in time
                    with trio.fail_after(1):
                        await trio.sleep(0.02)
                assert not done.is_set()
                other.execute("COMMIT")
                other.close()
            assert [e.data["content"] for e in await s.read(["lobby"], 0, 10)] == ["after the lock"]


async def test_sqlite_inline_commits_are_checkpointed_off_the_loop(tmp_path):
    """The writer connection never checkpoints (a checkpoint's fsync would stall the
    loop); the log's own task does, so the WAL stops growing."""
    with trio.fail_after(60):
        path = tmp_path / "wal.db"
        wal = tmp_path / "wal.db-wal"
        async with sqlite_storage(path) as s:
            await setup_directory(s)
            sizes = []
            for round_ in range(3):
                async with trio.open_nursery() as nursery:
                    for i in range(1_200):
                        nursery.start_soon(s.submit, post("alice", "lobby", f"{round_}.{i}"))
                done = s.log.checkpoints
                while s.log.checkpoints == done:  # one after 1,000 ops (or a second)
                    await trio.sleep(0.01)
                sizes.append(wal.stat().st_size)
            assert sizes[2] < 2 * sizes[0], sizes  # reused, not grown round after round


async def test_sqlite_tells_how_long_inline_commits_held_the_loop(tmp_path):
    """Small batches (--sync normal) report their hold of the loop; big ones and
    --sync full commit in a thread and report none."""
    with trio.fail_after(20):
        async with sqlite_storage(tmp_path / "hold.db") as s:
            await setup_directory(s)
            holds: list[float] = []
            s.log.on_hold = holds.append
            await s.submit(post("alice", "lobby", "lone"))
            assert len(holds) == 1 and 0 < holds[0] < 1
            holds.clear()
            batch = [post("alice", "lobby", f"b{i}") for i in range(40)]
            assert (await s.log.apply_batch(batch))[0].status == 201  # one batch of 40
            assert holds == []
        async with sqlite_storage(tmp_path / "hold.db", sync="full") as s:
            s.log.on_hold = holds.append
            await s.submit(post("alice", "lobby", "fsynced"))
            assert holds == []
