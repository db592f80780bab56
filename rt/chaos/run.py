"""`rt chaos run`: start rt and the fault proxy, drive the clients, fault them, judge.

The phases of one run (LAB.md section 1), every time recorded in run.json:

1. `started`: `rt serve` on a fresh database in the run directory (unless
   `--server URL`), one proxy listener per client, the clients started with
   `RT_URL` pointing at their own listener.
2. For `--duration` seconds the workload posts (`--rate` a second in all,
   each post to a client and a flow drawn from the seed, every content
   unique) and the faults of `--faults` happen on the schedule drawn from
   the seed: network faults in the proxy, `kill` and `pause` to the
   server process, `server` as `rt serve --chaos` for the whole period.
3. `faults_stopped`: every fault ends (the proxy forwards cleanly again, a
   paused server continues, `--chaos` is switched off with SIGUSR2). The
   lab waits for quiet: until every client has shown the last event of its
   flows, or the catch-up limit (plus a margin) has passed.
4. `stopped`: each client gets `stop` and has 15 seconds to finish.
5. The server's log is read (straight from the server, not through the
   proxy) into history.jsonl; the checker judges (rt/chaos/check.py) and
   writes report.json, report.md and timeline.png.

The same seed and arguments give the same schedule and workload; the
report prints the command line that reproduces the run. Exit status: 0
every invariant held, 1 one was violated, 2 the lab could not run.
"""

from __future__ import annotations

import random
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rt.chaos.check import check_run
from rt.chaos.drivers import Driver, ProcessDriver, PythonDriver
from rt.chaos.faults import FaultSpec, FaultSpecError, FaultWindow, draw_schedule, parse_faults
from rt.chaos.http import get_json, post_json, read_log
from rt.chaos.progress import Progress
from rt.chaos.proxy import open_proxy, run_schedule
from rt.chaos.records import (
    ClientRecorder,
    ClientSpec,
    RecordWriter,
    RunInfo,
    load_run,
    write_history,
    write_run_info,
)
from rt.chaos.report import verdict_table, write_report
from rt.chaos.server import LabError, RedisProcess, RtServer, wait_healthy

TRANSPORTS = ("ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp")
BUILTINS = ("python", "browser")
DEFAULT_FAULTS = "cut,stall,kill"
QUIET_MARGIN = 5.0  # waiting for quiet: the catch-up limit, then this much more
READER = "lab-reader"  # the user the lab itself reads with (heads, the log)


@dataclass(frozen=True)
class LabOptions:
    """The arguments of `rt chaos run` (LAB.md section 1)."""

    client: str | None = None
    builtin: str | None = None
    clients: int = 10
    flows: tuple[str, ...] = ("lab-a", "lab-b")
    transport: str = "auto"
    duration: float = 30.0
    rate: float = 10.0
    faults: str = DEFAULT_FAULTS
    seed: int | None = None
    server: str | None = None
    server_args: str = ""
    out: str | None = None
    quick: bool = False
    catch_up: float = 10.0
    nodes: int = 1

    def effective(self) -> LabOptions:
        """With the seed drawn and `--quick`'s small run applied."""
        opts = self
        if opts.seed is None:
            opts = replace(opts, seed=secrets.randbelow(1 << 31))
        if opts.quick:
            opts = replace(
                opts,
                clients=min(opts.clients, 4),
                duration=min(opts.duration, 6.0),
                rate=min(opts.rate, 5.0),
                catch_up=min(opts.catch_up, 8.0),
            )
        if opts.client is None and opts.builtin is None:
            opts = replace(opts, builtin="python")
        return opts

    def command(self) -> str:
        """The one command line that reproduces this run."""
        parts = ["rt", "chaos", "run"]
        if self.client is not None:
            parts += ["--client", self.client]
        else:
            parts += ["--builtin", self.builtin or "python"]
        parts += [
            "--clients",
            str(self.clients),
            "--flows",
            ",".join(self.flows),
            "--transport",
            self.transport,
            "--duration",
            f"{self.duration:g}",
            "--rate",
            f"{self.rate:g}",
            "--faults",
            self.faults,
            "--seed",
            str(self.seed),
        ]
        if self.nodes != 1:
            parts += ["--nodes", str(self.nodes)]
        if self.catch_up != 10.0:
            parts += ["--catch-up", f"{self.catch_up:g}"]
        if self.server:
            parts += ["--server", self.server]
        if self.server_args:
            parts += ["--server-args", self.server_args]
        return shlex.join(parts)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Post:
    at: float  # seconds after the start
    client: int
    flow: str
    content: str


