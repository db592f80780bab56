"""Hostile and odd clients against a real rt server (docs/architecture.md, known traps)."""

from __future__ import annotations

import trio

from tests.helpers import client_id, new_flow, new_user, serve_rt, ws_stream

MALFORMED_UPGRADE = (
    b"GET /stream/ws?flows=general&client=abcdefghijklmnop HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ==\r\n\r\nx\n"
)


async def test_malformed_websocket_upgrade_does_not_take_the_server_down():
    with trio.fail_after(20):
        async with serve_rt() as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            async with ws_stream(alice, ["general"]) as before:
                assert (await before.next())["type"] == "ready"
                for _ in range(3):
                    sock = await trio.open_tcp_stream("127.0.0.1", server.port)
                    await sock.send_all(MALFORMED_UPGRADE)
                    with trio.move_on_after(2):
                        while await sock.receive_some(4096):
                            pass
                    await sock.aclose()
                # the server still serves: the old stream and new requests
                r = await alice.post("general", "still here")
                assert r.status_code == 201
                got = await before.until(lambda o: o.get("type") == "message")
                assert got["content"] == "still here"
            r = await alice.http.get("/health")
            assert r.status_code == 200
            await alice.aclose()


async def test_websocket_ping_frames_count_as_liveness():
    """Clients may rely on WebSocket Ping frames instead of `ping` ops (PROTOCOL.md 3)."""
    heartbeat = 0.3
    with trio.fail_after(20):
        async with serve_rt(heartbeat=heartbeat) as server:
            await new_flow(server, "general")
            alice = await new_user(server, "alice")
            async with ws_stream(alice, ["general"], client=client_id()) as ws:
                assert (await ws.next())["type"] == "ready"
                seen: list[dict] = []

                async def read() -> None:  # trio-websocket handles Pongs only while read
                    while True:
                        seen.append(await ws.next())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    deadline = trio.current_time() + 4 * 2.5 * heartbeat
                    while trio.current_time() < deadline:
                        await ws.conn.ping()  # a Ping frame; hypercorn answers the Pong
                        await trio.sleep(heartbeat / 2)
                    assert not ws.conn.closed
                    r = await alice.post("general", "alive")
                    assert r.status_code == 201
                    while not any(o.get("content") == "alive" for o in seen):
                        await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
                assert not any(o.get("type") == "close" for o in seen)
            await alice.aclose()
