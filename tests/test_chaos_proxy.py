"""The race lab's fault proxy (rt/chaos/proxy.py, connection.py, control.py):
byte-level behaviour of every network fault on real loopback sockets.

Each test has an upstream written here: `Upstream` hands the test the
server side of every connection the proxy makes (so the test plays the
server), or echoes. Waiting is for conditions, under `trio.fail_after`;
the only timed waits check that nothing happens while a fault lasts.
"""

from __future__ import annotations

import errno
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import h11
import pytest
import trio

from rt.chaos.connection import Connection
from rt.chaos.control import open_control
from rt.chaos.faults import (
    FaultSpecError,
    FaultWindow,
    draw_schedule,
    parse_fault,
    parse_faults,
    window_now,
)
from rt.chaos.proxy import FaultProxy, open_proxy, run_schedule
from rt.chaos.proxy_command import HostPortError, parse_hostport, serve_proxy

# -- the test's own upstream --------------------------------------------------------------


class Upstream:
    """A TCP server on 127.0.0.1: echoes, or hands each accepted stream to
    the test (`await accept()`), keeping it open until the test closes it."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.address: tuple[str, int] = ("", 0)
        self._send, self._receive = trio.open_memory_channel[trio.SocketStream](1000)
        self.count = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self.count += 1
        if self.echo:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
            return
        self._send.send_nowait(stream)
        await trio.sleep_forever()  # the test owns the stream; trio closes it at the end

    async def accept(self) -> trio.SocketStream:
        return await self._receive.receive()


@asynccontextmanager
async def open_upstream(echo: bool = False) -> AsyncIterator[Upstream]:
    upstream = Upstream(echo)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, upstream.handler, 0, host="127.0.0.1")
        )
        upstream.address = listeners[0].socket.getsockname()[:2]
        try:
            yield upstream
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def lab(
    echo: bool = False, labels: tuple[str, ...] = ("a",), **kwargs
) -> AsyncIterator[tuple[FaultProxy, Upstream]]:
    async with open_upstream(echo) as upstream:
        async with open_proxy(
            upstream.address, [(label, "127.0.0.1", 0) for label in labels], **kwargs
        ) as proxy:
            yield proxy, upstream


async def wait_for(condition: Callable[[], object]) -> None:
    """Poll `condition` until true; the caller's fail_after is the deadline."""
    while not condition():
        await trio.sleep(0.002)


async def connect(proxy: FaultProxy, label: str = "a") -> trio.SocketStream:
    return await trio.open_tcp_stream(*proxy.addresses[label])


async def pair(
    proxy: FaultProxy, upstream: Upstream, label: str = "a"
) -> tuple[trio.SocketStream, trio.SocketStream, Connection]:
    """A client through the proxy, the server side of it, and the proxy's
    record of it once it forwards."""
    before = {c.id for c in proxy.connections()}
    client = await connect(proxy, label)
    server = await upstream.accept()
    await wait_for(
        lambda: [c for c in proxy.connections() if c.id not in before and c.state == "open"]
    )
    conn = next(c for c in proxy.connections() if c.id not in before)
    return client, server, conn


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        assert more, f"EOF after {len(data)} of {n} bytes"
        data += more
    return data


async def receive_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while more := await stream.receive_some(65536):
        data += more
    return data


async def nothing_arrives(stream: trio.SocketStream, seconds: float) -> None:
    with trio.move_on_after(seconds):
        data = await stream.receive_some(65536)
        raise AssertionError(f"{len(data)} bytes moved during the fault: {data[:40]!r}")


def fault(text: str, seed: int = 1, id: str = "t") -> FaultWindow:
    return window_now(parse_fault(text), seed=seed, id=id)


PAYLOAD = bytes(range(256)) * 64  # 16 KiB, every byte value, order visible


# -- clean forwarding -----------------------------------------------------------------------


