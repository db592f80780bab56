"""The `rt` command (PROTOCOL.md section 8). `python -m rt` is the same.

Every setting of `rt serve` is a flag and an `RT_*` environment variable
(flag wins); a flag given twice keeps the last value, repeatable flags
(`--allow-origin`, `--user`, `--flow`) accumulate.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from rt.config import LIMIT_TYPES, Config
from rt.core.errors import RtError
from rt.core.grammar import check_flow, check_user
from rt.store import Directory, open_directory

LIMIT_HELP = {
    "ops_rate": "operations a second per user",
    "ops_burst": "burst of operations per user",
    "poll_rate": "polls a second per polling session",
    "max_body": "bytes in a request body or WebSocket frame",
    "max_flows": "flows per stream",
    "max_streams": "open streams per user (one more evicts the oldest)",
    "buffer_objects": "objects buffered per stream before `lagging`",
    "buffer_bytes": "bytes buffered per stream before `lagging`",
    "heartbeat": "seconds between heartbeats",
    "write_timeout": "seconds a write may block before the stream is dropped",
    "poll_timeout": "seconds a poll waits",
    "poll_linger": "at most this many seconds a poll gathers a burst before it answers",
    "poll_mailbox": "ephemeral events kept per polling session",
    "rotate_bytes": "bytes before xhr, multipart and htmlfile responses rotate",
    "presence_grace": "seconds before going offline is announced",
    "window": "recent events kept in memory",
    "guest_rate": "guest accounts a minute per client address",
}


class _ConnectionCap(click.ParamType):
    """`auto` (follow the open-file limit) or a number of connections (0: no cap)."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or value == "auto":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < 0:
            self.fail(f"{value!r} is neither `auto` nor a number of connections >= 0", param, ctx)
        return number


CONNECTION_OPTIONS = [
    click.option(
        "--keep-alive-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=5.0,
        show_default=True,
        envvar="RT_KEEP_ALIVE_TIMEOUT",
        help="seconds an idle kept-alive HTTP connection stays open",
    ),
    click.option(
        "--head-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        envvar="RT_HEAD_TIMEOUT",
        help="seconds a new connection has to send its first request head",
    ),
    click.option(
        "--max-head",
        type=click.IntRange(min=1024),
        default=16 * 1024,
        show_default=True,
        envvar="RT_MAX_HEAD",
        help="bytes in a request head (request line and headers)",
    ),
    click.option(
        "--max-connections",
        type=_ConnectionCap(),
        default="auto",
        show_default=True,
        envvar="RT_MAX_CONNECTIONS",
        help="open connections at once; auto: the open-file limit less 64; 0: no cap",
    ),
    click.option(
        "--max-connections-per-address",
        type=click.IntRange(min=0),
        default=1000,
        show_default=True,
        envvar="RT_MAX_CONNECTIONS_PER_ADDRESS",
        help="open connections from one client address (0: no cap; behind a "
        "reverse proxy every connection comes from the proxy's address)",
    ),
]


def _limit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for name, kind in reversed(LIMIT_TYPES.items()):
        flag = "--" + name.replace("_", "-")
        default = getattr(Config(), name)
        func = click.option(
            flag,
            name,
            type=click.FloatRange(min=0, min_open=True) if kind is float else click.IntRange(min=1),
            default=default,
            show_default=True,
            envvar="RT_" + name.upper(),
            help=LIMIT_HELP.get(name, ""),
        )(func)
    return func


db_option = click.option(
    "--db",
    default="rt.db",
    show_default=True,
    envvar="RT_DB",
    help="SQLite file, or :memory: for a store that lives in memory",
)


redis_option = click.option(
    "--redis",
    default=None,
    envvar="RT_REDIS",
    metavar="URL",
    help="run as a node of a cluster on this Redis or Valkey (redis://[:pw@]host:port/db, "
    "unix:///path?db=N); without it, one process on --db",
)


@click.group()
@click.version_option(package_name="rt")
def main() -> None:
    """rt: a self-hosted realtime server. Start with `rt serve`."""


