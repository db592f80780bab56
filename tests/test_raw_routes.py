"""The WebSocket fast path (rt/web/raw_routes.py) and the head read-ahead that routes to it.

The behaviour of `/stream/ws` is tested in tests/test_streams.py (both paths,
through the `ws_path` fixture) and tests/test_matrix.py; this file pins the
routing itself: which connections take the fast path, that everything else
still reaches hypercorn intact however its bytes arrive, and the HTTP
statuses of refused handshakes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import client_id, new_flow, serve_rt, stream_query

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(
    target: str, token: str, *extra: str, version: str = "13", key: str | None = KEY
) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
        f"Authorization: Bearer {token}",
        *extra,
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_text(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def read_head(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, f"closed before a response head: {bytes(buf)!r}"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


async def read_until(stream: trio.SocketStream, buf: bytearray, needle: bytes) -> None:
    while needle not in buf:
        data = await stream.receive_some(65536)
        assert data, f"closed before {needle!r}: {bytes(buf)!r}"
        buf += data


def target() -> str:
    return f"/stream/ws?{httpx.QueryParams(stream_query(['general'], client_id()))}"


@pytest.mark.parametrize("fast_paths", [True, False])
async def test_fresh_upgrade_takes_the_fast_path_unless_it_is_off(fast_paths):
    """The fast path answers the handshake itself (wsproto, no extensions); hypercorn
    negotiates permessage-deflate and names itself. Both then serve the same stream."""
    with trio.fail_after(10):
        async with serve_rt(fast_paths=fast_paths) as server:
            await new_flow(server, "general")
            token = await server.service.directory.create_user("alice")
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            buf = bytearray()
            try:
                await stream.send_all(
                    upgrade(target(), token, "Sec-WebSocket-Extensions: permessage-deflate")
                )
                head = (await read_head(stream, buf)).lower()
                assert head.startswith(b"http/1.1 101 ")
                assert (b"permessage-deflate" in head) is not fast_paths
                assert (b"server: hypercorn" in head) is not fast_paths
                while not buf:
                    buf += await stream.receive_some(65536)
                # `ready`, uncompressed on the fast path; compressed (RSV1) by hypercorn
                assert buf[0] == (0x81 if fast_paths else 0xC1)
                if fast_paths:
                    await read_until(stream, buf, b'"type":"ready"')
            finally:
                await stream.aclose()


async def test_upgrade_with_a_frame_in_the_same_packet_is_served():
    """Hypercorn issue 225's shape (bytes after the head in one packet) on the fast
    path: the trailing frame is the first message, answered after `ready`."""
    with trio.fail_after(10):
        async with serve_rt() as server:
            await new_flow(server, "general")
            token = await server.service.directory.create_user("alice")
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            buf = bytearray()
            try:
                await stream.send_all(
                    upgrade(target(), token) + masked_text({"op": "ping", "ref": "r1"})
                )
                assert (await read_head(stream, buf)).startswith(b"HTTP/1.1 101 ")
                await read_until(stream, buf, b'"type":"pong"')
                assert buf.index(b'"type":"ready"') < buf.index(b'"type":"pong"')
                assert b'"ref":"r1"' in buf
            finally:
                await stream.aclose()


@pytest.mark.parametrize("request_kind", ["upgrade", "plain get"])
async def test_a_head_that_arrives_byte_by_byte_is_served(request_kind):
    """The read-ahead waits for the whole head, and hands a non-WebSocket request's
    bytes back to hypercorn untouched."""
    with trio.fail_after(10):
        async with serve_rt() as server:
            await new_flow(server, "general")
            token = await server.service.directory.create_user("alice")
            if request_kind == "upgrade":
                request = upgrade(target(), token)
            else:
                request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            buf = bytearray()
            try:
                for i in range(len(request)):
                    await stream.send_all(request[i : i + 1])
                    await trio.sleep(0)
                head = await read_head(stream, buf)
                if request_kind == "upgrade":
                    assert head.startswith(b"HTTP/1.1 101 ")
                    await read_until(stream, buf, b'"type":"ready"')
                else:
                    assert head.startswith(b"HTTP/1.1 200 ")
            finally:
                await stream.aclose()


async def test_plain_requests_then_keep_alive_reach_quart():
    """A first request that is not an upgrade goes to hypercorn with its bytes, and the
    connection keeps serving later requests (two pipelined in one packet here)."""
    with trio.fail_after(10):
        async with serve_rt() as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            buf = bytearray()
            try:
                one = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                await stream.send_all(one + one)
                for _ in range(2):
                    head = await read_head(stream, buf)
                    assert head.startswith(b"HTTP/1.1 200 ")
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    while len(buf) < length:
                        buf += await stream.receive_some(65536)
                    del buf[:length]
            finally:
                await stream.aclose()


@pytest.mark.parametrize(
    ("change", "fast_status", "asgi_status"),
    [
        ({"key": None}, 400, 400),
        # RFC 6455 section 4.4 asks for 426 and the version the server speaks; hypercorn
        # answers 400
        ({"version": "8"}, 426, 400),
    ],
)
async def test_bad_handshakes_are_refused_with_an_http_status(change, fast_status, asgi_status):
    with trio.fail_after(10):
        for fast_paths, status in ((True, fast_status), (False, asgi_status)):
            async with serve_rt(fast_paths=fast_paths) as server:
                await new_flow(server, "general")
                token = await server.service.directory.create_user("alice")
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                try:
                    await stream.send_all(upgrade(target(), token, **change))
                    head = await read_head(stream, bytearray())
                    assert head.split(b" ")[1] == str(status).encode(), (fast_paths, head)
                    if status == 426:
                        assert b"\r\nSec-WebSocket-Version: 13" in head
                finally:
                    await stream.aclose()