async def test_forwards_bytes_intact_both_ways_and_records_each_connection() -> None:
    records: list[dict] = []
    with trio.fail_after(10):
        async with lab(labels=("alice", "bob"), on_connection=records.append) as (proxy, upstream):
            assert set(proxy.addresses) == {"alice", "bob"}
            assert proxy.addresses["alice"] != proxy.addresses["bob"]
            client, server, conn = await pair(proxy, upstream, "bob")
            assert (conn.id, conn.label) == (1, "bob")
            big = PAYLOAD * 64  # 1 MiB
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, big)
                assert await receive_exactly(server, len(big)) == big
            await server.send_all(PAYLOAD)
            assert await receive_exactly(client, len(PAYLOAD)) == PAYLOAD
            # The proxy counts a write once it returns, maybe after the peer read it.
            await wait_for(lambda: (conn.bytes_up, conn.bytes_down) == (len(big), len(PAYLOAD)))
            # Half-close goes through: the client's EOF reaches the server,
            # which can still answer.
            await client.send_eof()
            assert await server.receive_some(10) == b""
            await server.send_all(b"last words")
            await server.aclose()
            assert await receive_to_eof(client) == b"last words"
            await wait_for(lambda: not proxy.connections())
            second, second_server, conn2 = await pair(proxy, upstream, "alice")
            assert (conn2.id, conn2.label) == (2, "alice")
            await second.aclose()
            assert await second_server.receive_some(10) == b""
            await second_server.aclose()
            await wait_for(lambda: len(records) == 4)
    assert [(r["conn"], r["label"], r["event"]) for r in records] == [
        (1, "bob", "open"),
        (1, "bob", "close"),
        (2, "alice", "open"),
        (2, "alice", "close"),
    ]
    assert all(set(r) == {"t", "conn", "label", "event"} for r in records)
    assert records[0]["t"] <= records[1]["t"] <= records[3]["t"]
    json.dumps(records)


async def test_an_upstream_that_is_down_resets_the_client() -> None:
    records: list[dict] = []
    with trio.fail_after(5):
        async with open_proxy(
            ("127.0.0.1", 1), [("a", "127.0.0.1", 0)], on_connection=records.append
        ) as proxy:
            client = await connect(proxy)
            with pytest.raises(trio.BrokenResourceError):
                await receive_to_eof(client)
            await wait_for(lambda: len(records) == 2)
    assert [r["event"] for r in records] == ["open", "close"]


async def test_closing_the_proxy_closes_every_connection_at_once() -> None:
    with trio.fail_after(5):
        async with open_upstream() as upstream:
            async with open_proxy(upstream.address, [("a", "127.0.0.1", 0)]) as proxy:
                clients = []
                for _ in range(3):
                    client, _, _ = await pair(proxy, upstream)
                    clients.append(client)
                proxy.start(fault("stall:scope=all"))
                await clients[0].send_all(b"stuck in the proxy")
            # Left the block with a stall on and bytes in flight: all gone.
            for client in clients:
                try:
                    assert await receive_to_eof(client) == b""
                except trio.BrokenResourceError:
                    pass


# -- stall ----------------------------------------------------------------------------------


async def test_stall_keeps_both_sockets_open_moves_nothing_then_resumes_intact() -> None:
    faults: list[dict] = []
    with trio.fail_after(10):
        async with lab(on_fault=faults.append) as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            started = trio.current_time()
            stall = proxy.start_spec("stall:for=500ms:scope=all", seed=1)
            assert stall.conns == [conn.id] and conn.faults == {stall.id: stall.window}
            await client.send_all(PAYLOAD)
            await server.send_all(PAYLOAD[::-1])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nothing_arrives, server, 0.4)
                nursery.start_soon(nothing_arrives, client, 0.4)
            assert conn.state == "open" and (conn.bytes_up, conn.bytes_down) == (0, 0)
            # It stops by itself after `for`; then every byte, in order.
            assert await receive_exactly(server, len(PAYLOAD)) == PAYLOAD
            assert await receive_exactly(client, len(PAYLOAD)) == PAYLOAD[::-1]
            assert trio.current_time() - started >= 0.49
            assert not stall.active and proxy.faults() == [] and conn.faults == {}
            await client.send_all(b"after")
            assert await receive_exactly(server, 5) == b"after"
    assert [(f["fault"], f["action"], f["conns"]) for f in faults] == [
        ("stall", "start", [1]),
        ("stall", "stop", [1]),
    ]
    assert set(faults[0]) == {"t", "fault", "action", "conns", "id", "window", "spec"}
    assert faults[0]["spec"] == "stall:every=10s..30s:for=500ms:scope=all:dir=both:p=1"