def _check_chaos_spec(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is not None:
        from rt.service.chaos import ChaosSpecError, parse_spec

        try:
            parse_spec(value)
        except ChaosSpecError as error:
            raise click.BadParameter(str(error)) from None
    return value


def _server_options(*, guests: bool, flows: tuple[str, ...]) -> Callable[..., Any]:
    """Every option of `rt serve`, with the given defaults for guests and flows.

    `rt serve` and `rt demo` share this list so that the demo takes every
    setting, as a flag and as an `RT_*` variable (issue 9); only these two
    defaults differ.
    """
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, envvar="RT_HOST"),
        click.option(
            "--port",
            default=8000,
            show_default=True,
            type=click.IntRange(0, 65535),
            envvar="RT_PORT",
        ),
        db_option,
        redis_option,
        click.option(
            "--redis-prefix",
            default="rt",
            show_default=True,
            envvar="RT_REDIS_PREFIX",
            help="the prefix of every Redis key rt uses (several rt datasets in one Redis)",
        ),
        click.option(
            "--guests/--no-guests",
            default=guests,
            show_default=True,
            envvar="RT_GUESTS",
            help="let anyone make a guest account with POST /auth/guest",
        ),
        click.option(
            "--allow-origin",
            multiple=True,
            envvar="RT_ALLOW_ORIGIN",
            help="a browser origin allowed besides the server's own (repeatable)",
        ),
        click.option(
            "--sync",
            type=click.Choice(["normal", "full"]),
            default="normal",
            show_default=True,
            envvar="RT_SYNC",
            help="normal: acknowledged events survive a crash; full: also a power loss",
        ),
        click.option(
            "--metrics-token",
            default=None,
            envvar="RT_METRICS_TOKEN",
            help="bearer token for /metrics (without one, loopback clients only)",
        ),
        click.option(
            "--user",
            "users",
            multiple=True,
            envvar="RT_USER",
            help="create this user if missing (repeatable)",
        ),
        click.option(
            "--flow",
            "flows",
            multiple=True,
            envvar="RT_FLOW",
            default=flows,
            show_default=bool(flows),
            help="create this flow if missing (repeatable)",
        ),
        click.option(
            "--chaos",
            "chaos",
            default=None,
            envvar="RT_CHAOS",
            metavar="SPEC",
            callback=_check_chaos_spec,
            help="race lab: force rare legal answers at random (`all`, or kinds "
            "such as lagging,429:every=3s; docs/lab.md). Never for real users",
        ),
        click.option(
            "--chaos-seed",
            type=int,
            default=None,
            envvar="RT_CHAOS_SEED",
            help="race lab: the seed of --chaos's random choices",
        ),
        click.option(
            "--delivery-record",
            type=click.Path(dir_okay=False),
            default=None,
            envvar="RT_DELIVERY_RECORD",
            help="race lab: append a JSON line per batch each stream delivers",
        ),
        click.option(
            "--bench-asgi-only",
            is_flag=True,
            hidden=True,
            help="benchmarks only: no fast paths (every byte through hypercorn and Quart)",
        ),
    ]

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        func = _limit_options(func)
        for option in reversed(options + CONNECTION_OPTIONS):
            func = option(func)
        return func

    return apply


@main.command()
@_server_options(guests=False, flows=())
def serve(**options: Any) -> None:
    """Serve rt until SIGTERM or SIGINT."""
    _serve_from_options(options)


DEMO_FLOWS = ("general", "random")


@main.command()
@_server_options(guests=True, flows=DEMO_FLOWS)
def demo(**options: Any) -> None:
    """Serve the demo chat: `rt serve` with guests on and flows `general` and `random`."""
    _serve_from_options(options)


def _serve_from_options(options: dict[str, Any]) -> None:
    asgi_only = options.pop("bench_asgi_only", False)
    if options.get("redis"):
        require_extra("redis", "rt serve --redis")
    _serve(_config(options).replace(fast_paths=not asgi_only))


def _config(options: dict[str, Any]) -> Config:
    for name in ("users", "flows"):
        options[name] = tuple(options.get(name, ()))
    for name in options.get("users", ()):
        check_or_exit(check_user, name)
    for name in options.get("flows", ()):
        check_or_exit(check_flow, name)
    options["allow_origin"] = tuple(o.rstrip("/") for o in options.get("allow_origin", ()))
    return Config(**options)


