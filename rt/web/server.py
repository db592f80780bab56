"""Running rt: hypercorn's trio worker serving the app, and graceful shutdown.

`open_server(config)` runs a whole server (store, service, web) in the
caller's nursery and yields a handle with its URL: the in-process tests use
it on 127.0.0.1:0, and `rt serve` uses it under `run()`.

Shutdown (PROTOCOL.md section 8): `Server.shutdown()` makes every request
answer 503 with `Retry-After` and ends every stream with `close` reason
`shutdown`; after `drain_seconds` hypercorn stops accepting and closes what
is left (at most `graceful_timeout`), then the writer flushes and the store
closes. Stuck writes are bounded by the hypercorn guard's write deadline.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from rt.backend import Backend
from rt.config import Config
from rt.hub import Hub
from rt.service import Hooks, Service, open_service
from rt.service.chaos import SIGNAL, Chaos, parse_spec
from rt.web import hypercorn_guard
from rt.web.admission import Admission, AdmissionLimits, raise_open_file_limit
from rt.web.app import create_app

log = logging.getLogger("rt")
GRACEFUL_TIMEOUT = 1.5


@dataclass
class Server:
    service: Service
    host: str
    port: int
    admission: Admission
    seeded: list[tuple[str, str]] = field(default_factory=list)  # (user, token) made at start
    stopped: trio.Event = field(default_factory=trio.Event)
    _stop: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    def shutdown(self) -> None:
        """Begin graceful shutdown (idempotent): drain, then stop."""
        if not self.service.draining:
            self.service.begin_shutdown()
        self._stop.set()


def hyper_config(config: Config, admission: Admission) -> HyperConfig:
    hc = HyperConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.accesslog = None  # rt logs requests itself, without query strings (tickets)
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = GRACEFUL_TIMEOUT
    hc.websocket_max_message_size = config.max_body
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.h11_max_incomplete_size = config.max_head
    hc.read_timeout = None
    hypercorn_guard.admit_with(hc, admission)
    return hc


def admission_for(config: Config) -> Admission:
    return Admission(
        AdmissionLimits(
            max_connections=config.max_connections,
            max_connections_per_address=config.max_connections_per_address,
            head_timeout=config.head_timeout,
            max_head=config.max_head,
        )
    )


class _AtMostOncePerSecond(logging.Filter):
    """Lets one record a second through, without its traceback, and counts the rest.

    Out of file descriptors, trio's accept loop logs an error with a
    traceback ten times a second for as long as it lasts; one line a second
    says the same (issue 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self._last = float("-inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < 1.0:
            self._dropped += 1
            return False
        self._last = now
        record.exc_info = record.exc_text = None
        if self._dropped:
            record.msg = f"{record.msg} (and {self._dropped} more like it)"
            self._dropped = 0
        return True


_accept_errors = logging.getLogger("trio.serve_listeners")
if not any(isinstance(f, _AtMostOncePerSecond) for f in _accept_errors.filters):
    _accept_errors.addFilter(_AtMostOncePerSecond())


@asynccontextmanager
async def open_server(
    config: Config,
    *,
    backend: Backend | None = None,
    hub: Hub | None = None,
    hooks: Hooks | None = None,
) -> AsyncIterator[Server]:
    """Serve rt until the block exits (graceful shutdown then) or `shutdown()` is called."""
    hypercorn_guard.install(write_timeout=config.write_timeout)
    async with open_service(config, backend=backend, hub=hub, hooks=hooks) as service:
        seeded = await service.seed()
        app = create_app(service)
        async with trio.open_nursery() as nursery:
            stop = trio.Event()

            async def trigger() -> None:
                await stop.wait()

            admission = admission_for(config)
            binds = await nursery.start(_serve, app, hyper_config(config, admission), trigger)
            host, port = _parse_bind(binds[0])
            server = Server(service, host, port, admission, seeded)
            nursery.start_soon(_drain_then_stop, server, stop, config.drain_seconds)
            async with trio.open_nursery() as signals:  # the chaos signals, while serving
                if config.chaos and SIGNAL in parse_spec(config.chaos):
                    signals.start_soon(_cut_on_sigusr1, server.admission)
                if service.chaos is not None:
                    signals.start_soon(_stop_chaos_on_sigusr2, service.chaos)
                try:
                    yield server
                finally:
                    signals.cancel_scope.cancel()
                    server.shutdown()
            # the nursery waits for hypercorn to finish its graceful stop
        server.stopped.set()


async def _cut_on_sigusr1(admission: Admission) -> None:
    """`rt serve --chaos signal`: SIGUSR1 cuts every open connection (`rt bench storm`).

    Only a signal from the same machine reaches it; nothing over HTTP does.
    """
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            cut = await hypercorn_guard.cut_all(admission)
            log.info("SIGUSR1: cut %d connections (--chaos signal)", cut)


async def _stop_chaos_on_sigusr2(chaos: Chaos) -> None:
    """`rt serve --chaos`: SIGUSR2 stops the forced answers (the race lab's faults end)."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            chaos.stop()


async def _serve(app, hc, trigger, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, hc, shutdown_trigger=trigger, task_status=task_status)


async def _drain_then_stop(server: Server, stop: trio.Event, drain_seconds: float) -> None:
    await server._stop.wait()
    await trio.sleep(drain_seconds)
    stop.set()


def _parse_bind(bind: str) -> tuple[str, int]:
    hostport = bind.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


async def run(config: Config, *, on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (for `rt serve`)."""
    soft, _ = raise_open_file_limit()
    cap = AdmissionLimits(max_connections=config.max_connections).total_cap()
    log.info(
        "open-file limit %d; at most %s connections, %s per client address",
        soft,
        cap or "unlimited",
        config.max_connections_per_address or "unlimited",
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_server(config) as server:
            if on_ready is not None:
                await on_ready(server)
            async for signum in signals:
                log.info(
                    "%s received, draining for %.1f s",
                    signal.Signals(signum).name,
                    config.drain_seconds,
                )
                server.shutdown()
                break
