"""Tier 2: rt.client against a real rt server on 127.0.0.1, over real sockets.

Every client here records what it shows with `LabRecorder`, the records the
race lab reads (LAB.md section 2), and `Lab.check` holds them to the lab's
invariants against the server's history: per view, no duplicate, id order,
no gap below the last id shown, and each event as stored. A test-local TCP
forwarder stands between client and server where a test cuts connections,
freezes them (half-open: open, silent, never closing) or cuts the answer
to a request after the server got it.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

import rt.client
from rt.client import Client, GaveUp, LabRecorder, StreamFailed, Timeouts, connect
from tests.helpers import Api, new_flow, new_user, serve_rt, wait_for

ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS = rt.client.TRANSPORTS
SHARED_ID = "shared-client-id-0001"


# -- the forwarder ----------------------------------------------------------------------


class _Pair:
    __slots__ = ("scope", "frozen", "rst", "sent")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.frozen = False
        self.rst = False
        self.sent = bytearray()  # what the client sent on this connection (since arming)


class Forwarder:
    """TCP from the client to the server, connection by connection, under the test's control.

    - `cut(rst=False)`: close every open connection (both sides; with a
      reset rather than a FIN if `rst`);
    - `freeze()`: every open connection stops forwarding in both directions
      and never closes (a blackhole: a half-open socket); new connections
      work as usual;
    - `cut_answer_to(needle)`: the next answer on a connection whose
      client sent `needle` (from now on) is not forwarded: the connection
      is closed instead (the request reached the server, its answer is lost).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.pairs: set[_Pair] = set()
        self.accepted = 0
        self.answers_cut = 0
        self._needle: bytes | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self, rst: bool = False) -> None:
        for pair in list(self.pairs):
            pair.rst = rst
            pair.scope.cancel()

    def freeze(self) -> None:
        for pair in self.pairs:
            pair.frozen = True

    def cut_answer_to(self, needle: bytes) -> None:
        for pair in self.pairs:
            pair.sent.clear()
        self._needle = needle

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError:
            await client.aclose()
            return
        pair = _Pair()
        self.pairs.add(pair)
        try:
            with pair.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, pair, client, upstream, True)
                    nursery.start_soon(self._pump, pair, upstream, client, False)
        finally:
            self.pairs.discard(pair)
            if pair.rst:  # linger 0: close sends a reset
                client.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(upstream)

    async def _pump(
        self, pair: _Pair, src: trio.SocketStream, dst: trio.SocketStream, up: bool
    ) -> None:
        while True:
            try:
                data = await src.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if pair.frozen:
                await trio.sleep_forever()
            if not data:
                pair.scope.cancel()
                return
            if up:
                pair.sent += data
            elif self._needle is not None and self._needle in pair.sent:
                self._needle = None
                self.answers_cut += 1
                pair.scope.cancel()
                return
            try:
                await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pair.scope.cancel()
                return


@asynccontextmanager
async def forwarding(port: int) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(forwarder.serve)
        yield forwarder
        nursery.cancel_scope.cancel()


# -- what a client showed, as the lab reads it -------------------------------------------


class Lab:
    """One client's LabRecorder records, and the lab's invariants over them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.listener = LabRecorder(self.records.append)

    def views(self) -> list[tuple[int, list[dict[str, Any]]]]:
        views: list[tuple[int, list[dict[str, Any]]]] = []
        for record in self.records:
            if "view" in record:
                views.append((record["view"], []))
            elif "seen" in record:
                assert views, f"an event shown before any view: {record}"
                views[-1][1].append(record["seen"])
        return views

    def seen_ids(self) -> list[int]:
        return [e["id"] for _, events in self.views() for e in events]

    def has_seen(self, ids: list[int]) -> bool:
        return set(ids) <= set(self.seen_ids())

    def check(self, history: list[dict[str, Any]]) -> None:
        """No duplicate, id order, no gap, faithful: for every view (LAB.md section 3)."""
        stored = {m["id"]: m for m in history}
        for cursor, events in self.views():
            ids = [e["id"] for e in events]
            assert len(ids) == len(set(ids)), f"a duplicate in the view from {cursor}: {ids}"
            assert ids == sorted(ids), f"out of order in the view from {cursor}: {ids}"
            if ids:
                assert ids[0] > cursor, f"an id at or below the view's cursor {cursor}"
                expected = sorted(i for i in stored if cursor < i <= ids[-1])
                assert ids == expected, f"a gap: shown {ids}, stored {expected}"
            for e in events:
                m = stored[e["id"]]
                assert (e["type"], e["flow"], e["user"], e["content"]) == (
                    "message",
                    m["flow"],
                    m["user"],
                    m["content"],
                ), e


async def history(api: Api, flow: str = "general") -> list[dict[str, Any]]:
    return (await api.history(flow, after=0, limit=500))["messages"]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition (the test's fail_after is the deadline)."""
    await wait_for(predicate, interval=0.005)


