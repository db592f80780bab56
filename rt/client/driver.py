"""`python -m rt.client.driver`: rt.client as a client under test of the race lab.

The driver interface of LAB.md section 2, exactly:

- environment: `RT_URL`, `RT_TOKEN`, `RT_FLOWS` (comma-separated),
  `RT_TRANSPORT` (`auto` means `ws`), `RT_LAB_ID` (for the logs);
- stdin, one JSON object a line: `{"cmd":"post","flow":F,"content":C}` and
  `{"cmd":"stop"}` (the end of stdin counts as a stop);
- stdout, one JSON object a line, flushed each: `{"view":C}`, `{"seen":E}`,
  `{"acked":C,"id":N}`, `{"gave_up":C,"error":CODE}`, and `{"stopped":true}`
  last (rt/client/recorder.py makes them);
- on stop: every post acknowledged or given up (the connection stays up
  meanwhile), `stopped`, exit 0, within 15 seconds;
- logs on stderr only (`RT_LOG` sets the level, default WARNING).

Exit status 2 when the environment is incomplete.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
import trio

from rt.client.client import connect
from rt.client.recorder import LabRecorder

STOP_TIMEOUT = 12.0  # waiting for acks; the rest of the 15 s is for closing and exiting
log = logging.getLogger("rt.client.driver")


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    flows: list[str]
    transport: str
    lab_id: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        missing = [n for n in ("RT_URL", "RT_TOKEN", "RT_FLOWS") if not env.get(n)]
        if missing:
            raise KeyError(", ".join(missing))
        transport = env.get("RT_TRANSPORT") or "auto"
        return cls(
            url=env["RT_URL"],
            token=env["RT_TOKEN"],
            flows=[f for f in env["RT_FLOWS"].split(",") if f],
            transport="ws" if transport == "auto" else transport,
            lab_id=env.get("RT_LAB_ID") or "client",
        )


class JsonLines:
    """Writes each record as one JSON line and flushes it (the lab reads as we go)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(record) + b"\n")
        self.out.flush()


async def stdin_lines() -> AsyncIterator[bytes]:
    # A thread, not a non-blocking fd: stdin may be shared with a terminal or a parent.
    while line := await trio.to_thread.run_sync(sys.stdin.buffer.readline, abandon_on_cancel=True):
        yield line


async def drive(settings: Settings, lines: AsyncIterator[bytes], write) -> int:
    recorder = LabRecorder(write)
    async with connect(
        settings.url,
        settings.token,
        settings.flows,
        settings.transport,
        listener=recorder,
        name=settings.lab_id,
        stop_timeout=STOP_TIMEOUT,
    ) as client:
        async for line in lines:
            try:
                command = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s: not a JSON command, ignored: %r", settings.lab_id, line[:200])
                continue
            kind = command.get("cmd") if isinstance(command, dict) else None
            if kind == "post":
                content = command.get("content")
                try:
                    client.post(command.get("flow"), content)
                except (TypeError, ValueError) as error:
                    log.warning("%s: a post the client cannot make: %s", settings.lab_id, error)
                    recorder.gave_up(content, "bad_request")
            elif kind == "stop":
                break
            else:
                log.warning("%s: unknown command, ignored: %r", settings.lab_id, command)
        await client.stop(STOP_TIMEOUT)
    recorder.stopped()
    return 0


def main() -> int:
    lab_id = os.environ.get("RT_LAB_ID") or "client"
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("RT_LOG", "WARNING").upper(),
        format=f"%(asctime)s {lab_id} %(name)s %(levelname)s %(message)s",
    )
    try:
        settings = Settings.from_env(dict(os.environ))
    except KeyError as error:
        print(
            f"rt.client.driver: set {error.args[0]} (LAB.md section 2: RT_URL, RT_TOKEN, "
            "RT_FLOWS, RT_TRANSPORT, RT_LAB_ID)",
            file=sys.stderr,
        )
        return 2
    out = JsonLines(sys.stdout.buffer)
    return trio.run(drive, settings, stdin_lines(), out.write)


if __name__ == "__main__":
    sys.exit(main())
