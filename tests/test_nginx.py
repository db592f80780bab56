"""Tier 3: rt behind a real nginx configured by docs/nginx.conf.

The fixture starts rt in-process and Debian's nginx as a subprocess on a
loopback port. nginx runs docs/nginx.conf itself: the file is included in a
generated `http { }` block with three lines substituted (the upstream
address, the listen address, the access log path), so these tests prove the
documented configuration, not a copy of it. The surrounding `http { }` is
deliberately unfriendly (gzip for every type, X-Accel-Buffering ignored, a
default access log with the full request line): the documented server block
must stand on its own.

Without nginx the tests skip, unless RT_REQUIRE_NGINX=1 (which .ci/run sets)
makes a missing nginx a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from rt.web.server import Server
from tests import clients
from tests.helpers import (
    Api,
    SseClient,
    WsClient,
    client_id,
    new_flow,
    serve_rt,
    stream_query,
    uuid,
)

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "nginx.conf"
TRANSPORTS = ["ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"]
PROMPT = 0.5  # seconds from a post's acknowledgement to its event on a stream


# -- nginx -----------------------------------------------------------------------------


def site_config(doc: str, upstream: str, listen: str, access_log: Path) -> str:
    """docs/nginx.conf with the upstream address, listen address and log path replaced.

    Each replaced directive must occur exactly once, outside comments: if the
    documented file changes shape, this fails instead of testing something else.
    """
    substitutions = [
        (r"^(\s*server\s+)127\.0\.0\.1:8000(;)", upstream),
        (r"^(\s*listen\s+)80(;)", listen),
        (r"^(\s*access_log\s+)/var/log/nginx/rt\.access\.log(\s+rt_noquery;)", str(access_log)),
    ]
    for pattern, value in substitutions:
        doc, n = re.subn(pattern, lambda m, v=value: m[1] + v + m[2], doc, flags=re.M)
        assert n == 1, f"docs/nginx.conf: expected exactly one line matching {pattern!r}"
    return doc


def main_config(prefix: Path, site: Path) -> str:
    """A whole nginx.conf around the site, with every path inside `prefix`."""
    # Workers of a root master run as `nobody` by default, which cannot enter
    # pytest's private tmp_path; as any other user, `user` is meaningless.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # An unfriendly surrounding http {{ }}: the documented locations must override it.
    access_log {prefix}/default.access.log combined;
    gzip on;
    gzip_types *;
    gzip_min_length 1;
    proxy_ignore_headers X-Accel-Buffering;
    include {site};
}}
"""