async def test_stall_up_moves_downstream_bytes_but_not_upstream_ones() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            stall = proxy.start(fault("stall:scope=all:dir=up"))
            await client.send_all(b"up and stuck")
            await server.send_all(b"down and through")
            assert await receive_exactly(client, 16) == b"down and through"
            await nothing_arrives(server, 0.3)
            proxy.stop(stall.id)
            assert await receive_exactly(server, 12) == b"up and stuck"


async def expect_reset(stream: trio.SocketStream) -> None:
    """The next read on `stream` fails with ECONNRESET: the peer sent RST."""
    with pytest.raises(trio.BrokenResourceError) as caught:
        await receive_to_eof(stream)
    assert isinstance(caught.value.__cause__, ConnectionResetError), caught.value.__cause__
    assert caught.value.__cause__.errno == errno.ECONNRESET


async def test_an_upstream_that_closes_during_a_stall_leaves_the_client_open_and_silent() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            stall = proxy.start(fault("stall:scope=all"))
            await server.send_all(b"said before dying")
            await server.aclose()
            await wait_for(lambda: conn.down is not None and conn.down.end == "eof")
            await nothing_arrives(client, 0.2)  # neither the bytes nor the FIN
            proxy.stop(stall.id)
            # After the stall: still no FIN, no bytes (they died with the
            # server), the client's socket open: what a dead NAT leaves.
            await wait_for(lambda: conn.state == "silent")
            await nothing_arrives(client, 0.2)
            assert conn in proxy.connections()
            # The client speaks: the far end answers with RST.
            await client.send_all(b"anyone there?")
            await expect_reset(client)
            await wait_for(lambda: conn not in proxy.connections())
            assert conn.close_mode == "silent"


async def test_a_client_that_closes_during_a_stall_is_not_seen_to_close() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            stall = proxy.start(fault("stall:scope=all"))
            await client.send_all(b"lost")
            await client.aclose()
            await wait_for(lambda: conn.up is not None and conn.up.end == "eof")
            await nothing_arrives(server, 0.2)
            proxy.stop(stall.id)
            await wait_for(lambda: conn.state == "silent")
            await nothing_arrives(server, 0.2)  # the server never hears of it
            await server.send_all(b"ping")
            await expect_reset(server)