def draw_workload(
    seed: int, clients: int, flows: Sequence[str], rate: float, duration: float, start: float = 1.0
) -> list[Post]:
    """The posts of a run: a Poisson stream at `rate`, each to a random client and flow."""
    rng = random.Random(f"rt-chaos-workload:{seed}")
    posts: list[Post] = []
    t = start
    while rate > 0 and t < duration:
        posts.append(
            Post(
                round(t, 3),
                rng.randrange(clients),
                rng.choice(list(flows)),
                f"lab-{seed}-{len(posts):06d}",
            )
        )
        t += rng.expovariate(rate)
    return posts


def transport_of(index: int, transport: str) -> str:
    return TRANSPORTS[index % len(TRANSPORTS)] if transport == "mix" else transport


@dataclass
class Lab:
    """One run in progress (see the module docstring)."""

    opts: LabOptions
    run_dir: Path
    specs: list[FaultSpec]
    specs_server: FaultSpec | None
    servers: list[RtServer] = field(default_factory=list)  # one, or a cluster's nodes
    redis: RedisProcess | None = None
    url: str = ""
    drivers: list[Driver] = field(default_factory=list)
    progress: Progress | None = None
    started: float = 0.0
    faults_stopped: float | None = None
    stopped: float | None = None
    _process_lock: trio.Lock = field(default_factory=trio.Lock)

    # -- process faults ------------------------------------------------------------------

    @property
    def server(self) -> RtServer | None:
        return self.servers[0] if self.servers else None

    def target(self, window: FaultWindow) -> RtServer:
        """The node a process fault hits: drawn from the window's seed (one of a cluster)."""
        return self.servers[random.Random(window.seed).randrange(len(self.servers))]

    async def process_fault(self, window: FaultWindow, action: str) -> None:
        if not self.servers:
            return
        server = self.target(window)
        async with self._process_lock:  # a kill waits for the restart before it
            if self.faults_stopped is not None:
                return
            if window.name == "kill" and action == "start":
                # Shielded: the end of the fault period must not leave the server dead.
                with trio.CancelScope(shield=True):
                    await server.kill_and_restart()
            elif window.name == "pause":
                if action == "start":
                    server.pause()
                else:
                    server.resume()

    async def end_faults(self, proxy: Any) -> None:
        async with self._process_lock:
            self.faults_stopped = time.time()
            proxy.stop_all()
            for server in self.servers:
                server.resume()
                if self.specs_server is not None:
                    server.stop_chaos()


def server_chaos(spec: FaultSpec | None) -> str | None:
    """The `rt serve --chaos` SPEC for the lab's `server` fault."""
    if spec is None:
        return None
    lo, hi = spec.every
    return f"all:every={max(0.1, (lo + hi) / 2):g}s"