def check_or_exit(check: Callable[[str], str], value: str) -> None:
    try:
        check(value)
    except RtError as error:
        raise click.BadParameter(error.message) from None


def _serve(config: Config) -> None:
    from rt.web.server import run

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def on_ready(server: Any) -> None:
        for name, token in server.seeded:
            click.echo(f"created user {name}; token: {token}")
        store = "redis" if config.redis else config.db
        click.echo(f"rt serving on {server.url} (store: {store})", err=False)
        sys.stdout.flush()

    try:
        trio.run(partial(run, config, on_ready=on_ready))
    except BaseException as error:  # noqa: BLE001 (only a settings error is ours to word)
        settings = _find(error, "RedisSettingsError") or _find(error, "ConnectionError")
        if settings is None or not config.redis:
            raise
        click.echo(f"rt serve --redis: {settings}", err=True)
        sys.exit(2)


def _find(error: BaseException, name: str) -> BaseException | None:
    """The exception called `name` in `error` (inside exception groups too)."""
    if type(error).__name__ == name:
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _find(inner, name)
        if found is not None:
            return found
    return None


# -- optional dependencies ----------------------------------------------------------------

# What each extra of pyproject.toml brings that a subcommand imports. A command
# that needs one checks it first (`require_extra`), so a plain install gets one
# line naming the install command instead of a traceback (issue 9).
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("matplotlib", "rich"),
    "browser": ("playwright",),
    "redis": ("coredis",),
}


def require_extra(extra: str, command: str) -> None:
    """Exit 2 with one line on stderr unless every module of `extra` imports."""
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        click.echo(
            f"{command} needs {', '.join(missing)} (the {extra} extra): in the rt "
            f"checkout, run  pip install -e '.[{extra}]'",
            err=True,
        )
        sys.exit(2)


# -- benchmarks -------------------------------------------------------------------------

BENCH_SUBCOMMANDS = ("latency", "fanout", "connections", "storm", "ingest", "cluster")


@main.group()
def bench() -> None:
    """Benchmarks (issue 5): each starts its own `rt serve` on 127.0.0.1."""


BENCH_HELP = {
    "latency": "Round trip of a post and its echo on all seven transports, vs a TCP floor.",
    "fanout": "N subscribers, one publisher at R/s: delivery, latency, server CPU per event.",
    "connections": "Server memory per idle WebSocket and SSE connection.",
    "storm": "Every client cut at once reconnects with resume: catch-up time, loss, duplicates.",
    "ingest": "Acknowledged posts a second over WebSocket and HTTP, SQLite and memory stores.",
    "cluster": "Fan-out through 1 and 2 --redis nodes (CPU per event per node, Redis per post), "
    "and ingest with 2 ms to Redis; needs a redis-server.",
}


def _bench_command(name: str) -> None:
    @bench.command(name, help=BENCH_HELP[name])
    @click.option("--quick", is_flag=True, help="a smoke run under 30 s (figures mean nothing)")
    @click.option(
        "--out",
        type=click.Path(file_okay=False),
        default=None,
        help="directory for results (default: bench/results)",
    )
    def command(quick: bool, out: str | None) -> None:
        require_extra("bench", "rt bench")
        if name == "cluster":
            require_extra("redis", "rt bench cluster")
        from rt import bench as suite  # lazily: matplotlib and rich are the bench extra

        suite.run(name, quick, out)


for _name in BENCH_SUBCOMMANDS:
    _bench_command(_name)


@bench.command("all")
@click.option("--quick", is_flag=True, help="a smoke run of every subcommand")
@click.option("--out", type=click.Path(file_okay=False), default=None)
def bench_all(quick: bool, out: str | None) -> None:
    """Run every single-node benchmark in turn (not `cluster`: it needs the redis extra
    and a redis-server; run `rt bench cluster` on its own)."""
    require_extra("bench", "rt bench")
    from rt import bench as suite

    for name in BENCH_SUBCOMMANDS:
        if name != "cluster":
            suite.run(name, quick, out)