async def keep_posting(api: Api, ids: list[int], stop: trio.Event, prefix: str) -> None:
    """Post until `stop` (paced, not to synchronise anything: a steady stream of events)."""
    n = 0
    while not stop.is_set() and n < 400:
        r = await api.post("general", f"{prefix} {n}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        n += 1
        await trio.sleep(0.005)


@pytest.fixture
async def server():
    # A generous op rate: these tests post fast on purpose (the outbox tests set their own).
    async with serve_rt(ops_rate=10000, ops_burst=10000) as s:
        await new_flow(s, "general")
        yield s


# -- the conformance of each transport ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transport_view_live_own_post_and_resume_after_cuts(server, alice, bob, transport):
    lab = Lab()
    with trio.fail_after(30):
        async with (
            forwarding(server.port) as fwd,
            connect(
                fwd.url, alice.token, ["general"], transport, listener=lab.listener, name=transport
            ) as client,
        ):
            await client.wait_open()
            assert lab.records[0] == {"view": 0} and client.epoch == server.service.feed.epoch
            assert client.state == "open"

            # Live: another user's post.
            r = await bob.post("general", "from bob")
            bob_id = r.json()["id"]
            await until(lambda: lab.has_seen([bob_id]))

            # The client's own post: acked with its id, its echo shown once.
            op = client.post("general", "from alice")
            event = await op.done
            assert op.status == 201 and event["id"] > bob_id and event["uuid"] == op.uuid
            await until(lambda: lab.has_seen([event["id"]]))
            assert {"acked": "from alice", "id": event["id"]} in lab.records

            # Resume: cut every connection three times (FIN, RST, FIN) while bob keeps posting.
            posted: list[int] = []
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_posting, bob, posted, done, "steady")
                for rst in (False, True, False):
                    shown = len(lab.seen_ids())
                    await until(lambda shown=shown: len(lab.seen_ids()) >= shown + 3)
                    accepted, shown = fwd.accepted, len(lab.seen_ids())
                    fwd.cut(rst=rst)
                    # A new connection, and events flowing on it.
                    await until(
                        lambda a=accepted, s=shown: (
                            fwd.accepted > a and len(lab.seen_ids()) >= s + 3
                        )
                    )
                done.set()
            await until(lambda: lab.has_seen(posted))
            assert client.cursor == posted[-1]
        stored = await history(bob)
    assert len(lab.views()) == 1
    lab.check(stored)
    assert lab.seen_ids() == [m["id"] for m in stored]  # everything, once, in order
    # Streams reconnect; polls go on, each with the cursor, on a fresh connection.
    assert client.state == "stopped" and fwd.accepted >= 4
    if transport not in ("poll", "jsonp"):
        assert client.stats.connections >= 4 and client.stats.ends["lost"] >= 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reset_on_a_foreign_epoch(server, alice, bob, transport):
    """A cursor of another log (a replaced server): the view restarts at the head, told."""
    for i in range(3):
        await bob.post("general", f"before {i}")
    lab = Lab()
    with trio.fail_after(10):
        async with connect(
            server.url,
            alice.token,
            ["general"],
            transport,
            listener=lab.listener,
            cursor=2,
            epoch="an0ther_log",
        ) as client:
            await client.wait_open()
            assert lab.records[0] == {"view": 3}
            assert (client.cursor, client.epoch) == (3, server.service.feed.epoch)
            r = await bob.post("general", "after")
            await until(lambda: lab.has_seen([r.json()["id"]]))
        # A cursor above the head of this log resets too.
        lab2 = Lab()
        async with connect(
            server.url,
            alice.token,
            ["general"],
            transport,
            listener=lab2.listener,
            cursor=99,
            epoch=client.epoch,
        ) as again:
            await again.wait_open()
            assert lab2.records[0] == {"view": 4} and again.stats.views == 1
    lab.check(await history(bob))
    assert lab.seen_ids() == [4]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_takeover_switches_to_a_new_client_id(server, alice, bob, transport):
    """A second connection with the same client id supersedes the first, which goes on as
    a new client id, from its cursor, without loss; the second keeps the id."""
    lab_a, lab_b = Lab(), Lab()
    with trio.fail_after(20):
        async with connect(
            server.url,
            alice.token,
            ["general"],
            transport,
            listener=lab_a.listener,
            client_id=SHARED_ID,
        ) as a:
            await a.wait_open()
            ids = [(await bob.post("general", f"one {i}")).json()["id"] for i in range(5)]
            await until(lambda: lab_a.has_seen(ids))
            # A polling session is superseded through its pending poll: wait until it polls.
            await until(
                lambda: (
                    getattr(server.service.claims.by_key.get(("alice", SHARED_ID)), "pending", 1)
                    > 0
                )
            )
            async with connect(
                server.url,
                alice.token,
                ["general"],
                transport,
                listener=lab_b.listener,
                client_id=SHARED_ID,
            ) as b:
                await b.wait_open()
                await until(lambda: a.client_id != SHARED_ID and a.state == "open")
                more = [(await bob.post("general", f"two {i}")).json()["id"] for i in range(5)]
                await until(lambda: lab_a.has_seen(more) and lab_b.has_seen(more))
                assert b.client_id == SHARED_ID and b.stats.new_client_ids == 0
        stored = await history(bob)
    assert a.stats.ends.get("superseded") == 1 and a.stats.new_client_ids == 1
    assert len(lab_a.views()) == 1  # the same view on through the takeover
    lab_a.check(stored)
    lab_b.check(stored)
    assert lab_a.seen_ids() == [m["id"] for m in stored]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_read_watchdog_gives_up_a_half_open_connection(transport):
    """Frozen connections (open, silent, never closing): the client notices within 2.5
    heartbeats (a poll: poll-timeout plus the margin), reconnects and catches up."""
    async with serve_rt(heartbeat=0.5, poll_timeout=1, write_timeout=1) as server:
        await new_flow(server, "general")
        alice, bob = await new_user(server, "alice"), await new_user(server, "bob")
        lab = Lab()
        timeouts = Timeouts(ready=3, poll_margin=0.5)
        with trio.fail_after(15):
            async with (
                forwarding(server.port) as fwd,
                connect(
                    fwd.url,
                    alice.token,
                    ["general"],
                    transport,
                    listener=lab.listener,
                    timeouts=timeouts,
                ) as client,
            ):
                await client.wait_open()
                first = (await bob.post("general", "before")).json()["id"]
                await until(lambda: lab.has_seen([first]))
                fwd.freeze()
                frozen_at = trio.current_time()
                second = (await bob.post("general", "during")).json()["id"]
                await until(lambda: lab.has_seen([second]))
                waited = trio.current_time() - frozen_at
            stored = await history(bob)
        await alice.aclose()
        await bob.aclose()
    assert client.stats.ends.get("lost", 0) >= 1
    limit = 1 + 0.5 if transport in ("poll", "jsonp") else 2.5 * 0.5
    assert waited >= limit * 0.8, waited  # it was the watchdog, not a close
    lab.check(stored)
    assert lab.seen_ids() == [first, second]


