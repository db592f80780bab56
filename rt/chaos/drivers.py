"""The clients under test, as the lab drives them (LAB.md section 2).

Every client is a `Driver`: the lab `send`s it commands (`post`, `stop`)
and records every line it prints in its `ClientRecorder`, in order.

- `ProcessDriver`: a command of the user's (`--client "node my-client.js"`),
  one process per client, JSON lines on stdin and stdout, stderr kept in
  `clients/<lab_id>.stderr.log`.
- `PythonDriver` (`--builtin python`): `rt.client`'s driver running in the
  lab's own process, many clients sharing it, with exactly the records
  `python -m rt.client.driver` prints.
- `BrowserDriver` (`--builtin browser`, rt/chaos/browser.py): rt.js in a
  headless Chromium page.

`on_record(lab_id, entry)` sees each recorded line as it comes (the live
progress display).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from rt.chaos.records import ClientRecorder, Printed

STOP_LIMIT = 15.0  # LAB.md section 2: a stopped client exits within 15 seconds

OnRecord = Callable[[str, Any], None]


class Driver:
    """One client under test. Subclasses implement `_start`, `_write` and `_wait`."""

    def __init__(
        self, lab_id: str, env: dict[str, str], recorder: ClientRecorder, on_record: OnRecord
    ) -> None:
        self.lab_id = lab_id
        self.env = env
        self.recorder = recorder
        self.on_record = on_record
        self.exit_code: int | None = None
        self.exited = trio.Event()
        self.printed_anything = False

    def _printed(self, line: bytes | str) -> None:
        entry = self.recorder.printed(line)
        self.printed_anything = True
        self.on_record(self.lab_id, entry)

    async def send(self, cmd: dict[str, Any]) -> None:
        """Hand the client one command (recorded first: the lab asked for it then)."""
        if self.exited.is_set():
            return
        self.recorder.sent(cmd)
        self.on_record(self.lab_id, cmd)
        try:
            await self._write(orjson.dumps(cmd) + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # it is gone; what it printed says what happened

    async def stop(self) -> None:
        """Send `stop` and wait for the client to end (killed after STOP_LIMIT)."""
        await self.send({"cmd": "stop"})
        with trio.move_on_after(STOP_LIMIT):
            await self.exited.wait()
        if not self.exited.is_set():
            self._kill()
            with trio.move_on_after(5):
                await self.exited.wait()

    def _ended(self, code: int | None) -> None:
        if not self.exited.is_set():
            self.exit_code = code
            self.recorder.exited(code)
            self.exited.set()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError


class ProcessDriver(Driver):
    def __init__(
        self,
        command: str,
        lab_id: str,
        env: dict[str, str],
        recorder: ClientRecorder,
        on_record: OnRecord,
        stderr_path: Path,
    ) -> None:
        super().__init__(lab_id, env, recorder, on_record)
        self.argv = shlex.split(command)
        self.stderr_path = stderr_path
        self.proc: trio.Process | None = None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with open(self.stderr_path, "ab") as stderr:
            try:
                self.proc = await trio.lowlevel.open_process(
                    self.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env={**os.environ, **self.env},
                )
            except OSError as error:
                stderr.write(f"rt chaos: could not start {self.argv!r}: {error}\n".encode())
                self._ended(None)
                task_status.started()
                return
            task_status.started()
            assert self.proc.stdout is not None
            buffer = b""
            try:
                while chunk := await self.proc.stdout.receive_some(65536):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._printed(line)
            finally:
                if buffer.strip():
                    self._printed(buffer)
                with trio.CancelScope(shield=True):
                    code = await self.proc.wait()
                self._ended(code)

    async def _write(self, data: bytes) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with trio.fail_after(5):  # a client that reads no stdin must not hang the lab
                await self.proc.stdin.send_all(data)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


class PythonDriver(Driver):
    """`rt.client.driver.drive` in this process: the records of `python -m rt.client.driver`."""

    def __init__(
        self, lab_id: str, env: dict[str, str], recorder: ClientRecorder, on_record: OnRecord
    ) -> None:
        super().__init__(lab_id, env, recorder, on_record)
        self._send, self._receive = trio.open_memory_channel[bytes](10_000)
        self._scope = trio.CancelScope()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from rt.client.driver import Settings, drive

        settings = Settings.from_env(self.env)
        task_status.started()
        code: int | None = None
        with self._scope:
            try:
                code = await drive(settings, self._lines(), self._write_record)
            except Exception as error:  # a crash of the client under test is its result
                self.recorder.write({"t": time.time(), "bad": f"rt.client crashed: {error!r}"})
                code = 1
        self._ended(code)

    async def _lines(self) -> AsyncIterator[bytes]:
        async for line in self._receive:
            yield line

    def _write_record(self, record: dict[str, Any]) -> None:
        self._printed(orjson.dumps(record))

    async def _write(self, data: bytes) -> None:
        self._send.send_nowait(data)

    def _kill(self) -> None:
        self._scope.cancel()


def is_post_ack(entry: Any) -> bool:
    return isinstance(entry, Printed) and entry.kind in ("acked", "gave_up")