def find_nginx() -> str:
    """The nginx binary (Debian puts it in /usr/sbin, often off a user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if found:
        return found
    message = "nginx is not installed (apt-get install nginx)"
    if os.environ.get("RT_REQUIRE_NGINX") == "1":
        pytest.fail(f"{message}, and RT_REQUIRE_NGINX=1 requires these tests to run")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(nginx: str, prefix: Path, upstream: str) -> tuple[subprocess.Popen[str], int]:
    """nginx in the foreground with docs/nginx.conf, proxying to `upstream`, answering on
    its port: the process and the port. (Blocking: async tests call it in a thread.)"""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # another process may take the free port first
        port = free_port()
        site = prefix / "rt.conf"
        site.write_text(
            site_config(DOC.read_text(), upstream, f"127.0.0.1:{port}", prefix / "rt.access.log")
        )
        conf = prefix / "nginx.conf"
        conf.write_text(main_config(prefix, site))
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
            + ["-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.01)  # polling the port it opens, with a deadline
        stop_nginx(proc)
        output = proc.communicate()[0] + (prefix / "error.log").read_text()
        if "Address already in use" not in output or attempt == 2:
            raise RuntimeError(f"nginx did not start:\n{output}")
    raise AssertionError("unreachable")


def stop_nginx(proc: subprocess.Popen[str]) -> None:
    proc.terminate()  # SIGTERM: fast shutdown, open connections closed
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@asynccontextmanager
async def run_nginx(nginx: str, prefix: Path, upstream: str) -> AsyncIterator[int]:
    """`start_nginx` for async tests; yields its port."""
    proc, port = await trio.to_thread.run_sync(start_nginx, nginx, prefix, upstream)
    try:
        yield port
    finally:
        await trio.to_thread.run_sync(stop_nginx, proc)


@dataclass
class Proxy:
    """rt behind nginx. `url` and `ws_url` are nginx's, so `Api(proxy, token)` goes through it."""

    rt: Server
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.prefix / "rt.access.log"
        return path.read_text() if path.exists() else ""

    def every_log(self) -> str:
        """Everything nginx logged: the documented log, the surrounding one, errors."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.prefix.glob("*.log")))

    async def user(self, name: str) -> Api:
        token = await self.rt.service.directory.create_user(name)
        return Api(self, token)  # type: ignore[arg-type]  # Api needs only .url


@pytest.fixture
async def proxy(tmp_path):
    nginx = find_nginx()
    async with serve_rt() as server:
        await new_flow(server, "general")
        async with run_nginx(nginx, tmp_path / "nginx", f"{server.host}:{server.port}") as port:
            yield Proxy(server, port, tmp_path / "nginx")


# -- stream clients through nginx ------------------------------------------------------
#
# One opener per transport: given nginx and the stream's query (ticket included),
# it yields a client whose `next()` returns one decoded object and `until(pred)`
# the first matching one. Add a transport here and to TRANSPORTS.


@asynccontextmanager
async def open_ws(proxy: Proxy, query: dict[str, Any]) -> AsyncIterator[WsClient]:
    url = f"{proxy.ws_url}/stream/ws?{httpx.QueryParams(query)}"
    async with open_websocket_url(url) as conn:
        yield WsClient(conn)


@asynccontextmanager
async def open_sse(proxy: Proxy, query: dict[str, Any]) -> AsyncIterator[SseClient]:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
        async with http.stream("GET", "/stream/sse", params=query) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            yield SseClient(r)


OPENERS: dict[str, Callable[[Proxy, dict[str, Any]], AbstractAsyncContextManager[Any]]] = {
    "ws": open_ws,
    "sse": open_sse,
    # tests/clients.py's clients for the other five (htmlfile and jsonp get a callback)
    **{
        t: lambda proxy, query, t=t: clients.connect(proxy, t, query)
        for t in ("xhr", "multipart", "htmlfile", "poll", "jsonp")
    },
}


@asynccontextmanager
async def stream_via(
    proxy: Proxy,
    transport: str,
    api: Api,
    client: str | None = None,
    ticket: str | None = None,
    **params: Any,
) -> AsyncIterator[Any]:
    """A stream of `general` through nginx, authenticated by a ticket in its URL."""
    client = client or client_id()
    ticket = ticket or await api.ticket(client)  # through nginx too
    query = stream_query(["general"], client, ticket=ticket, **params)
    async with OPENERS[transport](proxy, query) as stream:
        yield stream


def is_message(uid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: obj.get("type") == "message" and obj.get("uuid") == uid


# -- tests -----------------------------------------------------------------------------


def test_the_documented_config_is_what_the_tests_run():
    """The substitutions touch exactly the three lines and leave the rest verbatim."""
    doc = DOC.read_text()
    site = site_config(doc, "10.0.0.1:9", "127.0.0.1:1234", Path("/x/a.log"))
    changed = [(a, b) for a, b in zip(doc.splitlines(), site.splitlines(), strict=True) if a != b]
    assert [b.strip() for _, b in changed] == [
        "server 10.0.0.1:9;",
        "listen 127.0.0.1:1234;",
        "access_log /x/a.log rt_noquery;",
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_events_arrive_promptly_through_nginx(proxy, transport):
    with trio.fail_after(10):
        alice = await proxy.user("alice")
        client = client_id()
        ticket = await alice.ticket(client)
        opened = time.monotonic()
        async with stream_via(proxy, transport, alice, client, ticket) as s:
            ready = await s.next()
            to_ready = time.monotonic() - opened
            assert (ready["type"], ready["transport"], ready["reset"]) == (
                "ready",
                transport,
                False,
            )
            lags = []
            for i in range(3):
                uid = uuid()
                r = await alice.post("general", f"hello {i}", uid)
                acknowledged = time.monotonic()
                assert r.status_code == 201, r.text
                event = await s.until(is_message(uid))
                lags.append(time.monotonic() - acknowledged)
                assert (event["content"], event["id"]) == (f"hello {i}", r.json()["id"])
        await alice.aclose()
    assert to_ready < PROMPT, to_ready
    assert max(lags) < PROMPT, lags


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_through_nginx_with_cursor_and_epoch(proxy, transport):
    with trio.fail_after(10):
        alice = await proxy.user("alice")
        client = client_id()
        seen: list[int] = []
        async with stream_via(proxy, transport, alice, client) as s:
            ready = await s.next()
            assert ready["type"] == "ready"
            epoch = ready["epoch"]
            for i in range(3):
                uid = uuid()
                assert (await alice.post("general", f"before {i}", uid)).status_code == 201
                seen.append((await s.until(is_message(uid)))["id"])
        missed = []
        for i in range(2):  # posted while the client is away
            r = await alice.post("general", f"away {i}")
            assert r.status_code == 201, r.text
            missed.append(r.json()["id"])
        async with stream_via(proxy, transport, alice, client, cursor=seen[-1], epoch=epoch) as s:
            if transport not in clients.POLLING:
                # (a polling session outlives its poll loop: a poll with a cursor
                # continues it, and only a new session starts with ready, PROTOCOL.md 3.2)
                ready = await s.next()
                assert (ready["type"], ready["reset"], ready["epoch"]) == ("ready", False, epoch)
            got = [(await s.until(lambda o: o.get("type") == "message"))["id"] for _ in missed]
            assert got == missed  # the rest, in order, without a duplicate
            uid = uuid()
            r = await alice.post("general", "live again", uid)
            assert (await s.until(lambda o: o.get("type") == "message"))["uuid"] == uid
        await alice.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tickets_in_stream_urls_stay_out_of_nginx_logs(proxy, transport):
    with trio.fail_after(10):
        alice = await proxy.user("alice")
        client = client_id()
        ticket = await alice.ticket(client)
        async with stream_via(proxy, transport, alice, client, ticket) as s:
            assert (await s.next())["type"] == "ready"
            uid = uuid()
            assert (await alice.post("general", "hi", uid)).status_code == 201
            await s.until(is_message(uid))
        # A refused request with a ticket in its URL (here a wrong one) is logged too.
        bogus = "bogus" + secrets.token_urlsafe(16)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
            r = await http.get(
                f"/stream/{transport}", params=stream_query(["general"], client, ticket=bogus)
            )
            assert r.status_code >= 400
        await alice.aclose()
        # nginx writes a stream's line when the stream ends, after the client left.
        # (A polling client makes one request per poll; its last may be cut off unsent.)
        least, most = 1 + getattr(s, "answered", 1), 1 + getattr(s, "requests", 1)
        while proxy.access_log().count(f'"GET /stream/{transport}') < least:
            await trio.sleep(0.02)
    access = proxy.access_log()
    assert least <= access.count(f'"GET /stream/{transport} HTTP/1.1"') <= most, access
    assert '"POST /auth/ticket HTTP/1.1" 200' in access
    assert '"POST /flows/general/messages HTTP/1.1" 201' in access
    logs = proxy.every_log()
    assert ticket not in logs
    assert bogus not in logs
    assert alice.token not in logs
    assert "ticket=" not in logs
    assert "/stream/" not in (proxy.prefix / "default.access.log").read_text()


async def test_http_api_through_nginx_and_metrics_refused(proxy):
    with trio.fail_after(10):
        alice = await proxy.user("alice")
        assert (await alice.http.get("/health")).json() == {"status": "ok"}
        uid = uuid()
        first = await alice.post("general", "via nginx", uid)
        assert first.status_code == 201, first.text
        again = await alice.post("general", "via nginx", uid)  # a retry through the proxy
        assert (again.status_code, again.json()) == (200, first.json())
        history = await alice.history("general")
        assert [(m["id"], m["content"]) for m in history["messages"]] == [
            (first.json()["id"], "via nginx")
        ]
        assert history["cursor"] == first.json()["id"]
        # nginx adds X-Forwarded-For, so rt refuses /metrics without a metrics token
        # (the body shows the 403 is rt's, not nginx's) ...
        r = await alice.http.get("/metrics")
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        # ... which it serves to the same loopback client without the proxy.
        async with httpx.AsyncClient(timeout=10) as direct:
            assert (await direct.get(f"{proxy.rt.url}/metrics")).status_code == 200
        await alice.aclose()


async def test_websocket_from_the_proxied_origin(proxy):
    """A page served through nginx may open a WebSocket; a foreign page may not."""
    with trio.fail_after(10):
        alice = await proxy.user("alice")
        for origin, allowed in [(proxy.url, True), ("http://evil.example", False)]:
            client = client_id()
            query = stream_query(["general"], client, ticket=await alice.ticket(client))
            url = f"{proxy.ws_url}/stream/ws?{httpx.QueryParams(query)}"
            async with open_websocket_url(url, extra_headers=[("Origin", origin)]) as conn:
                if allowed:
                    assert (await WsClient(conn).next())["type"] == "ready"
                else:
                    with pytest.raises(ConnectionClosed) as closed:
                        await conn.get_message()
                    assert (closed.value.reason.code, closed.value.reason.reason) == (
                        4003,
                        "forbidden",
                    )
        await alice.aclose()
