"""`--builtin browser`: rt.js in headless Chromium pages, one page per client under test.

One `BrowserHost` per run starts `python -m rt.chaos.browser_host`
(rt/chaos/browser_host.py), which holds every page in one Chromium;
each `BrowserDriver` is one page, spoken to through the host's JSON lines.
Needs the `browser` extra (Playwright) and Debian's chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import trio

from rt.chaos.drivers import Driver, OnRecord
from rt.chaos.records import ClientRecorder


class BrowserHost:
    """The Chromium process of a run, multiplexing its pages' records by lab id."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: trio.Process | None = None
        self.drivers: dict[str, BrowserDriver] = {}
        self._lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._started = False

    async def ensure_started(self, nursery: trio.Nursery) -> None:
        async with self._lock:
            if self._started:
                return
            self._started = True
            log = open(self.log_path, "ab")  # noqa: SIM115 (the process owns it for the run)
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "rt.chaos.browser_host"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            nursery.start_soon(self._read)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buffer = b""
        while chunk := await self.proc.stdout.receive_some(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                driver = self.drivers.get(message.get("from"))
                if driver is None:
                    continue
                if "rec" in message:
                    driver._printed(orjson.dumps(message["rec"]))
                elif "exit" in message:
                    driver._ended(message["exit"])
        for driver in self.drivers.values():  # the browser went away
            driver._ended(None)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        async with self._send_lock:  # the pages share the one stdin
            with trio.fail_after(10):
                await self.proc.stdin.send_all(orjson.dumps(message) + b"\n")

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            await self.proc.stdin.aclose()
            with trio.move_on_after(10):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()


class BrowserDriver(Driver):
    def __init__(
        self,
        host: BrowserHost,
        lab_id: str,
        env: dict[str, str],
        recorder: ClientRecorder,
        on_record: OnRecord,
    ) -> None:
        super().__init__(lab_id, env, recorder, on_record)
        self.host = host
        host.drivers[lab_id] = self

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the page (the host must be started: `BrowserHost.ensure_started`)."""
        env = self.env
        await self.host.send(
            {
                "open": self.lab_id,
                "url": env["RT_URL"],
                "token": env["RT_TOKEN"],
                "flows": env["RT_FLOWS"].split(","),
                "transport": env["RT_TRANSPORT"],
            }
        )
        task_status.started()
        await self.exited.wait()

    async def _write(self, data: bytes) -> None:
        await self.host.send({"to": self.lab_id, "cmd": orjson.loads(data)})

    def _kill(self) -> None:
        self._ended(None)