# -- a local cluster ---------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--nodes", default=2, show_default=True, type=click.IntRange(1, 32), help="rt nodes to run"
)
@click.option("--host", default="127.0.0.1", show_default=True, help="the front's address")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="the front's port (the nodes take the next ones; 0: free ports)",
)
@click.option(
    "--dir",
    "directory",
    default="rt-cluster",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Redis's data and the nodes' logs",
)
@click.option("--redis", default=None, help="use this Redis or Valkey instead of starting one")
@click.option(
    "--redis-server",
    default=None,
    envvar="RT_REDIS_SERVER",
    help="the redis-server (or valkey-server) to start (default: from the PATH)",
)
@click.argument("node_args", nargs=-1, type=click.UNPROCESSED)
def cluster(
    nodes: int,
    host: str,
    port: int,
    directory: str,
    redis: str | None,
    redis_server: str | None,
    node_args: tuple[str, ...],
) -> None:
    """Try rt on several nodes: a redis-server, N `rt demo --redis` nodes behind a
    round-robin front (docs/cluster.md). Options after `--` go to every node."""
    require_extra("redis", "rt cluster")
    from rt.cluster.run import ClusterOptions
    from rt.cluster.run import main as run_cluster

    opts = ClusterOptions(
        nodes=nodes,
        host=host,
        port=port,
        directory=Path(directory),
        redis=redis,
        redis_server=redis_server,
        node_args=list(node_args),
    )
    sys.exit(run_cluster(opts))


# -- the race lab ------------------------------------------------------------------------


@main.group()
def chaos() -> None:
    """The race lab: put realtime clients through faults and judge them (docs/lab.md)."""


@chaos.command("run")
@click.option(
    "--client",
    "client",
    default=None,
    metavar="CMD",
    help="the client under test: a command, one process per client (LAB.md 2)",
)
@click.option(
    "--builtin",
    type=click.Choice(["python", "browser"]),
    default=None,
    help="a built-in client instead: rt.client, or rt.js in headless Chromium",
)
@click.option("--clients", type=click.IntRange(1, 2000), default=10, show_default=True)
@click.option(
    "--flows",
    default="lab-a,lab-b",
    show_default=True,
    help="the flows every client follows, comma-separated",
)
@click.option(
    "--transport",
    default="auto",
    show_default=True,
    type=click.Choice(
        ["auto", "mix", "ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"]
    ),
    help="what RT_TRANSPORT says; mix spreads the clients over all seven",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="seconds of posts and faults",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="posts a second, in all",
)
@click.option(
    "--faults",
    default="cut,stall,kill",
    show_default=True,
    metavar="SPEC",
    help="LAB.md 4: e.g. cut,stall:every=10s:for=3s,latency:delay=400ms",
)
@click.option("--seed", type=int, default=None, help="the seed (drawn and printed if omitted)")
@click.option(
    "--server",
    default=None,
    metavar="URL",
    help="use a running rt server (with --guests) instead of starting one",
)
@click.option("--server-args", default="", help="more arguments for the rt serve it starts")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="the run directory (default chaos/<timestamp>)",
)
@click.option(
    "--catch-up",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="seconds a client has to catch up once faults stop",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="rt serve nodes: more than 1 runs a cluster on a Redis of its own "
    "(redis-server), the proxy spreading connections over the nodes",
)
@click.option("--quick", is_flag=True, help="a smoke run of under 30 seconds")
def chaos_run(**options: Any) -> None:
    """Run clients through the fault proxy in front of rt and check every invariant."""
    from rt.chaos.run import LabOptions
    from rt.chaos.run import main as run_main

    if options["client"] and options["builtin"]:
        raise click.UsageError("give --client or --builtin, not both")
    if options["builtin"] == "browser":
        require_extra("browser", "rt chaos run --builtin browser")
    if options["nodes"] > 1:
        require_extra("redis", "rt chaos run --nodes")
    flows = tuple(f for f in options.pop("flows").split(",") if f)
    for name in flows:
        check_or_exit(check_flow, name)
    sys.exit(run_main(LabOptions(flows=flows, **options)))


