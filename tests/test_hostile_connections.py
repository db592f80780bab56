"""Connections that must end, and clients that try to keep them open (issue 10).

Raw sockets against a real server, on the fast paths and on the Quart path
(`fast_paths=False`, what `--bench-asgi-only` runs): connections end as HTTP
says, the TCP layer bounds what a hostile client can hold, and the server
keeps answering `/health` with its history intact. Every loop is bounded in
count and time.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import trio

from tests.helpers import new_flow, new_user, serve_rt
from tests.process import ROOT

SHORT = dict(keep_alive_timeout=0.5, head_timeout=0.5)


@pytest.fixture(params=["fast", "asgi"])
def fast_paths(request) -> bool:
    return request.param == "fast"


async def connect(port: int, source: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def read_to_eof(sock: trio.socket.SocketType, limit: float) -> tuple[bytes, float]:
    """Everything until the server closes, and when it did (raises after `limit` s)."""
    started = trio.current_time()
    data = b""
    with trio.fail_after(limit):
        while True:
            try:
                chunk = await sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data, trio.current_time() - started


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


# -- connections end as HTTP says ------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", id="close"),
        pytest.param(b"GET /health HTTP/1.0\r\n\r\n", id="http-1.0"),
    ],
)
async def test_the_server_closes_after_the_answer(fast_paths, request_bytes):
    # keep-alive is long here: only the request's own terms may close it
    async with serve_rt(fast_paths=fast_paths, keep_alive_timeout=30) as server:
        sock = await connect(server.port)
        await sock.send(request_bytes)
        data, took = await read_to_eof(sock, 5)
        assert status_of(data) == 200 and data.endswith(b'{"status":"ok"}')
        assert took < 2
        sock.close()


async def test_an_idle_kept_alive_connection_is_closed(fast_paths):
    async with serve_rt(fast_paths=fast_paths, **SHORT) as server:
        sock = await connect(server.port)
        await sock.send(HEALTH)
        data, took = await read_to_eof(sock, 5)
        assert status_of(data) == 200
        assert 0.3 < took < 3, took  # the keep-alive timeout, not at once and not never
        sock.close()


async def test_a_request_head_sent_halfway_gets_408(fast_paths):
    async with serve_rt(fast_paths=fast_paths, **SHORT) as server:
        sock = await connect(server.port)
        await sock.send(b"GET /health HTTP/1.1\r\nHo")
        data, took = await read_to_eof(sock, 5)
        assert status_of(data) == 408 and took < 3
        silent = await connect(server.port)  # nothing at all: closed without a word
        data, took = await read_to_eof(silent, 5)
        assert data == b"" and took < 3
        sock.close()
        silent.close()


async def test_pipelined_requests_are_answered_in_order(fast_paths):
    async with serve_rt(fast_paths=fast_paths, keep_alive_timeout=30) as server:
        sock = await connect(server.port)
        await sock.send(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data, _ = await read_to_eof(sock, 5)
        statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
        assert statuses == [200, 404, 200]
        assert data.index(b'{"status":"ok"}') < data.index(b'"protocol":1')
        sock.close()


async def test_a_huge_head_gets_431_and_the_server_goes_on(fast_paths):
    async with serve_rt(fast_paths=fast_paths, **SHORT) as server:
        sock = await connect(server.port)
        try:
            await sock.send(
                b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before it has read everything
        data, _ = await read_to_eof(sock, 5)
        assert data == b"" or status_of(data) == 431
        sock.close()
        ok = await connect(server.port)
        await ok.send(HEALTH)
        data, _ = await read_to_eof(ok, 5)
        assert status_of(data) == 200
        ok.close()


async def test_streams_and_polls_are_not_idle_while_open(fast_paths):
    async with serve_rt(fast_paths=fast_paths, keep_alive_timeout=0.3, poll_timeout=1.5) as s:
        await new_flow(s, "general")
        alice = await new_user(s, "alice")
        async with httpx.AsyncClient(
            base_url=s.url, timeout=10, headers={"Authorization": f"Bearer {alice.token}"}
        ) as http:
            params = {"flows": "general", "client": "idle-test-client-0001"}
            with trio.fail_after(10):
                async with http.stream("GET", "/stream/sse", params=params) as r:
                    lines = r.aiter_lines()
                    async for line in lines:
                        if '"ready"' in line:
                            break
                    await trio.sleep(1.0)  # well past the keep-alive timeout
                    await alice.post("general", "still open")
                    async for line in lines:
                        if "still open" in line:
                            break
                started = trio.current_time()
                poll = {"flows": "general", "client": "idle-test-client-0002"}
                first = (await http.get("/stream/poll", params=poll)).json()
                poll.update(cursor=first[0]["cursor"], epoch=first[0]["epoch"])
                started = trio.current_time()
                r = await http.get("/stream/poll", params=poll)
                assert r.status_code == 200 and r.json() == []
                assert trio.current_time() - started > 1.2  # the poll timeout, not keep-alive
        await alice.aclose()


async def test_a_stream_that_ends_ends_its_connection_on_http_1_0(fast_paths):
    async with serve_rt(fast_paths=fast_paths, rotate_bytes=2048, keep_alive_timeout=30) as s:
        await new_flow(s, "general")
        alice = await new_user(s, "alice")
        sock = await connect(s.port)
        await sock.send(
            b"GET /stream/xhr?flows=general&client=rotate-test-client-01 HTTP/1.0\r\n"
            b"Authorization: Bearer " + alice.token.encode() + b"\r\n\r\n"
        )
        for i in range(40):
            await alice.post("general", f"filler {i} " + "x" * 100)
        data, _ = await read_to_eof(sock, 10)
        assert b'"reason":"rotate"' in data
        sock.close()
        await alice.aclose()


# -- no HTTP/2 in clear text -----------------------------------------------------------


async def test_http2_prior_knowledge_is_refused(fast_paths):
    async with serve_rt(fast_paths=fast_paths, **SHORT) as server:
        sock = await connect(server.port)
        await sock.send(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        )
        data, took = await read_to_eof(sock, 5)
        assert status_of(data) == 505 and took < 2
        sock.close()


async def test_an_h2c_upgrade_is_served_over_http_1_1(fast_paths):
    async with serve_rt(fast_paths=fast_paths, **SHORT) as server:
        sock = await connect(server.port)
        await sock.send(
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings"
            b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        data, _ = await read_to_eof(sock, 5)
        assert data.startswith(b"HTTP/1.1 200 ") and b"101" not in data.split(b"\r\n")[0]
        sock.close()


# -- bounded resources -----------------------------------------------------------------


async def test_connections_over_the_caps_are_refused_at_once():
    async with serve_rt(
        max_connections=20, max_connections_per_address=8, head_timeout=5
    ) as server:
        port = server.port
        with trio.fail_after(15):
            hogs = [await connect(port, "127.0.0.2") for _ in range(8)]
            over = await connect(port, "127.0.0.2")
            data, took = await read_to_eof(over, 3)
            assert status_of(data) == 429 and b"retry-after: 1" in data.lower() and took < 1
            # another address still gets in, up to the total cap
            others = [await connect(port, f"127.0.0.{3 + i}") for i in range(12)]
            full = await connect(port, "127.0.0.1")
            data, _ = await read_to_eof(full, 3)
            assert status_of(data) == 503 and b'"code":"internal"' in data
            # give places back: served again
            for sock in hogs + others:
                sock.close()
            await trio.sleep(0)
            while True:
                ok = await connect(port)
                await ok.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                data, _ = await read_to_eof(ok, 3)
                ok.close()
                if status_of(data) == 200:
                    break
                await trio.sleep(0.05)  # the closes are still being noticed


async def test_slowloris_does_not_starve_a_normal_client():
    async with serve_rt(head_timeout=3) as server:
        await new_flow(server, "general")
        alice = await new_user(server, "alice")
        await alice.post("general", "before")
        port = server.port
        with trio.fail_after(30):
            lorises = []
            for i in range(300):
                sock = await connect(port, f"127.0.1.{i % 250 + 1}")
                await sock.send(b"G")
                lorises.append(sock)
            async with trio.open_nursery() as nursery:

                async def drip() -> None:
                    for byte in b"ET / HTTP/1.1\r\n":
                        await trio.sleep(1)
                        for sock in lorises:
                            try:
                                await sock.send(bytes([byte]))
                            except OSError:
                                pass

                nursery.start_soon(drip)
                async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                    for _ in range(5):
                        started = trio.current_time()
                        assert (await http.get("/health")).status_code == 200
                        assert trio.current_time() - started < 1.0
                        await trio.sleep(0.4)
                # the head timeout ends every loris
                for sock in lorises:
                    data, _ = await read_to_eof(sock, 10)
                    assert data == b"" or status_of(data) == 408
                nursery.cancel_scope.cancel()
            for sock in lorises:
                sock.close()
        history = await alice.history("general")
        assert [m["content"] for m in history["messages"]] == ["before"]
        await alice.aclose()


# -- out of file descriptors (a subprocess with a low `ulimit -n`) -----------------------


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


class LowFdServer:
    def __init__(self, tmp_path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rt",
                "serve",
                "--port",
                "0",
                "--db",
                str(tmp_path / "fd.db"),
                "--user",
                "ann",
                "--flow",
                "general",
                "--head-timeout",
                "30",
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_low_fd_limit,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.token = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("created user ann; token: "):
                self.token = line.split()[-1]
            if line.startswith("rt serving on "):
                self.url = line.split()[3]
                self.port = int(self.url.rsplit(":", 1)[1])
                return
        raise RuntimeError(self.proc.stderr.read())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.stderr.read()


def _hold(port: int, count: int) -> list[socket.socket]:
    held = []
    for i in range(count):
        sock = socket.socket()
        sock.bind((f"127.0.2.{i % 250 + 1}", 0))
        sock.connect(("127.0.0.1", port))  # completes in the kernel's backlog regardless
        held.append(sock)
    return held


def _get(url: str, path: str, token: str = "", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        "GET" if "json" not in kw else "POST", url + path, headers=headers, timeout=5, **kw
    )


@pytest.mark.slow
def test_out_of_file_descriptors_the_server_waits_logs_calmly_and_recovers(tmp_path):
    server = LowFdServer(tmp_path, "--max-connections", "100000")
    try:
        posted = _get(
            server.url,
            "/flows/general/messages",
            server.token,
            json={"content": "kept", "uuid": "fd-test-uuid-1"},
        )
        assert posted.status_code == 201
        held = _hold(server.port, 200)
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            httpx.get(server.url + "/health", timeout=2)  # accepted by nobody: no fds
        elapsed = time.monotonic() - started
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # accepts again once descriptors free up
            try:
                assert httpx.get(server.url + "/health", timeout=2).status_code == 200
                break
            except httpx.TimeoutException:
                assert time.monotonic() < deadline, "never accepted again"
        elapsed = time.monotonic() - started
        history = _get(server.url, "/flows/general/messages", server.token).json()
        assert [m["content"] for m in history["messages"]] == ["kept"]
        assert server.proc.poll() is None
    finally:
        log = server.stop()
    complaints = [line for line in log.splitlines() if "Too many open files" in line]
    assert complaints, "the server never ran out: the test proves nothing"
    assert len(complaints) <= elapsed + 2, complaints  # at most one a second
    assert "Traceback" not in log
    assert server.proc.returncode == 0


@pytest.mark.slow
def test_the_automatic_cap_keeps_connections_from_exhausting_descriptors(tmp_path):
    server = LowFdServer(tmp_path)
    try:
        held = _hold(server.port, 150)  # the cap is 128 - 64 = 64
        refused = 0
        for sock in held[-40:]:
            sock.settimeout(5)
            data = sock.recv(4096)
            refused += data.startswith(b"HTTP/1.1 503 ")
        assert refused == 40
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        log = server.stop()
    assert "Too many open files" not in log
    assert "at most 64 connections" in log


# -- /static and the access log against hostile paths ------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/rt.js%00",
        "/static/" + "a" * 5000,
        "/static/%2e%2e/web/app.py",
        "/static/..%2F..%2Fetc%2Fpasswd",
        "/static/rt.js/",
        "/static/%C0%AE%C0%AE/x",
        "/static/\u00e9.js",
        "/static/rt.js%0A",
    ],
)
async def test_bad_static_paths_are_404_without_a_traceback(path, caplog):
    async with serve_rt() as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            with caplog.at_level(logging.INFO):
                r = await http.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert r.json()["error"]["code"] == "not_found"
            assert str(ROOT) not in r.text  # no install path in the answer
            assert (await http.get("/static/rt.js")).status_code == 200
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


async def test_the_access_log_escapes_what_the_path_carries(caplog):
    async with serve_rt() as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            with caplog.at_level(logging.INFO, logger="rt.access"):
                await http.get("/health%0AGET%20/forged%20200")
                await http.get("/x%1B%5B31mred%00nul%E2%80%AE")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "rt.access"]
    assert len(lines) == 2
    for line in lines:
        assert line.isprintable(), repr(line)
    assert lines[0] == "GET /health\\nGET /forged 200 404"
    assert "\\x1b[31mred\\x00nul\\u202e" in lines[1]


def test_the_limits_are_settings_of_rt_serve():
    out = subprocess.run(
        [sys.executable, "-m", "rt", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for flag in (
        "--keep-alive-timeout",
        "--head-timeout",
        "--max-head",
        "--max-connections",
        "--max-connections-per-address",
    ):
        assert flag in out, flag
    bad = subprocess.run(
        [sys.executable, "-m", "rt", "serve", "--max-connections", "lots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "auto" in bad.stderr and "Traceback" not in bad.stderr
