"""Tests for rt.web.hypercorn_guard: bounded writes and the issue-225 guard.

Hypercorn's trio ``serve`` runs in-process on 127.0.0.1:0 with a tiny raw
ASGI app (no Quart); clients are raw sockets, because exact bytes and "never
read" are the point. Every test has a deadline, and a watchdog RST-closes the
raw clients shortly before it, so a regression fails the test instead of
hanging it (a write stuck in hypercorn's shield ignores cancellation).
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.trio import serve

from rt.web import hypercorn_guard
from rt.web.hypercorn_guard import (
    GuardedTCPServer,
    check_upstream,
    install,
    installed,
    uninstall,
)

WRITE_TIMEOUT = 1.0
LOGGER_NAME = "tests.hypercorn_guard.error"
WS_MESSAGE = b"\xab" * (16 * 1024)
HTTP_CHUNK = b"x" * (16 * 1024)
WS_KEY = b"bKdPyn3u98cTfZJSh4TNeQ=="


def ws_upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {WS_KEY.decode()}\r\n"
        "\r\n"
    ).encode()


# --- the app ---------------------------------------------------------------


@dataclass
class PumpRecord:
    """What the app's endless send loop saw, in trio.current_time() seconds."""

    started: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    ended_at: float = math.inf
    longest_send: float = 0.0
    sends: int = 0
    disconnected: bool = False


class App:
    """A raw ASGI app.

    - lifespan: completes startup and shutdown;
    - http ``/hello``: ``200 hello``;
    - http ``/stream``: endless 16 KiB body chunks (see ``_pump``);
    - websocket ``/accept``: accepts at once, then waits for the disconnect;
    - websocket ``/stream``: accepts, then endless 16 KiB binary messages.
    """

    def __init__(self) -> None:
        self.pump = PumpRecord()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http" and scope["path"] == "/hello":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hello"})
        elif scope["type"] == "http" and scope["path"] == "/stream":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = {"type": "http.response.body", "body": HTTP_CHUNK, "more_body": True}
            await self._pump(send, receive, chunk, "http.disconnect")
        elif scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            if scope["path"] == "/stream":
                message = {"type": "websocket.send", "bytes": WS_MESSAGE}
                await self._pump(send, receive, message, "websocket.disconnect")
            else:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
        else:
            raise AssertionError(f"unexpected scope {scope['type']} {scope.get('path')}")

    async def _pump(self, send: Any, receive: Any, message: dict, disconnect: str) -> None:
        """Send ``message`` until the server reports a disconnect (or we are cancelled)."""
        pump = self.pump
        pump.started.set()
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while (await receive())["type"] != disconnect:
                        pass
                    pump.disconnected = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                while True:
                    began = trio.current_time()
                    try:
                        await send(message)
                    finally:
                        pump.longest_send = max(pump.longest_send, trio.current_time() - began)
                    pump.sends += 1
                    # After a disconnect hypercorn's send returns without a
                    # checkpoint; let the watcher run.
                    await trio.lowlevel.checkpoint()
        finally:
            pump.ended_at = trio.current_time()
            pump.ended.set()


# --- the server harness -------------------------------------------------------


@dataclass
class Running:
    port: int
    shutdown: trio.Event
    stopped: trio.Event
    clients: list[trio.socket.SocketType] = field(default_factory=list)
    unjammed: bool = False

    async def raw_client(self, *, rcvbuf: int | None = None) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.clients.append(sock)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", self.port))
        return sock

    async def stop(self) -> float:
        """Trigger a graceful shutdown; return how long ``serve`` took to return."""
        began = trio.current_time()
        self.shutdown.set()
        await self.stopped.wait()
        return trio.current_time() - began


def _reset(sock: trio.socket.SocketType) -> None:
    """Close with RST (SO_LINGER 0), which breaks a server write stuck on this peer."""
    if sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


async def _unjam(running: Running, margin: float = 1.0) -> None:
    """Shortly before the test's deadline, reset the raw clients.

    Only a regression gets here: a server write stuck in an uncancellable
    shield would otherwise keep the test's own deadline from firing.
    """
    deadline = trio.current_effective_deadline()
    if deadline == math.inf:
        return
    await trio.sleep_until(deadline - margin)
    running.unjammed = True
    for sock in running.clients:
        _reset(sock)


@asynccontextmanager
async def serving(
    app: App,
    *,
    guarded: bool = True,
    write_timeout: float = WRITE_TIMEOUT,
    graceful_timeout: float = 3.0,
) -> AsyncIterator[Running]:
    """Run hypercorn's trio ``serve`` with ``app`` on 127.0.0.1:0 until the block ends."""
    if guarded:
        install(write_timeout=write_timeout)
    else:
        uninstall()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger(LOGGER_NAME)
    shutdown, stopped = trio.Event(), trio.Event()

    async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
        finally:
            stopped.set()

    clients: list[trio.socket.SocketType] = []
    try:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(run_server)
            port = int(urls[0].rsplit(":", 1)[1])
            running = Running(port, shutdown, stopped, clients)
            nursery.start_soon(_unjam, running)
            yield running
            await running.stop()
            nursery.cancel_scope.cancel()
    finally:
        for sock in clients:
            sock.close()
    assert not running.unjammed, "a server write stayed stuck until the test's deadline"