async def run_lab(opts: LabOptions) -> int:
    opts = opts.effective()
    assert opts.seed is not None
    try:
        specs = parse_faults(opts.faults)
    except FaultSpecError as error:
        raise LabError(f"--faults: {error}") from None
    server_spec = next((s for s in specs if s.name == "server"), None)
    if opts.server and any(s.kind == "process" for s in specs):
        raise LabError(
            "kill, pause and server faults act on the rt serve the lab starts; "
            "drop them, or drop --server"
        )
    run_dir = Path(opts.out or Path("chaos") / time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    lab = Lab(opts, run_dir, specs, server_spec)
    lab_ids = [f"c{i + 1:03d}" for i in range(opts.clients)]
    users = [f"lab-{lab_id}" for lab_id in lab_ids]
    tokens = await _start_server(lab, users + [READER])
    schedule = draw_schedule([s for s in specs if s.name != "server"], opts.seed, opts.duration)
    workload = draw_workload(opts.seed, opts.clients, opts.flows, opts.rate, opts.duration)
    specs_json = [
        ClientSpec(lab_id, user, transport_of(i, opts.transport), opts.flows)
        for i, (lab_id, user) in enumerate(zip(lab_ids, users, strict=True))
    ]
    lab.started = time.time()
    info = RunInfo(
        seed=opts.seed,
        command=opts.command(),
        args=opts.to_json(),
        started=lab.started,
        faults_stopped=None,
        stopped=None,
        ended=None,
        flows=opts.flows,
        clients=tuple(specs_json),
        catch_up_limit=opts.catch_up,
    )
    write_run_info(run_dir, info)
    progress = lab.progress = Progress(lab_ids, len(workload), opts.duration)
    connections = RecordWriter(run_dir / "connections.jsonl")
    faults_file = RecordWriter(run_dir / "faults.jsonl")

    def on_connection(record: dict[str, Any]) -> None:
        connections.write(record)
        progress.connection(record)

    def on_fault(record: dict[str, Any]) -> None:
        faults_file.write(record)
        progress.fault(record)

    try:
        upstream: Any = (
            [("127.0.0.1", node.port) for node in lab.servers]
            if lab.servers
            else _hostport(opts.server)
        )
        listeners = [(lab_id, "127.0.0.1", 0) for lab_id in lab_ids]
        async with open_proxy(
            upstream, listeners, on_connection=on_connection, on_fault=on_fault
        ) as proxy:
            for window in schedule:
                faults_file.write(
                    {
                        "window": {
                            **window.to_json(),
                            "name": window.name,
                            "start": lab.started + window.start,
                            "end": lab.started + window.end,
                        }
                    }
                )
            if server_spec is not None:
                faults_file.write(
                    {
                        "window": {
                            "name": "server",
                            "start": lab.started,
                            "end": lab.started + opts.duration,
                            "params": {"chaos": server_chaos(server_spec)},
                        }
                    }
                )
            await _drive(lab, proxy, lab_ids, specs_json, tokens, schedule, workload)
        # The server's log, read straight from it (not through the proxy).
        history = await read_log(
            lab.url, tokens[READER], list(opts.flows), "lab-history-" + secrets.token_hex(8)
        )
        write_history(run_dir, history)
    finally:
        connections.close()
        faults_file.close()
        progress.finish()
        for node in lab.servers:
            await node.stop()
            node.close()
        if lab.redis is not None:
            await lab.redis.stop()
        write_run_info(
            run_dir,
            replace(
                info, faults_stopped=lab.faults_stopped, stopped=lab.stopped, ended=time.time()
            ),
        )
    return judge(run_dir)


def judge(run_dir: Path) -> int:
    """Check the recorded run, write the report files, print the verdicts; the exit."""
    result = check_run(load_run(run_dir))
    write_report(result, run_dir)
    print(verdict_table(result))
    return result.exit_code


async def _start_server(lab: Lab, users: list[str]) -> dict[str, str]:
    opts = lab.opts
    tokens: dict[str, str] = {}
    if opts.server:
        lab.url = opts.server.rstrip("/")
        if not await wait_healthy(lab.url, 10):
            raise LabError(f"--server {opts.server}: no answer from /health")
        tag = secrets.token_hex(3)
        for user in users:
            status, body = await post_json(f"{lab.url}/auth/guest", {"name": f"{user}-{tag}"})
            if status != 201:
                raise LabError(
                    f"--server {opts.server}: POST /auth/guest answered {status}; "
                    "run it with --guests (the lab makes one guest per client)"
                )
            tokens[user] = body["token"]
        return tokens
    redis = None
    if opts.nodes > 1:
        redis = lab.redis = RedisProcess(lab.run_dir / "redis")
        await redis.start()
    for i in range(opts.nodes):
        node = RtServer(
            lab.run_dir,
            users=users,
            flows=list(opts.flows),
            extra_args=shlex.split(opts.server_args),
            chaos=server_chaos(lab.specs_server),
            seed=(opts.seed or 0) + i,
            redis=redis.url if redis else None,
            name="server" if opts.nodes == 1 else f"node-{i}",
        )
        lab.servers.append(node)
        await node.start()
        tokens.update(node.tokens)
    server = lab.servers[0]
    lab.url = server.url
    server.tokens = tokens
    missing = [u for u in users if u not in server.tokens]
    if missing:
        raise LabError(
            f"rt serve made no token for {missing[0]}: is {lab.run_dir / 'rt.db'} "
            "a fresh database? (use a new --out directory)"
        )
    return dict(server.tokens)


def _hostport(url: str | None) -> tuple[str, int]:
    assert url is not None
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host or "127.0.0.1", int(port or 80)


async def _drive(
    lab: Lab,
    proxy: Any,
    lab_ids: list[str],
    specs: list[ClientSpec],
    tokens: dict[str, str],
    schedule: list[FaultWindow],
    workload: list[Post],
) -> None:
    opts = lab.opts
    progress = lab.progress
    assert progress is not None
    browser_host: Any = None  # the Chromium of --builtin browser
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run)
        for lab_id, spec in zip(lab_ids, specs, strict=True):
            host, port = proxy.addresses[lab_id]
            env = {
                "RT_URL": f"http://{host}:{port}",
                "RT_TOKEN": tokens[spec.user],
                "RT_FLOWS": ",".join(spec.flows),
                "RT_TRANSPORT": spec.transport,
                "RT_LAB_ID": lab_id,
            }
            recorder = ClientRecorder(lab.run_dir, lab_id)
            driver: Driver
            if opts.client is not None:
                driver = ProcessDriver(
                    opts.client,
                    lab_id,
                    env,
                    recorder,
                    progress.record,
                    lab.run_dir / "clients" / f"{lab_id}.stderr.log",
                )
            elif opts.builtin == "browser":
                from rt.chaos.browser import BrowserDriver, BrowserHost

                if browser_host is None:
                    browser_host = BrowserHost(lab.run_dir / "browser.log")
                    await browser_host.ensure_started(nursery)
                driver = BrowserDriver(browser_host, lab_id, env, recorder, progress.record)
            else:
                driver = PythonDriver(lab_id, env, recorder, progress.record)
            lab.drivers.append(driver)
            await nursery.start(driver.run)
        t0 = trio.current_time()
        # A client that never started is the lab's failure (exit 2); a browser is slow.
        with trio.move_on_after(30 if browser_host is not None else 10):
            while not all(d.printed_anything or d.exited.is_set() for d in lab.drivers):
                await trio.sleep(0.05)
        dead = [d.lab_id for d in lab.drivers if not d.printed_anything]
        if dead:
            nursery.cancel_scope.cancel()
            raise LabError(
                f"client {dead[0]} printed nothing after its start (see "
                f"{lab.run_dir / 'clients'}): is the client command right?"
            )
        async with trio.open_nursery() as faulting:
            faulting.start_soon(_post_all, lab, workload, t0)
            faulting.start_soon(
                partial(run_schedule, proxy, schedule, t0, on_process_fault=lab.process_fault)
            )
            await trio.sleep_until(t0 + opts.duration)
            faulting.cancel_scope.cancel()
        await lab.end_faults(proxy)
        progress.phase = "catching up"
        for node in lab.servers:
            await wait_healthy(node.url, 30)
        await _wait_for_quiet(lab, tokens[READER])
        lab.stopped = time.time()
        progress.phase = "stopping"
        async with trio.open_nursery() as stopping:
            for driver in lab.drivers:
                stopping.start_soon(driver.stop)
        if browser_host is not None:
            await browser_host.close()
        nursery.cancel_scope.cancel()


