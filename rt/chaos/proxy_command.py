"""`rt chaos proxy`: the fault proxy on its own, in front of a server someone else runs.

    rt chaos proxy --listen HOST:PORT --upstream HOST:PORT [--faults SPEC] [--seed N]
                   [--control HOST:PORT]

`serve_proxy` is the whole command (rt/cli.py parses the options and calls
it under `trio.run`): one listener, the schedule drawn from `--faults` and
`--seed` and applied from the start, the control API (rt/chaos/control.py)
on `--control` or an ephemeral loopback port. It prints one line saying
where everything listens, then a line as each fault starts and stops:

    rt chaos proxy: 127.0.0.1:9000 -> 127.0.0.1:8000, control http://127.0.0.1:41234 (seed 7; 12 fault windows)
    +2.481s start stall#1 conns=[3] stall:every=10s..30s:for=3s:scope=one:dir=both:p=1
    +5.481s stop stall#1 conns=[3]

Process faults (kill, pause, server) need the lab runner, which owns the
server process: the proxy alone refuses them, before it listens.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import trio

from rt.chaos.control import open_control
from rt.chaos.faults import FaultSpecError, draw_schedule, parse_faults
from rt.chaos.proxy import open_proxy, run_schedule

# Without --duration the proxy runs until stopped; its schedule is drawn this
# far ahead. (A schedule drawn longer has the same windows at the start: each
# fault's stream does not depend on the duration.)
SCHEDULE_HORIZON = 24 * 3600.0
LISTENER_LABEL = "proxy"


class HostPortError(ValueError):
    """A HOST:PORT option that does not parse: the caller's; the message says what to write."""


def parse_hostport(text: str, option: str = "address") -> tuple[str, int]:
    """`HOST:PORT` (or `[v6 address]:PORT`) to (host, port); port 0 means an ephemeral one.

    Raises HostPortError naming `option` (such as "--listen") and the text.
    """
    how = "write HOST:PORT, such as 127.0.0.1:9000 (a port from 0 to 65535; [::1]:9000 for IPv6)"
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise HostPortError(f"{option} {text!r}: put an IPv6 address in brackets; {how}")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise HostPortError(f"{option} {text!r}: {how}")
    return host, int(port)


def format_hostport(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fault_line(record: dict[str, Any], started: float) -> str:
    """One printed line for an `on_fault` record (times from the start of the command)."""
    line = (
        f"+{record['t'] - started:.3f}s {record['action']} {record['window']} "
        f"conns={record['conns']}"
    )
    return line + (f" {record['spec']}" if record["action"] == "start" else "")


async def serve_proxy(
    listen: str,
    upstream: str,
    faults: str | None,
    seed: int | None,
    control: str | None,
    duration: float | None,
) -> None:
    """Run `rt chaos proxy` until cancelled, or for `duration` seconds.

    Raises HostPortError or FaultSpecError (both ValueError: the caller's
    input) before listening on anything; OSError if an address cannot be bound.
    """
    listen_at = parse_hostport(listen, "--listen")
    upstream_at = parse_hostport(upstream, "--upstream")
    control_at = parse_hostport(control, "--control") if control else ("127.0.0.1", 0)
    specs = parse_faults(faults)
    process = sorted({s.name for s in specs if s.kind == "process"})
    if process:
        raise FaultSpecError(
            f"{', '.join(process)}: process faults need the server's process, which rt chaos "
            f"run owns; rt chaos proxy applies only network faults (cut, stall, latency, "
            f"bandwidth, slice, limit, slow_close, refuse)"
        )
    if duration is not None and duration <= 0:
        raise ValueError(
            f"duration {duration}: give a number of seconds above 0, or none to run until stopped"
        )
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)  # printed: --seed replays it
    windows = draw_schedule(specs, seed, duration or SCHEDULE_HORIZON)
    started = time.time()

    def on_fault(record: dict[str, Any]) -> None:
        if record["action"] == "hit":
            return  # one line per start and stop; new connections hit show in GET /faults
        print(fault_line(record, started), flush=True)

    async with open_proxy(upstream_at, [(LISTENER_LABEL, *listen_at)], on_fault=on_fault) as proxy:
        async with open_control(proxy, *control_at, seed=seed) as ctl:
            where = format_hostport(proxy.addresses[LISTENER_LABEL])
            print(
                f"rt chaos proxy: {where} -> {format_hostport(upstream_at)}, control "
                f"http://{format_hostport(ctl.address)} (seed {seed}; {len(windows)} fault "
                f"windows{f' over {duration:g}s' if duration else ''})",
                flush=True,
            )
            with trio.move_on_after(duration if duration is not None else math.inf):
                await run_schedule(proxy, windows, trio.current_time())
                await trio.sleep_forever()
            proxy.stop_all()  # faults started over the control API print their stop too