async def read_until_closed(sock: trio.socket.SocketType) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = await sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def read_headers(sock: trio.socket.SocketType) -> bytes:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await sock.recv(1024)
        assert chunk, f"connection closed before the response headers: {bytes(data)!r}"
        data += chunk
    return bytes(data)


async def get_hello(running: Running) -> bytes:
    sock = await running.raw_client()
    await sock.send(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return await read_until_closed(sock)


@pytest.fixture(autouse=True)
def restore_install_state() -> Any:
    """Leave hypercorn patched (or not) and the timeout as the test found them."""
    was_installed, timeout = installed(), GuardedTCPServer.write_timeout
    yield
    if was_installed:
        install(write_timeout=timeout)
    else:
        uninstall()
        GuardedTCPServer.write_timeout = timeout


# --- check_upstream and install ---------------------------------------------


def test_check_upstream_passes_on_the_pinned_hypercorn() -> None:
    check_upstream()


@pytest.mark.parametrize("name", sorted(hypercorn_guard.UPSTREAM_SHA256))
def test_check_upstream_names_a_changed_function(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(hypercorn_guard.UPSTREAM_SHA256, name, "0" * 64)
    with pytest.raises(RuntimeError, match=rf"source of {name.replace('.', '[.]')} changed"):
        check_upstream()
    with pytest.raises(RuntimeError):
        install(write_timeout=5)  # refuses to patch a changed hypercorn


def test_install_is_idempotent_and_changes_the_timeout() -> None:
    import hypercorn.trio.run

    install(write_timeout=5)
    install(write_timeout=2.5)
    assert hypercorn.trio.run.TCPServer is GuardedTCPServer
    assert GuardedTCPServer.write_timeout == 2.5
    uninstall()
    assert not installed()
    for bad in (0, -1, math.nan, "3"):
        with pytest.raises(ValueError):
            install(write_timeout=bad)  # type: ignore[arg-type]


# --- the write path alone, on a lockstep stream and a virtual clock ---------------


class RecordingProtocol:
    def __init__(self) -> None:
        self.events: list[object] = []

    async def handle(self, event: object) -> None:
        self.events.append(event)


def lockstep_server(write_timeout: float) -> tuple[GuardedTCPServer, trio.abc.ReceiveStream]:
    """A GuardedTCPServer whose stream's send_all waits for the peer to read it all."""
    install(write_timeout=write_timeout)
    send_stream, receive_stream = trio.testing.lockstep_stream_pair()
    config = Config()
    config.errorlog = logging.getLogger(LOGGER_NAME)
    server = GuardedTCPServer(None, config, None, {}, send_stream)  # type: ignore[arg-type]
    server.protocol = RecordingProtocol()  # type: ignore[assignment]
    return server, receive_stream


async def test_queued_senders_return_once_the_stalled_write_aborts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        server, peer = lockstep_server(write_timeout=10)
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(server.protocol_send, RawData(b"x" * 100))
        assert trio.current_time() - began == pytest.approx(10)
        events = server.protocol.events  # type: ignore[attr-defined]
        assert events and all(isinstance(event, Closed) for event in events)
        while await peer.receive_some():  # what was in flight, then EOF: closed
            pass


async def test_a_slow_reader_that_makes_progress_is_not_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        server, peer = lockstep_server(write_timeout=10)
        data = bytes(range(256)) * 256  # 64 KiB: 4 chunks, each read 6 s apart
        received = bytearray()

        async def slow_reader() -> None:
            while len(received) < len(data):
                await trio.sleep(6)
                received.extend(await peer.receive_some(16 * 1024))

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_reader)
            await server.protocol_send(RawData(data))
        assert trio.current_time() - began >= 24  # longer than write_timeout in total
        assert bytes(received) == data
        assert server.protocol.events == []  # type: ignore[attr-defined]


async def test_outer_cancellation_does_not_tear_a_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        server, peer = lockstep_server(write_timeout=10)
        received = bytearray()

        async def late_reader() -> None:
            await trio.sleep(5)
            received.extend(await peer.receive_some())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_reader)
            with trio.move_on_after(1):
                await server.protocol_send(RawData(b"frame"))
            assert trio.current_time() >= 5  # the shield held the write past the cancel
        assert bytes(received) == b"frame"
        assert server.protocol.events == []  # type: ignore[attr-defined]


