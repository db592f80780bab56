"""`rt serve` as a subprocess, for the whole-system tests (Tier 3)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class RtProcess:
    """A running `python -m rt serve` (or `demo`); its URL and the tokens it printed for --user."""

    def __init__(
        self,
        *args: str,
        db: Path | str,
        command: str = "serve",
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """Start it; with `wait` (the default) return once it serves, else call
        `wait_ready()` later (to start several at once)."""
        self.args = [command, "--host", "127.0.0.1", "--port", "0", "--db", str(db), *args]
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [python, "-m", "rt", *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.tokens: dict[str, str] = {}
        self.url = ""
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"rt serve exited early: {self.proc.stderr.read()}")
            if m := re.match(r"created user (\S+); token: (\S+)", line):
                self.tokens[m[1]] = m[2]
            if m := re.match(r"rt serving on (http://\S+)", line):
                self.url = m[1]
                break
        if not self.url:
            self.kill()
            raise RuntimeError("rt serve did not print its URL within 20 s")
        with httpx.Client() as client:
            assert client.get(self.url + "/health").status_code == 200

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> float:
        """SIGTERM, then the seconds until the process exited (raises after 10 s)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        return time.monotonic() - started

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()