async def _post_all(lab: Lab, workload: list[Post], t0: float) -> None:
    for post in workload:
        await trio.sleep_until(t0 + post.at)
        driver = lab.drivers[post.client]
        await driver.send({"cmd": "post", "flow": post.flow, "content": post.content})


async def _wait_for_quiet(lab: Lab, reader_token: str) -> None:
    """Until no post is in flight and every client shows the last event of its flows, or
    the catch-up limit (plus a margin) has passed."""
    progress = lab.progress
    assert progress is not None
    deadline = trio.current_time() + lab.opts.catch_up + QUIET_MARGIN
    while trio.current_time() < deadline:
        heads = {}
        for flow in lab.opts.flows:
            try:
                status, page = await get_json(
                    f"{lab.url}/flows/{flow}/messages?limit=1", token=reader_token, timeout=5
                )
            except OSError:
                status, page = 0, None
            if status != 200:
                break
            heads[flow] = page["messages"][-1]["id"] if page["messages"] else 0
        else:
            target = max(heads.values(), default=0)
            settled = progress.acked + progress.gave_up >= progress.sent  # no post in flight
            if settled and all(progress.last_seen.get(d.lab_id, 0) >= target for d in lab.drivers):
                return
        await trio.sleep(0.5)


def main(opts: LabOptions) -> int:
    """`rt chaos run`: run, print the verdict table and the reproducing command; the exit."""
    try:
        return trio.run(run_lab, opts)
    except (LabError, BaseExceptionGroup) as error:
        lab_error = _lab_error(error)
        if lab_error is None:
            raise
        print(f"rt chaos run: {lab_error}", file=sys.stderr)
        return 2


def _lab_error(error: BaseException) -> LabError | None:
    """The LabError in `error` (raised inside nurseries, it comes in exception groups)."""
    if isinstance(error, LabError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _lab_error(inner)
            if found is not None:
                return found
    return None