# -- the outbox ------------------------------------------------------------------------


async def test_outbox_retries_429_with_the_same_uuid(alice):
    async with serve_rt(ops_rate=4, ops_burst=1) as server:
        await new_flow(server, "general")
        api = await new_user(server, "carol")
        lab = Lab()
        with trio.fail_after(15):
            async with connect(
                server.url, api.token, ["general"], "ws", listener=lab.listener
            ) as client:
                await client.wait_open()
                ops = [client.post("general", f"burst {i}") for i in range(3)]
                events = [await op.done for op in ops]
            stored = await history(api)
        await api.aclose()
    assert max(op.attempts for op in ops) >= 2  # someone got a 429 and came back
    assert [m["content"] for m in stored] == [op.content for op in sorted(ops, key=lambda o: o.id)]
    assert [e["uuid"] for e in events] == [op.uuid for op in ops]
    for op in ops:
        assert {"acked": op.content, "id": op.id} in lab.records
    lab.check(stored)


async def test_outbox_a_lost_answer_is_retried_and_stored_once(server, alice, bob):
    """The post reaches the server, its answer is cut: the retry (same uuid) gets 200 and
    the same id, and history holds the post once."""
    lab = Lab()
    with trio.fail_after(15):
        async with (
            forwarding(server.port) as fwd,
            connect(fwd.url, alice.token, ["general"], "sse", listener=lab.listener) as client,
        ):
            await client.wait_open()
            fwd.cut_answer_to(b"POST /flows/general/messages")
            op = client.post("general", "exactly once")
            event = await op.done
            assert fwd.answers_cut == 1
            assert op.attempts == 2 and op.status == 200  # the server had it already
            await until(lambda: lab.has_seen([event["id"]]))
        stored = await history(bob)
    assert [(m["id"], m["content"]) for m in stored] == [(event["id"], "exactly once")]
    assert {"acked": "exactly once", "id": event["id"]} in lab.records
    lab.check(stored)


