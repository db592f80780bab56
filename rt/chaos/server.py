"""The `rt serve` process a lab run starts, and the process faults done to it.

`RtServer` runs `python -m rt serve` on a fixed loopback port (so the fault
proxy's upstream stays the same across restarts) on one database in the run
directory, with the lab's settings (short heartbeats, the delivery record,
`--chaos` when the `server` fault is asked for). LAB.md section 4's process
faults act on it: `kill` (SIGKILL, then start again on the same database),
`pause` (SIGSTOP for a while, then SIGCONT). SIGUSR2 stops `--chaos`.

The users the run needs are made with `--user` at the first start: the
tokens are read from what `rt serve` prints.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

# The lab's settings for the server: short heartbeats, so a client's read
# watchdog matters within a short run; no per-address cap (every client comes
# through the proxy, from 127.0.0.1).
LAB_SERVER_ARGS = [
    "--heartbeat",
    "2",
    "--write-timeout",
    "2",
    "--presence-grace",
    "3",
    "--max-connections-per-address",
    "0",
]

_TOKEN = re.compile(r"created user (\S+); token: (\S+)")
_SERVING = re.compile(r"rt serving on (http://\S+)")


class LabError(Exception):
    """The lab itself cannot run (exit 2): the message says what to fix."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtServer:
    """One `rt serve` process, restartable on the same port and database."""

    def __init__(
        self,
        run_dir: Path,
        *,
        users: list[str],
        flows: list[str],
        extra_args: list[str],
        chaos: str | None,
        seed: int,
        redis: str | None = None,
        name: str = "server",
    ) -> None:
        """One `rt serve` on the run's database, or, with `redis`, one node of a cluster
        on that Redis (`name` tells the nodes' logs apart)."""
        self.run_dir = run_dir
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}
        store = ["--redis", redis] if redis else ["--db", str(run_dir / "rt.db")]
        # Every node appends to one delivery record (each line is one small write).
        self.args = [
            sys.executable,
            "-m",
            "rt",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *store,
            "--delivery-record",
            str(run_dir / "deliveries.jsonl"),
            *LAB_SERVER_ARGS,
        ]
        for flow in flows:
            self.args += ["--flow", flow]
        for user in users:
            self.args += ["--user", user]
        if chaos:
            self.args += ["--chaos", chaos, "--chaos-seed", str(seed)]
        self.args += extra_args
        self.proc: trio.Process | None = None
        self.paused = False
        self.restarts = 0
        self._log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in close())

    async def start(self, timeout: float = 30.0) -> None:
        """Start the process and return once it serves (LabError if it does not)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await trio.lowlevel.open_process(
            self.args, stdout=subprocess.PIPE, stderr=self._log, env=env
        )
        assert self.proc.stdout is not None
        buffer = b""
        with trio.move_on_after(timeout):
            while True:
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                for m in _TOKEN.finditer(buffer.decode(errors="replace")):
                    self.tokens[m[1]] = m[2]
                if _SERVING.search(buffer.decode(errors="replace")):
                    self._log.write(buffer)
                    self._log.flush()
                    return
        self._log.write(buffer)
        raise LabError(
            f"rt serve did not start within {timeout:.0f} s; see {self.run_dir / (self.name + '.log')}"
        )

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    async def kill_and_restart(self) -> None:
        """`kill`: SIGKILL, then the same server again on the same database."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()
        self.paused = False
        self.restarts += 1
        await self.start()

    def pause(self) -> None:
        """`pause`: SIGSTOP (the server holds its sockets but answers nothing)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop_chaos(self) -> None:
        """End `--chaos` for good (SIGUSR2), so the clients can catch up in peace."""
        self._signal(signal.SIGUSR2)

    async def stop(self) -> int | None:
        """SIGTERM (after SIGCONT), and SIGKILL after 10 s; the exit code."""
        if self.proc is None:
            return None
        self.resume()
        self._signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await self.proc.wait()
        if self.proc.returncode is None:
            self._signal(signal.SIGKILL)
            await self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self._log.close()


async def wait_healthy(url: str, timeout: float) -> bool:
    """Whether `GET url/health` answers 200 within `timeout` seconds."""
    from rt.chaos.http import get_json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = await get_json(url + "/health", timeout=2)
            if status == 200:
                return True
        except OSError:
            pass
        await trio.sleep(0.1)
    return False


class RedisProcess:
    """The Redis of a cluster run (`--nodes N`): Debian's redis-server (or Valkey's), AOF on."""

    def __init__(self, run_dir: Path) -> None:
        import shutil

        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise LabError(
                "--nodes needs redis-server (apt-get install redis-server) "
                "or valkey-server on the PATH"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        (run_dir / "redis").mkdir(exist_ok=True)
        self.args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(run_dir / "redis"),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ]
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)
        raise LabError("redis-server did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