@chaos.command("proxy")
@click.option("--listen", required=True, metavar="HOST:PORT", help="where clients connect")
@click.option("--upstream", required=True, metavar="HOST:PORT", help="the rt server")
@click.option("--faults", default=None, metavar="SPEC", help="faults on a schedule (LAB.md 4)")
@click.option("--seed", type=int, default=None)
@click.option(
    "--control",
    default=None,
    metavar="HOST:PORT",
    help="the control API's address (default: an ephemeral loopback port)",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="seconds of scheduled faults (default: a day)",
)
def chaos_proxy(
    listen: str,
    upstream: str,
    faults: str | None,
    seed: int | None,
    control: str | None,
    duration: float | None,
) -> None:
    """Run the fault proxy alone, with a control API to break connections by hand."""
    from rt.chaos.faults import FaultSpecError
    from rt.chaos.proxy_command import HostPortError, serve_proxy

    try:
        trio.run(serve_proxy, listen, upstream, faults, seed, control, duration)
    except (FaultSpecError, HostPortError, ValueError) as error:
        click.echo(f"rt chaos proxy: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


@chaos.command("check")
@click.argument("directory", type=click.Path())
def chaos_check(directory: str) -> None:
    """Re-check a recorded run's history offline; rewrite its report."""
    from rt.chaos.report import check_dir

    sys.exit(check_dir(directory))


# -- users and flows --------------------------------------------------------------


@asynccontextmanager
async def _directory_for(db: str, redis: str | None) -> AsyncIterator[Directory]:
    if redis:
        require_extra("redis", "rt --redis")
        from rt.backend.redis import open_redis_directory

        async with open_redis_directory(redis) as directory:
            yield directory
        return
    async with open_directory(db) as directory:
        yield directory


def _with_directory(
    db: str, job: Callable[[Directory], Awaitable[Any]], redis: str | None = None
) -> Any:
    async def main() -> Any:
        async with _directory_for(db, redis) as directory:
            try:
                return await job(directory)
            except RtError as error:
                return error

    outcome = trio.run(main)
    if isinstance(outcome, RtError):
        raise click.ClickException(outcome.message)
    return outcome


@main.group()
def user() -> None:
    """Manage users and their tokens."""


@user.command("add")
@click.argument("name")
@db_option
@redis_option
def user_add(name: str, db: str, redis: str | None) -> None:
    """Create a user; prints the new token alone on the last line."""
    check_or_exit(check_user, name)
    token = _with_directory(db, lambda s: s.create_user(name), redis)
    click.echo(f"created user {name}")
    click.echo(token)


@user.command("token")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="revoke every token of the user instead")
@db_option
@redis_option
def user_token(name: str, revoke: bool, db: str, redis: str | None) -> None:
    """Print a new token for NAME (or revoke all of NAME's tokens)."""
    if revoke:
        _with_directory(db, lambda s: s.revoke_tokens(name), redis)
        click.echo(f"revoked every token of {name}; their streams close within a second")
        return
    click.echo(_with_directory(db, lambda s: s.add_token(name), redis))


@user.command("list")
@db_option
@redis_option
def user_list(db: str, redis: str | None) -> None:
    """List users."""
    for record in _with_directory(db, lambda s: s.list_users(), redis):
        click.echo(f"{record.name}{'  (guest)' if record.guest else ''}")


@main.group()
def flow() -> None:
    """Manage flows and their members."""


@flow.command("add")
@click.argument("name")
@click.option("--private", is_flag=True, help="readable and writable by members only")
@click.option("--owner", default=None, help="the user who owns it (adds members, deletes)")
@click.option("--member", "members", multiple=True, help="a member (repeatable)")
@db_option
@redis_option
def flow_add(
    name: str,
    private: bool,
    owner: str | None,
    members: tuple[str, ...],
    db: str,
    redis: str | None,
) -> None:
    """Create a flow."""
    check_or_exit(check_flow, name)
    _with_directory(
        db, lambda s: s.create_flow(name, private=private, owner=owner, members=members), redis
    )
    click.echo(f"created {'private ' if private else ''}flow {name}")


@flow.command("list")
@db_option
@redis_option
def flow_list(db: str, redis: str | None) -> None:
    """List flows."""

    async def job(directory: Directory) -> list[Any]:
        return directory.flows()

    for f in _with_directory(db, job, redis):
        extra = (
            f"  private, owner {f.owner}, members {', '.join(sorted(f.members))}"
            if f.private
            else ""
        )
        click.echo(f"{f.name}{extra}")


if __name__ == "__main__":
    main()