async def test_a_stall_holds_about_a_mebibyte_then_the_server_blocks() -> None:
    """The proxy stops reading at HOLD_LIMIT, so the server's writes block as
    on a stalled network; when the stall ends every byte arrives, in order."""
    from rt.chaos.connection import CHUNK, HOLD_LIMIT

    piece = 65536
    sent = [0]
    stop_sending = trio.Event()

    async def send_until_told(server: trio.SocketStream) -> None:
        n = 0
        while not stop_sending.is_set():
            await server.send_all(bytes([n % 251]) * piece)
            n += 1
            sent[0] += piece
        await server.aclose()

    with trio.fail_after(20):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            stall = proxy.start(fault("stall:scope=all"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_until_told, server)
                await wait_for(lambda: conn.down is not None and conn.down.held >= HOLD_LIMIT)
                # Wait until the server's writes stop going through (the
                # kernel's buffers full too): no progress for 200 ms.
                while True:
                    before = sent[0]
                    await trio.sleep(0.2)
                    if sent[0] == before:
                        break
                assert HOLD_LIMIT <= conn.down.held <= HOLD_LIMIT + CHUNK
                assert conn.bytes_down == 0
                stop_sending.set()  # the send blocked now completes, then the server closes
                proxy.stop(stall.id)
                data = await receive_to_eof(client)
            total = sent[0]
            assert data == b"".join(bytes([n % 251]) * piece for n in range(total // piece))
            assert conn.bytes_down == total


async def test_faults_that_come_and_go_lose_and_reorder_nothing() -> None:
    """Lasting faults started and stopped every few milliseconds while 2 MiB
    go up and echo back: every byte arrives once, in order."""
    import random

    data = bytes(random.Random(1).getrandbits(8) for _ in range(1 << 16)) * 32
    specs = [
        "stall:scope=all",
        "stall:scope=all:dir=down",
        "latency:delay=5ms:jitter=5ms",
        "bandwidth:rate=4m",
        "slice:bytes=4093:delay=0",
        "slow_close:for=10ms",
        "limit:bytes=100m:scope=all",
    ]
    got = bytearray()
    with trio.fail_after(20):
        async with lab(echo=True) as (proxy, _):
            client = await connect(proxy)
            await wait_for(lambda: [c for c in proxy.connections() if c.state == "open"])

            async def churn() -> None:
                rng = random.Random(2)
                while True:
                    started = proxy.start(fault(rng.choice(specs), seed=rng.randrange(1000)))
                    await trio.sleep(rng.uniform(0.002, 0.02))
                    proxy.stop(started.id)

            async def receive() -> None:
                while len(got) < len(data):
                    got.extend(await client.receive_some(65536))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(churn)
                nursery.start_soon(client.send_all, data)
                await receive()
                nursery.cancel_scope.cancel()
    assert bytes(got) == data


# -- slice, latency, bandwidth --------------------------------------------------------------


async def test_slice_delivers_one_byte_segments() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            proxy.start(fault("slice:bytes=1:delay=10ms:scope=all:dir=up"))
            # trio's SocketStream turns TCP_NODELAY on: each write is a segment.
            assert conn.upstream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            message = b"a frame split anywhere"
            await client.send_all(message)
            pieces = [await server.receive_some(100) for _ in message]
            assert pieces == [bytes([b]) for b in message]


async def test_slice_of_three_bytes() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            proxy.start(fault("slice:bytes=3:delay=10ms:scope=all"))
            await server.send_all(b"abcdefgh")
            pieces = [await client.receive_some(100) for _ in range(3)]
            assert pieces == [b"abc", b"def", b"gh"]


@pytest.mark.parametrize("jitter", [0.0, 0.02])
async def test_latency_holds_each_byte_for_delay_plus_or_minus_jitter_in_order(jitter) -> None:
    delay = 0.1
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            proxy.start(
                fault(f"latency:delay=100ms:jitter={int(jitter * 1000)}ms:scope=all:dir=up")
            )
            for i in range(5):
                sent = trio.current_time()
                await client.send_all(b"%d" % i)
                assert await server.receive_some(10) == b"%d" % i
                took = trio.current_time() - sent
                assert delay - jitter - 0.005 <= took <= delay + jitter + 0.05, took
            # A burst keeps its order, and takes about one delay, not five.
            sent = trio.current_time()
            for i in range(5):
                await client.send_all(PAYLOAD[i * 100 : (i + 1) * 100])
            assert await receive_exactly(server, 500) == PAYLOAD[:500]
            assert trio.current_time() - sent <= delay + jitter + 0.05
            # Downstream was not asked for: no delay.
            sent = trio.current_time()
            await server.send_all(b"quick")
            assert await receive_exactly(client, 5) == b"quick"
            assert trio.current_time() - sent < delay - jitter


async def test_bandwidth_holds_its_rate_within_thirty_percent() -> None:
    rate, size = 40 * 1024, 40 * 1024
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            proxy.start(fault("bandwidth:rate=40k:scope=all"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.send_all, PAYLOAD * 3)
                first = await client.receive_some(65536)
                began = trio.current_time()
                rest = await receive_exactly(client, size - len(first))
                took = trio.current_time() - began
            assert first + rest == (PAYLOAD * 3)[:size]
            expected = (size - len(first)) / rate
            assert 0.7 * expected <= took <= 1.3 * expected, (took, expected)


# -- closing faults -------------------------------------------------------------------------


async def test_limit_forwards_exactly_n_bytes_then_closes() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            await client.send_all(b"before")  # not counted: the limit starts now
            assert await receive_exactly(server, 6) == b"before"
            proxy.start(fault("limit:bytes=1000:dir=up:scope=all"))
            await client.send_all(PAYLOAD)
            assert await receive_to_eof(server) == PAYLOAD[:1000]
            assert await receive_to_eof(client) == b""
            assert conn.close_mode == "fin"


async def test_limit_both_ways_counts_both_directions_together() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            proxy.start(fault("limit:bytes=300:scope=all"))
            await client.send_all(b"x" * 200)
            assert await receive_exactly(server, 200) == b"x" * 200
            await server.send_all(b"y" * 500)
            assert await receive_to_eof(client) == b"y" * 100
            assert await receive_to_eof(server) == b""


@pytest.mark.parametrize("mode", ["fin", "rst"])
async def test_cut_closes_with_fin_or_rst(mode: str) -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            other_client, other_server, other = await pair(proxy, upstream)
            cut = proxy.start(fault(f"cut:mode={mode}:scope=one", seed=3))
            assert not cut.active and len(cut.conns) == 1
            hit_server = server if cut.conns == [conn.id] else other_server
            hit_client = client if cut.conns == [conn.id] else other_client
            for stream in (hit_server, hit_client):
                if mode == "fin":
                    assert await receive_to_eof(stream) == b""
                else:
                    await expect_reset(stream)
            survivor = other if cut.conns == [conn.id] else conn
            assert survivor.state == "open"


async def test_cut_all_closes_every_open_connection() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            pairs = [await pair(proxy, upstream) for _ in range(3)]
            cut = proxy.start(fault("cut:scope=all"))
            assert cut.conns == [c.id for _, _, c in pairs]
            for client, server, _ in pairs:
                assert await receive_to_eof(server) == b""
                assert await receive_to_eof(client) == b""


async def test_refuse_resets_new_connections_while_it_lasts() -> None:
    faults: list[dict] = []
    with trio.fail_after(10):
        async with lab(on_fault=faults.append) as (proxy, upstream):
            old_client, old_server, _ = await pair(proxy, upstream)
            refuse = proxy.start(fault("refuse"))
            assert refuse.conns == []  # open connections are left alone
            client = await connect(proxy)
            with pytest.raises(trio.BrokenResourceError):
                await receive_to_eof(client)
            assert upstream.count == 1  # never reached the server
            await old_client.send_all(b"still here")
            assert await receive_exactly(old_server, 10) == b"still here"
            proxy.stop(refuse.id)
            client, server, _ = await pair(proxy, upstream)
            await client.send_all(b"welcome back")
            assert await receive_exactly(server, 12) == b"welcome back"
    assert [(f["action"], f["conns"]) for f in faults] == [
        ("start", []),
        ("hit", [2]),
        ("stop", []),
    ]


async def test_slow_close_holds_the_close_for_its_duration() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream):
            client, server, _ = await pair(proxy, upstream)
            proxy.start(fault("slow_close:for=500ms:scope=all:dir=up"))
            await client.send_all(b"bye")
            closed = trio.current_time()
            await client.aclose()
            assert await receive_exactly(server, 3) == b"bye"  # data is not held
            assert await server.receive_some(10) == b""
            assert trio.current_time() - closed >= 0.49
            # The other way is not held.
            client, server, _ = await pair(proxy, upstream)
            closed = trio.current_time()
            await server.aclose()
            assert await client.receive_some(10) == b""
            assert trio.current_time() - closed < 0.3


async def test_two_hundred_clients_through_one_proxy() -> None:
    labels = tuple(f"client{i}" for i in range(8))
    with trio.fail_after(20):
        async with lab(echo=True, labels=labels) as (proxy, _):
            clients = [await connect(proxy, labels[i % 8]) for i in range(200)]
            await wait_for(
                lambda: len([c for c in proxy.connections() if c.state == "open"]) == 200
            )
            assert {c.label for c in proxy.connections()} == set(labels)
            proxy.start(fault("latency:delay=20ms:jitter=0:scope=all"))

            async def talk(i: int, client: trio.SocketStream) -> None:
                message = b"client %03d says hello" % i
                await client.send_all(message)
                assert await receive_exactly(client, len(message)) == message

            async with trio.open_nursery() as nursery:
                for i, client in enumerate(clients):
                    nursery.start_soon(talk, i, client)
            for client in clients:
                await client.aclose()
            await wait_for(lambda: not proxy.connections())


# -- who gets hit ---------------------------------------------------------------------------


async def test_p_hits_about_its_share_and_the_same_ones_for_the_same_seed() -> None:
    async def hit_ids(seed: int) -> list[int]:
        async with lab(echo=True) as (proxy, _):
            clients = [await connect(proxy) for _ in range(40)]
            await wait_for(lambda: len([c for c in proxy.connections() if c.state == "open"]) == 40)
            stall = proxy.start(fault("stall:scope=all:p=0.5", seed=seed))
            for client in clients:
                await client.aclose()
            return stall.conns

    with trio.fail_after(15):
        first = await hit_ids(42)
        assert 10 <= len(first) <= 30
        assert await hit_ids(42) == first
        assert await hit_ids(43) != first


async def test_a_lasting_fault_for_all_takes_new_connections_and_one_does_not() -> None:
    faults: list[dict] = []
    with trio.fail_after(10):
        async with lab(on_fault=faults.append) as (proxy, upstream):
            _, _, first = await pair(proxy, upstream)
            everyone = proxy.start(fault("latency:scope=all"))
            just_one = proxy.start(fault("stall:scope=one:dir=up"))
            _, _, late = await pair(proxy, upstream)
            assert everyone.conns == [first.id, late.id] and just_one.conns == [first.id]
            assert sorted(late.faults) == [everyone.id]
            proxy.stop_all()
            assert proxy.faults() == [] and first.faults == {} and late.faults == {}
    assert [(f["fault"], f["action"], f["conns"]) for f in faults] == [
        ("latency", "start", [1]),
        ("stall", "start", [1]),
        ("latency", "hit", [2]),
        ("latency", "stop", [1, 2]),
        ("stall", "stop", [1]),
    ]


# -- the schedule runner --------------------------------------------------------------------


async def test_run_schedule_applies_and_ends_windows_on_time() -> None:
    faults: list[dict] = []
    process: list[tuple[str, str, float]] = []

    async def on_process_fault(window: FaultWindow, action: str) -> None:
        process.append((window.name, action, trio.current_time() - t0))

    def at(text: str, start: float, end: float, id: str) -> FaultWindow:
        return replace(fault(text, id=id), start=start, end=end)

    windows = [
        at("stall:scope=all", 0.1, 0.3, "stall#1"),
        at("pause", 0.15, 0.25, "pause#1"),
        at("cut:scope=all", 0.4, 0.4, "cut#1"),
    ]
    with trio.fail_after(10):
        async with lab(on_fault=faults.append) as (proxy, upstream):
            client, server, conn = await pair(proxy, upstream)
            t0 = trio.current_time()
            await run_schedule(proxy, windows, t0, on_process_fault=on_process_fault)
            took = trio.current_time() - t0
            assert await receive_to_eof(server) == b""
    assert 0.4 <= took < 0.6
    assert [(f["window"], f["action"], f["conns"]) for f in faults] == [
        ("stall#1", "start", [1]),
        ("pause#1", "start", []),
        ("pause#1", "stop", []),
        ("stall#1", "stop", [1]),
        ("cut#1", "start", [1]),
    ]
    assert [(n, a) for n, a, _ in process] == [("pause", "start"), ("pause", "stop")]
    assert 0.15 <= process[0][2] < 0.2 and 0.25 <= process[1][2] < 0.3


async def test_run_schedule_wants_a_callback_for_process_faults() -> None:
    with trio.fail_after(5):
        async with lab() as (proxy, _):
            with pytest.raises(ValueError, match="kill"):
                await run_schedule(proxy, [fault("kill")], trio.current_time())
            with pytest.raises(ValueError, match="process fault"):
                proxy.start(fault("pause"))


# -- the control API ------------------------------------------------------------------------


async def http(
    address: tuple[str, int], method: str, path: str, body: object = None, raw: bytes | None = None
) -> tuple[int, dict, dict[str, str]]:
    """One request on a fresh connection: status, JSON body, headers (lower-cased)."""
    stream = await trio.open_tcp_stream(*address)
    client = h11.Connection(h11.CLIENT)
    if raw is None:
        data = (
            body
            if isinstance(body, bytes)
            else (b"" if body is None else json.dumps(body).encode())
        )
        raw = client.send(
            h11.Request(
                method=method,
                target=path,
                headers=[("Host", "control"), ("Content-Length", str(len(data)))],
            )
        )
        raw += client.send(h11.Data(data=data)) + client.send(h11.EndOfMessage())
    else:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
    await stream.send_all(raw)
    response, content = None, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            content += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    await stream.aclose()
    assert response is not None
    headers = {k.decode().lower(): v.decode() for k, v in response.headers}
    assert headers["content-type"] == "application/json"
    return response.status_code, json.loads(content), headers


async def test_the_control_api_lists_stalls_now_and_stops_it() -> None:
    with trio.fail_after(10):
        async with lab() as (proxy, upstream), open_control(proxy) as control:
            assert control.address[0] == "127.0.0.1"
            address = control.address
            client, server, conn = await pair(proxy, upstream)
            status, body, _ = await http(address, "GET", "/connections")
            assert status == 200
            [listed] = body["connections"]
            assert (listed["id"], listed["label"], listed["state"]) == (conn.id, "a", "open")
            assert set(listed) >= {
                "id",
                "label",
                "peer",
                "opened",
                "bytes_up",
                "bytes_down",
                "state",
                "faults",
            }

            status, stall, _ = await http(
                address, "POST", "/faults", {"spec": "stall:for=30s:scope=all"}
            )
            assert status == 201 and stall["conns"] == [conn.id] and stall["active"]
            assert stall["fault"] == "stall" and 29 < stall["ends_in"] <= 30
            status, body, _ = await http(address, "GET", "/faults")
            assert [f["id"] for f in body["faults"]] == [stall["id"]]
            await client.send_all(b"held")
            await nothing_arrives(server, 0.3)

            status, stopped, _ = await http(address, "DELETE", f"/faults/{stall['id']}")
            assert status == 200 and stopped["id"] == stall["id"] and not stopped["active"]
            assert await receive_exactly(server, 4) == b"held"
            assert (await http(address, "GET", "/faults"))[1] == {"faults": []}

            for spec in ("latency:scope=all", "slice:scope=all"):
                assert (await http(address, "POST", "/faults", {"spec": spec}))[0] == 201
            status, body, _ = await http(address, "DELETE", "/faults")
            assert status == 200 and [f["fault"] for f in body["stopped"]] == ["latency", "slice"]
            assert conn.faults == {}

            status, cut, _ = await http(
                address, "POST", "/faults", {"spec": "cut:mode=rst", "seed": 5}
            )
            assert status == 201 and cut["conns"] == [conn.id] and not cut["active"]
            await expect_reset(client)


BAD_REQUESTS = [
    # (method, path, body, status, fragment of the error)
    ("POST", "/faults", b"not json", 400, "JSON object"),
    ("POST", "/faults", [1, 2], 400, 'string "spec"'),
    ("POST", "/faults", {"spec": 3}, 400, 'string "spec"'),
    ("POST", "/faults", {"spec": "stall:for=soon"}, 400, "a duration is a number with a unit"),
    ("POST", "/faults", {"spec": "nope"}, 400, "unknown fault 'nope'"),
    ("POST", "/faults", {"spec": "kill"}, 400, "process fault"),
    ("POST", "/faults", {"spec": "cut,stall"}, 400, "one fault at a time"),
    ("POST", "/faults", {"spec": "stall", "for": "3s"}, 400, "unknown field(s) for"),
    ("POST", "/faults", {"spec": "stall", "seed": "x"}, 400, '"seed" must be an integer'),
    ("DELETE", "/faults/abc", None, 400, "fault ids are integers"),
    ("DELETE", "/faults/99", None, 404, "no fault 99 in force"),
    ("GET", "/nope", None, 404, "no route '/nope'"),
    ("PUT", "/faults", None, 405, "use GET, POST, DELETE"),
    ("GET", "/faults/1", None, 405, "use DELETE"),
]


@pytest.mark.parametrize(
    "method,path,body,status,fragment",
    BAD_REQUESTS,
    ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD_REQUESTS],
)
async def test_the_control_api_answers_bad_requests_with_json_errors(
    method, path, body, status, fragment
) -> None:
    with trio.fail_after(5):
        async with lab() as (proxy, _), open_control(proxy) as control:
            got, answer, headers = await http(control.address, method, path, body)
            assert got == status and fragment in answer["error"], answer
            if status == 405:
                assert headers["allow"]
            assert proxy.faults() == []


async def test_the_control_api_survives_bad_http_and_keeps_connections_alive() -> None:
    with trio.fail_after(5):
        async with lab() as (proxy, _), open_control(proxy) as control:
            status, answer, _ = await http(control.address, "", "", raw=b"garbage\r\n\r\n")
            assert status == 400 and "bad HTTP request" in answer["error"]
            # Two requests on one connection.
            stream = await trio.open_tcp_stream(*control.address)
            request = b"GET /faults HTTP/1.1\r\nHost: x\r\n\r\n"
            await stream.send_all(request + request)
            seen = b""
            while seen.count(b'{"faults": []}') < 2:
                seen += await stream.receive_some(65536)
            assert seen.count(b"HTTP/1.1 200") == 2
            await stream.aclose()


# -- rt chaos proxy -------------------------------------------------------------------------

HOSTPORTS = [
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    (" localhost:0 ", ("localhost", 0)),
    ("[::1]:8080", ("::1", 8080)),
    ("example.org:65535", ("example.org", 65535)),
]
BAD_HOSTPORTS = ["9000", ":9000", "host:", "host:65536", "host:http", "::1:80", "[]:80"]


@pytest.mark.parametrize("text,expected", HOSTPORTS)
def test_parse_hostport(text, expected) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", BAD_HOSTPORTS)
def test_parse_hostport_says_what_to_write(text) -> None:
    with pytest.raises(HostPortError) as caught:
        parse_hostport(text, "--listen")
    message = str(caught.value)
    assert message.startswith(f"--listen {text!r}") and "HOST:PORT" in message
    assert issubclass(HostPortError, ValueError)


async def test_serve_proxy_refuses_bad_input_before_listening() -> None:
    with pytest.raises(HostPortError, match="--upstream"):
        await serve_proxy("127.0.0.1:0", "nowhere", None, None, None, None)
    with pytest.raises(FaultSpecError, match="kill, pause: process faults"):
        await serve_proxy("127.0.0.1:0", "127.0.0.1:1", "cut,pause,kill", 1, None, None)
    with pytest.raises(FaultSpecError, match="unknown fault"):
        await serve_proxy("127.0.0.1:0", "127.0.0.1:1", "cat", 1, None, None)


async def test_serve_proxy_prints_where_it_listens_and_each_fault(capsys) -> None:
    out = [""]

    async def printed(text: str) -> str:
        while text not in out[0]:
            out[0] += capsys.readouterr().out
            await trio.sleep(0.005)
        return out[0]

    windows = draw_schedule(parse_faults("cut:every=500ms"), seed=1, duration=3)
    with trio.fail_after(10):
        async with open_upstream(echo=True) as upstream, trio.open_nursery() as nursery:
            nursery.start_soon(
                serve_proxy,
                "127.0.0.1:0",
                "{}:{}".format(*upstream.address),
                "cut:every=500ms",
                1,
                None,
                3.0,
            )
            first = (await printed("\n")).splitlines()[0]
            match = re.fullmatch(
                r"rt chaos proxy: 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:\d+, "
                r"control http://127\.0\.0\.1:(\d+) \(seed 1; (\d+) fault "
                r"windows over 3s\)",
                first,
            )
            assert match, first
            assert int(match[3]) == len(windows) > 0
            port, control_port = int(match[1]), int(match[2])
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"echo")
            assert await receive_exactly(client, 4) == b"echo"
            status, stall, _ = await http(
                ("127.0.0.1", control_port),
                "POST",
                "/faults",
                {"spec": "stall:for=100ms:scope=all"},
            )
            assert status == 201
            await printed("stop manual#1")
            await printed("start cut#1 conns=[1] cut:every=250ms..750ms")
            assert await receive_to_eof(client) == b""
        # --duration 3: it returned by itself.
    lines = (out[0] + capsys.readouterr().out).splitlines()
    assert re.fullmatch(r"\+\d+\.\d{3}s start manual#1 conns=\[1\] stall:.*for=100ms.*", lines[1])
    assert re.fullmatch(r"\+\d+\.\d{3}s stop manual#1 conns=\[1\]", lines[2])
    assert len([line for line in lines if " start cut#" in line]) == len(windows)