async def test_outbox_gives_up_for_good(server, alice):
    lab = Lab()
    with trio.fail_after(10):
        async with connect(
            server.url, alice.token, ["general"], "poll", listener=lab.listener
        ) as client:
            missing = client.post("nope", "to nowhere")
            blank = client.post("general", " \u200b ")
            with pytest.raises(GaveUp) as caught:
                await missing.done
            assert caught.value.code == "not_found" and caught.value.status == 404
            with pytest.raises(GaveUp) as caught:
                await blank.done
            assert caught.value.code == "bad_request"
    assert missing.attempts == 1 and missing.state == "gave_up"
    assert {"gave_up": "to nowhere", "error": "not_found"} in lab.records
    assert {"gave_up": " \u200b ", "error": "bad_request"} in lab.records
    with pytest.raises(rt.client.ClientClosed):
        client.post("general", "after stop")


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_refused_stream_is_fatal_and_says_why(server, alice, transport):
    with trio.fail_after(10):
        async with connect(server.url, "not-a-token", ["general"], transport) as client:
            with pytest.raises(StreamFailed) as caught:
                await client.wait_open()
            assert caught.value.code == "unauthorized" and client.state == "stopped"
        async with connect(server.url, alice.token, ["general", "nope"], transport) as client:
            with pytest.raises(StreamFailed) as caught:
                await client.wait_open()
            assert caught.value.code == "not_found" and caught.value.status == 404


# -- the race lab's driver, as a subprocess ---------------------------------------------


