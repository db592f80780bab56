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

import signal
import time
from pathlib import Path

import trio

from rt.cluster import ClusterError as LabError
from rt.cluster.processes import RedisProcess, ServeProcess, free_port

__all__ = ["LAB_SERVER_ARGS", "LabError", "RedisProcess", "RtServer", "free_port", "wait_healthy"]

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


class RtServer(ServeProcess):
    """One `rt serve` of a lab run, restartable on the same port and database."""

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
        port = free_port()
        store = ["--redis", redis] if redis else ["--db", str(run_dir / "rt.db")]
        # Every node appends to one delivery record (each line is one small write).
        command = [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *store,
            "--delivery-record",
            str(run_dir / "deliveries.jsonl"),
            *LAB_SERVER_ARGS,
        ]
        for flow in flows:
            command += ["--flow", flow]
        for user in users:
            command += ["--user", user]
        if chaos:
            command += ["--chaos", chaos, "--chaos-seed", str(seed)]
        command += extra_args
        super().__init__(command, port=port, log=run_dir / f"{name}.log", name=name)
        self.run_dir = run_dir
        self.paused = False

    async def kill_and_restart(self) -> None:
        """`kill`: SIGKILL, then the same server again on the same database."""
        self.paused = False
        await super().kill_and_restart()

    def pause(self) -> None:
        """`pause`: SIGSTOP (the server holds its sockets but answers nothing)."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def stop_chaos(self) -> None:
        """End `--chaos` for good (SIGUSR2), so the clients can catch up in peace."""
        self.signal(signal.SIGUSR2)


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