# --- hypercorn issue 225 -------------------------------------------------------

MALFORMED_UPGRADE = ws_upgrade("/accept") + b"x\n"


async def test_upstream_still_dies_of_issue_225() -> None:
    """Canary: without the guard the malformed upgrade kills ``serve``.

    Proves the next test exercises the real bug.
    """
    with trio.fail_after(5):
        with pytest.raises(BaseExceptionGroup) as caught:
            async with serving(App(), guarded=False) as running:
                sock = await running.raw_client()
                await sock.send(MALFORMED_UPGRADE)
                await running.stopped.wait()
        assert caught.value.subgroup(lambda e: isinstance(e, h11.LocalProtocolError))


async def test_malformed_upgrade_is_contained_to_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(5):
        caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
        async with serving(App()) as running:
            bystander = await running.raw_client()
            await bystander.send(ws_upgrade("/accept"))
            assert b" 101 " in await read_headers(bystander)

            sock = await running.raw_client()
            await sock.send(MALFORMED_UPGRADE)
            await read_until_closed(sock)  # that connection, and only that one, ends

            assert not running.stopped.is_set()
            response = await get_hello(running)
            assert response.startswith(b"HTTP/1.1 200 ")
            assert b"\r\nhello\r\n" in response  # one chunk, "hello"
            # The WebSocket opened before is still up: ping it, expect a pong.
            await bystander.send(b"\x89\x80" + b"\x00\x00\x00\x00")
            assert (await bystander.recv(16))[:1] == b"\x8a"
            bystander.close()  # so that shutdown need not wait for it

        errors = [r for r in caplog.records if "escaped the connection" in r.getMessage()]
        assert len(errors) == 1
        assert errors[0].exc_info is not None
        group = errors[0].exc_info[1]
        assert isinstance(group, BaseExceptionGroup)
        assert group.subgroup(lambda e: isinstance(e, h11.LocalProtocolError))


# --- writes to a peer that never reads -------------------------------------------


async def open_stalled_client(running: Running, transport: str) -> trio.socket.SocketType:
    """Connect with a 4 KiB receive buffer, start the endless stream, never read it."""
    sock = await running.raw_client(rcvbuf=4096)
    if transport == "http":
        await sock.send(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    else:
        await sock.send(ws_upgrade("/stream"))
        assert b" 101 " in await read_headers(sock)  # the last read
    return sock


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_stalled_write_is_aborted_and_the_app_sees_a_disconnect(transport: str) -> None:
    """A write that makes no progress ends after write_timeout; shutdown is then prompt."""
    with trio.fail_after(8):
        app = App()
        async with serving(app, write_timeout=WRITE_TIMEOUT) as running:
            began = trio.current_time()
            await open_stalled_client(running, transport)
            await app.pump.ended.wait()
            pump = app.pump
            assert pump.disconnected, "the app should be told the client is gone"
            assert pump.sends >= 1
            # The send that stalled ran into the deadline: not sooner, not much later.
            assert WRITE_TIMEOUT * 0.9 <= pump.longest_send <= WRITE_TIMEOUT + 1
            assert pump.ended_at - began <= WRITE_TIMEOUT + 1

            # The client is still connected (and still not reading).
            assert await running.stop() <= 5


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_shutdown_while_a_write_is_stalled_finishes(transport: str) -> None:
    """The trap itself: graceful shutdown while the app is stuck in send."""
    with trio.fail_after(8):
        app = App()
        async with serving(app, write_timeout=WRITE_TIMEOUT, graceful_timeout=0.5) as running:
            began = trio.current_time()
            await open_stalled_client(running, transport)
            await app.pump.started.wait()
            # The buffers fill in milliseconds; the graceful deadline (0.5 s)
            # then cancels the handler while its write is stuck in the shield.
            took = await running.stop()
            assert took <= 5
            pump = app.pump
            assert pump.ended.is_set()
            assert WRITE_TIMEOUT * 0.9 <= pump.longest_send <= WRITE_TIMEOUT + 1
            assert pump.ended_at - began <= WRITE_TIMEOUT + 1


async def test_upstream_still_hangs_on_a_stalled_write() -> None:
    """Canary: without the guard, shutdown waits for ever on the stalled write.

    Proves the previous tests exercise the real trap. The write is freed at
    the end by resetting the client.
    """
    with trio.fail_after(8):
        app = App()
        async with serving(app, guarded=False, graceful_timeout=0.5) as running:
            sock = await open_stalled_client(running, "http")
            await app.pump.started.wait()
            running.shutdown.set()
            with trio.move_on_after(2.0):
                await running.stopped.wait()
            assert not running.stopped.is_set(), "upstream no longer hangs: revisit the patch"
            _reset(sock)
            with trio.fail_after(2):
                await running.stopped.wait()