async def test_driver_speaks_the_lab_interface(server, alice, bob, tmp_path):
    env = {
        **os.environ,
        "RT_URL": server.url,
        "RT_TOKEN": alice.token,
        "RT_FLOWS": "general",
        "RT_TRANSPORT": "auto",
        "RT_LAB_ID": "lab-7",
        "PYTHONPATH": str(ROOT),
    }
    lines: list[dict[str, Any]] = []
    with trio.fail_after(30), open(tmp_path / "stderr", "wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "rt.client.driver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )

        async def read_lines() -> None:
            buf = b""
            while data := await proc.stdout.receive_some(65536):
                buf += data
                *complete, buf = buf.split(b"\n")
                lines.extend(orjson.loads(line) for line in complete)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_lines)
            await until(lambda: any("view" in r for r in lines))
            bob_id = (await bob.post("general", "from bob")).json()["id"]
            await until(
                lambda: any("seen" in line and line["seen"]["id"] == bob_id for line in lines)
            )
            # Posts and the stop in one write: the stop waits for every ack.
            commands = [{"cmd": "post", "flow": "general", "content": f"p{i}"} for i in range(5)]
            commands += [{"cmd": "post", "flow": "BAD FLOW", "content": "bad"}, {"cmd": "stop"}]
            await proc.stdin.send_all(b"".join(orjson.dumps(c) + b"\n" for c in commands))
            stopped_at = trio.current_time()
            status = await proc.wait()
            elapsed = trio.current_time() - stopped_at
    assert status == 0, (tmp_path / "stderr").read_text()
    assert elapsed < 15
    assert lines[0] == {"view": 0} and lines[-1] == {"stopped": True}
    acked = {r["acked"]: r["id"] for r in lines if "acked" in r}
    assert sorted(acked) == [f"p{i}" for i in range(5)]
    assert {"gave_up": "bad", "error": "bad_request"} in lines
    stored = await history(bob)
    assert sorted(m["content"] for m in stored) == sorted(["from bob", *acked])
    assert {m["id"] for m in stored if m["content"] in acked} == set(acked.values())


# -- many clients in one process ---------------------------------------------------------


async def test_200_clients_in_one_process(capsys):
    """200 clients (ws and poll, ten users) in this process with the server: all of them
    see every post; figures printed (run with -s to see them)."""
    n_clients, n_users, n_posts = 200, 10, 10
    async with serve_rt(ops_rate=10000, ops_burst=10000) as server:
        await new_flow(server, "general")
        tokens = [await server.service.directory.create_user(f"user{i}") for i in range(n_users)]
        labs = [Lab() for _ in range(n_clients)]
        clients = [
            Client(
                server.url,
                tokens[i % n_users],
                ["general"],
                "ws" if i % 2 == 0 else "poll",
                listener=labs[i].listener,
                name=f"c{i}",
            )
            for i in range(n_clients)
        ]
        with trio.fail_after(25):
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                for client in clients:
                    nursery.start_soon(client.run)
                await wait_for(lambda: all(c.state == "open" for c in clients), interval=0.02)
                opened = trio.current_time() - start
                posted_at = trio.current_time()
                ops = [
                    clients[i * (n_clients // n_posts)].post("general", f"to all {i}")
                    for i in range(n_posts)
                ]
                ids = [(await op.done)["id"] for op in ops]
                await wait_for(lambda: all(lab.has_seen(ids) for lab in labs), interval=0.02)
                delivered = trio.current_time() - posted_at
                stopping = trio.current_time()
                for client in clients:
                    nursery.start_soon(client.stop, 5.0)
            stopped = trio.current_time() - stopping
            total = trio.current_time() - start
        api = Api(server, tokens[0])
        stored = await history(api)
        await api.aclose()
    for lab in labs:
        lab.check(stored)
        assert lab.seen_ids() == sorted(ids)
    connections = sum(c.stats.connections for c in clients)
    with capsys.disabled():
        print(
            f"\n200 clients: all open in {opened:.2f} s, {n_posts} posts seen by all in "
            f"{delivered:.2f} s, stopped in {stopped:.2f} s, {total:.2f} s in all; "
            f"{connections} connections"
        )
    assert connections == n_clients  # nobody had to reconnect
    assert total < 20


# -- purity ------------------------------------------------------------------------------


def test_the_client_talks_over_the_wire_only() -> None:
    """rt.client loads none of the server's layers and no test-only HTTP library."""
    script = "import rt.client, rt.client.driver, sys\nprint(repr(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    forbidden = (
        "rt.store",
        "rt.hub",
        "rt.backend",
        "rt.service",
        "rt.web",
        "rt.cli",
        "httpx",
        "trio_websocket",
        "websockets",
        "quart",
        "quart_trio",
        "hypercorn",
        "anyio",
    )
    assert not [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
