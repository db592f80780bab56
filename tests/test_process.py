"""Whole-system tests of `rt serve` as a subprocess: durability and shutdown (Tier 3)."""

from __future__ import annotations

import json
import secrets
import socket
import time

import httpx
import pytest
import trio

from tests.process import RtProcess

pytestmark = pytest.mark.slow


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def all_history(http: httpx.AsyncClient, url: str, token: str) -> list[dict]:
    messages: list[dict] = []
    before = None
    while True:
        params = {"limit": 500, **({"before": before} if before else {})}
        r = await http.get(f"{url}/flows/general/messages", params=params, headers=auth(token))
        assert r.status_code == 200, r.text
        page = r.json()["messages"]
        if not page:
            return messages
        messages = page + messages
        before = page[0]["id"]


async def test_acknowledged_posts_survive_sigkill(tmp_path):
    db = tmp_path / "rt.db"
    server = RtProcess(
        "--user",
        "alice",
        "--flow",
        "general",
        "--ops-rate",
        "100000",
        "--ops-burst",
        "100000",
        db=db,
    )
    token = server.tokens["alice"]
    attempted: set[str] = set()
    acknowledged: dict[str, int] = {}
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(timeout=10, headers=auth(token)) as http:
                r = await http.get(f"{server.url}/flows/general/messages")
                epoch = r.json()["epoch"]
                enough = trio.Event()

                async def poster() -> None:
                    while True:
                        content = "p" + secrets.token_hex(8)
                        attempted.add(content)
                        try:
                            r = await http.post(
                                f"{server.url}/flows/general/messages",
                                json={"content": content, "uuid": content},
                            )
                        except httpx.HTTPError:
                            return  # the server died under us
                        if r.status_code != 201:
                            return
                        acknowledged[content] = r.json()["id"]
                        if len(acknowledged) >= 300:
                            enough.set()

                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(poster)
                    await enough.wait()
                    server.kill()  # SIGKILL with posts in flight
                assert len(acknowledged) >= 300
                cursor = sorted(acknowledged.values())[len(acknowledged) // 2]

                server = RtProcess(db=db)
                history = await all_history(http, server.url, token)
                by_content = {m["content"]: m["id"] for m in history}
                # acknowledged ⊆ history ⊆ attempted, with the ids that were acknowledged
                for content, event_id in acknowledged.items():
                    assert by_content.get(content) == event_id, content
                assert set(by_content) <= attempted
                ids = [m["id"] for m in history]
                assert ids == sorted(set(ids))
                # ids continue upward
                r = await http.post(
                    f"{server.url}/flows/general/messages",
                    json={"content": "after", "uuid": "after-restart"},
                )
                assert r.status_code == 201
                assert r.json()["id"] > max(ids)
                # a stream resumes across the restart, in the same epoch
                client = "c" + secrets.token_hex(10)
                params = {"flows": "general", "client": client, "cursor": cursor, "epoch": epoch}
                async with http.stream("GET", f"{server.url}/stream/sse", params=params) as s:
                    assert s.status_code == 200
                    got: list[int] = []
                    ready = None
                    async for line in s.aiter_lines():
                        if line.startswith("data: "):
                            obj = json.loads(line[6:])
                            if obj["type"] == "ready":
                                ready = obj
                            elif obj["type"] == "message":
                                got.append(obj["id"])
                                if obj["content"] == "after":
                                    break
                assert ready is not None and ready["reset"] is False
                assert ready["epoch"] == epoch
                assert got == [i for i in ids if i > cursor] + [r.json()["id"]]
    finally:
        server.kill()


def raw_stalled_stream(url: str, token: str) -> socket.socket:
    """An SSE request from a client with a 4 KiB receive buffer that never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    client = "c" + secrets.token_hex(10)
    sock.sendall(
        f"GET /stream/sse?flows=general&client={client} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def open_sse_streams(url: str, token: str) -> float:
    r = httpx.get(f"{url}/metrics")
    for line in r.text.splitlines():
        if line.startswith('rt_streams_open{transport="sse"}'):
            return float(line.split()[-1])
    raise AssertionError("rt_streams_open is missing from /metrics")


async def test_stalled_reader_is_dropped_and_sigterm_still_ends_the_server(tmp_path):
    write_timeout = 1.0
    server = RtProcess(
        "--user",
        "alice",
        "--flow",
        "general",
        "--write-timeout",
        str(write_timeout),
        "--ops-rate",
        "100000",
        "--ops-burst",
        "100000",
        db=tmp_path / "rt.db",
    )
    token = server.tokens["alice"]
    stalled = raw_stalled_stream(server.url, token)
    try:
        with trio.fail_after(60):
            while open_sse_streams(server.url, token) < 1:
                await trio.sleep(0.05)
            big = "x" * 16000
            async with httpx.AsyncClient(timeout=10, headers=auth(token)) as http:
                for i in range(400):  # 6.4 MB: far more than the socket buffers hold
                    r = await http.post(
                        f"{server.url}/flows/general/messages",
                        json={"content": f"{i}{big}", "uuid": f"big-{i:05d}"},
                    )
                    assert r.status_code == 201
                    if open_sse_streams(server.url, token) == 0:
                        break
                posted = time.monotonic()
                while open_sse_streams(server.url, token) > 0:
                    assert time.monotonic() - posted < write_timeout + 1, "not dropped"
                    await trio.sleep(0.05)
                metrics = (await http.get(f"{server.url}/metrics")).text
                assert 'rt_write_timeouts_total{transport="sse"} 1.0' in metrics
            # a second stalled client stays connected through the shutdown
            stalled2 = raw_stalled_stream(server.url, token)
            seconds = server.terminate()
            stalled2.close()
        assert server.proc.returncode == 0, server.stderr()
        assert seconds < 5, seconds
    finally:
        stalled.close()
        server.kill()


async def test_sigterm_drains_with_503_and_shutdown_frames(tmp_path):
    server = RtProcess("--user", "alice", "--flow", "general", db=tmp_path / "rt.db")
    token = server.tokens["alice"]
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10, headers=auth(token)) as http:
                client = "c" + secrets.token_hex(10)
                params = {"flows": "general", "client": client}
                async with http.stream("GET", f"{server.url}/stream/sse", params=params) as s:
                    lines = s.aiter_lines()
                    async for line in lines:
                        if line.startswith("data: ") and '"ready"' in line:
                            break
                    started = time.monotonic()
                    server.proc.send_signal(2)  # SIGINT: the same as SIGTERM
                    close = None
                    async for line in lines:
                        if line.startswith("data: "):
                            obj = json.loads(line[6:])
                            if obj["type"] == "close":
                                close = obj
                                break
                assert close is not None and close["reason"] == "shutdown"
                assert 1000 <= close["retry_ms"] <= 5000
                r = await http.get(f"{server.url}/me")
                assert r.status_code == 503
                assert r.json()["error"]["code"] == "shutting_down"
                assert int(r.headers["Retry-After"]) >= 1
            server.proc.wait(10)
            assert time.monotonic() - started < 5
        assert server.proc.returncode == 0, server.stderr()
    finally:
        server.kill()
