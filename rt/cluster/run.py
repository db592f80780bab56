"""`rt cluster`: a redis-server, N `rt demo --redis` nodes and a round-robin front.

For trying rt on several nodes on one machine (docs/cluster.md): open the
front's URL in two browsers and they are served by different nodes, as one
server. `kill -9` a node or the redis-server (their pids are printed) to
watch clients move and nothing get lost: this helper starts whatever died
again after a second, the way a service manager would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from rt.cluster import ClusterError
from rt.cluster.front import RoundRobin, serve_front
from rt.cluster.processes import RedisProcess, ServeProcess, free_port

RESTART_DELAY = 1.0


@dataclass
class ClusterOptions:
    nodes: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    directory: Path = Path("rt-cluster")
    redis: str | None = None  # an existing Redis, instead of starting one
    redis_server: str | None = None  # the binary to start
    node_args: list[str] = field(default_factory=list)  # given to every `rt demo`

    @property
    def sync(self) -> str:
        args = self.node_args
        for i, arg in enumerate(args):
            if arg == "--sync" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--sync="):
                return arg.split("=", 1)[1]
        return "normal"


def _redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return Path(binary).name
    words = out.stdout.split()
    version = next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "")
    return f"{words[0].lower()} {version}".strip() if words else Path(binary).name


class LocalCluster:
    """The running processes; `say` prints a line for the person who started it."""

    def __init__(self, opts: ClusterOptions, say: Callable[[str], None]) -> None:
        self.opts = opts
        self.say = say
        self.redis: RedisProcess | None = None
        self.nodes: list[ServeProcess] = []
        self.stopping = False

    def _node(self, i: int, redis_url: str) -> ServeProcess:
        opts = self.opts
        port = opts.port + 1 + i if opts.port else free_port()
        command = ["demo", "--host", "127.0.0.1", "--port", str(port), "--redis", redis_url]
        log = opts.directory / f"node-{i + 1}.log"
        return ServeProcess([*command, *opts.node_args], port=port, log=log, name=f"node {i + 1}")

    async def start(self, nursery: trio.Nursery) -> None:
        opts = self.opts
        opts.directory.mkdir(parents=True, exist_ok=True)
        if opts.redis:
            redis_url = opts.redis
        else:
            redis = self.redis = RedisProcess(
                opts.directory / "redis", binary=opts.redis_server, sync=opts.sync
            )
            await redis.start()
            fsync = "always" if opts.sync == "full" else "everysec"
            self.say(
                f"{_redis_version(redis.binary)} (pid {redis.proc.pid if redis.proc else '?'}) "
                f"on {redis.url}, appendonly yes, appendfsync {fsync}, data in {redis.data}"
            )
            redis_url = redis.url
            nursery.start_soon(self._watch_redis, redis)
        self.nodes = [self._node(i, redis_url) for i in range(opts.nodes)]
        # The first node makes the flows and users; the others then find them.
        await self._start_node(self.nodes[0])
        async with trio.open_nursery() as starting:
            for node in self.nodes[1:]:
                starting.start_soon(self._start_node, node)
        for node in self.nodes:
            nursery.start_soon(self._watch_node, node)

    async def _start_node(self, node: ServeProcess) -> None:
        await node.start()
        for name, token in node.tokens.items():
            self.say(f"created user {name}; token: {token}")
        self.say(f"{node.name} (pid {node.pid}) on {node.url}, log {node.log_path}")

    async def _watch_node(self, node: ServeProcess) -> None:
        while True:
            assert node.proc is not None
            code = await node.proc.wait()
            if self.stopping:
                return
            self.say(f"{node.name} (pid {node.pid}) exited ({_exit(code)}); starting it again")
            await trio.sleep(RESTART_DELAY)
            try:
                await node.start()
            except ClusterError as error:
                self.say(f"{error}; trying again")
                continue
            self.say(f"{node.name} (pid {node.pid}) on {node.url} again")

    async def _watch_redis(self, redis: RedisProcess) -> None:
        while True:
            assert redis.proc is not None
            code = await redis.proc.wait()
            if self.stopping:
                return
            self.say(f"redis (pid {redis.proc.pid}) exited ({_exit(code)}); starting it again")
            await trio.sleep(RESTART_DELAY)
            await redis.start()
            self.say(f"redis (pid {redis.proc.pid}) on {redis.url} again, from its AOF")

    async def stop(self) -> None:
        """Every node (SIGTERM, in parallel), then Redis."""
        self.stopping = True
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(node.stop)
        for node in self.nodes:
            node.close()
        if self.redis is not None:
            await self.redis.stop()


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


async def run_cluster(opts: ClusterOptions, say: Callable[[str], None]) -> None:
    """Run the cluster until SIGINT or SIGTERM, then stop every process it started."""
    cluster = LocalCluster(opts, say)
    try:
        async with trio.open_nursery() as nursery:
            await cluster.start(nursery)
            listeners = await trio.open_tcp_listeners(opts.port, host=opts.host)
            port = listeners[0].socket.getsockname()[1]
            balancer = RoundRobin([("127.0.0.1", n.port) for n in cluster.nodes], 2.0)
            await nursery.start(serve_front, listeners, balancer)
            say(
                f"serving on http://{opts.host}:{port} (round robin over {len(cluster.nodes)} "
                f"node{'s' if len(cluster.nodes) != 1 else ''}); Ctrl-C stops them all"
            )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop()


def main(opts: ClusterOptions) -> int:
    """`rt cluster`: 0 after Ctrl-C, 2 (with one line) when the cluster cannot start."""

    def say(line: str) -> None:
        if line.startswith("created user"):
            print(line, flush=True)  # as `rt serve` says it
        elif line.startswith("serving on"):
            print(f"rt cluster {line}", flush=True)
        else:
            print(f"rt cluster: {line}", flush=True)

    try:
        trio.run(run_cluster, opts, say)
    except (ClusterError, OSError, BaseExceptionGroup) as error:
        found = _cluster_error(error)
        if found is None:
            raise
        print(f"rt cluster: {found}", file=sys.stderr)
        return 2
    return 0


def _cluster_error(error: BaseException) -> BaseException | None:
    """The ClusterError (or the OSError of a port in use) in `error`, groups included."""
    if isinstance(error, ClusterError | OSError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _cluster_error(inner)
        if found is not None:
            return found
    return None
