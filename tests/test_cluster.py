"""Several `rt serve --redis` nodes behave, to every client, like one server (issue 13).

Real processes: a redis-server of the test's own (tests/redis_server.py) and
two or three `rt serve --redis` subprocesses on 127.0.0.1, spoken to over
HTTP and SSE with httpx. Each test is bounded in time.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.process import ROOT, RtProcess
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
pytest.importorskip("coredis")

USERS = ("alice", "bob")


class Cluster:
    def __init__(self, redis: RedisServer, tmp: Path, nodes: int, *extra: str) -> None:
        self.redis = redis
        self.tmp = tmp
        self.extra = extra
        self.nodes: list[RtProcess] = []
        self.tokens: dict[str, str] = {}
        starting = [self.add(i, wait=False) for i in range(nodes)]  # at once: faster
        for node in starting:
            node.wait_ready()
            self.tokens.update(node.tokens)

    def add(self, i: int, wait: bool = True) -> RtProcess:
        args = [
            "--redis",
            self.redis.url,
            "--flow",
            "general",
            "--heartbeat",
            "2",
            "--delivery-record",
            str(self.tmp / f"deliveries-{i}.jsonl"),
            *self.extra,
        ]
        for user in USERS:
            args += ["--user", user]
        node = RtProcess(*args, db=self.tmp / f"unused-{i}.db", wait=wait)
        self.tokens.update(node.tokens)
        self.nodes.append(node)
        return node

    def url(self, i: int) -> str:
        return self.nodes[i % len(self.nodes)].url

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def redis(tmp_path):
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def cluster(redis, tmp_path):
    c = Cluster(redis, tmp_path, 3, "--guests")
    yield c
    c.close()


def client_id() -> str:
    return "c" + secrets.token_hex(10)


async def post(
    http: httpx.AsyncClient,
    url: str,
    user_auth: dict[str, str],
    content: str,
    uuid: str | None = None,
) -> httpx.Response:
    return await http.post(
        f"{url}/flows/general/messages",
        headers=user_auth,
        json={"content": content, "uuid": uuid or "u" + secrets.token_hex(8)},
    )


@asynccontextmanager
async def sse(http: httpx.AsyncClient, url: str, auth: dict[str, str], client: str, **params: Any):
    query = {"flows": "general", "client": client, **params}
    async with http.stream("GET", f"{url}/stream/sse", params=query, headers=auth) as r:
        assert r.status_code == 200, await r.aread()
        yield SseReader(r)


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        event = None
        async for line in self.lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                obj = json.loads(line[6:])
                obj.setdefault("_event", event)
                return obj
        raise EOFError

    async def until(self, pred) -> dict[str, Any]:
        while True:
            obj = await self.next()
            if pred(obj):
                return obj

    async def stored(self) -> dict[str, Any]:
        return await self.until(lambda o: isinstance(o.get("id"), int) or o["type"] == "close")


async def test_posts_on_any_node_reach_every_node_in_one_order(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            got: dict[int, list[int]] = defaultdict(list)
            async with (
                sse(http, cluster.url(0), cluster.auth("bob"), client_id()) as s0,
                sse(http, cluster.url(1), cluster.auth("bob"), client_id()) as s1,
                sse(http, cluster.url(2), cluster.auth("bob"), client_id()) as s2,
            ):
                for s in (s0, s1, s2):
                    assert (await s.next())["type"] == "ready"
                ids = []
                async with trio.open_nursery() as nursery:

                    async def one(i: int) -> None:
                        r = await post(http, cluster.url(i), cluster.auth("alice"), f"m{i}")
                        assert r.status_code == 201, r.text
                        ids.append(r.json()["id"])

                    for i in range(30):
                        nursery.start_soon(one, i)
                for n, s in enumerate((s0, s1, s2)):
                    while len(got[n]) < 30:
                        got[n].append((await s.stored())["id"])
            assert sorted(ids) == got[0] == got[1] == got[2]
            assert got[0] == sorted(got[0]) and len(set(got[0])) == 30


async def test_a_cursor_from_one_node_resumes_on_another(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            client = client_id()
            async with sse(http, cluster.url(0), cluster.auth("bob"), client) as s:
                ready = await s.next()
                first = [
                    (await post(http, cluster.url(1), cluster.auth("alice"), f"a{i}")).json()
                    for i in range(5)
                ]
                seen = [(await s.stored())["id"] for _ in range(5)]
            assert seen == [e["id"] for e in first]
            later = [
                (await post(http, cluster.url(2), cluster.auth("alice"), f"b{i}")).json()
                for i in range(5)
            ]
            async with sse(
                http,
                cluster.url(1),
                cluster.auth("bob"),
                client,
                cursor=seen[-1],
                epoch=ready["epoch"],
            ) as s:
                again = await s.next()
                assert again["type"] == "ready" and not again["reset"]
                assert again["epoch"] == ready["epoch"]
                rest = [(await s.stored())["id"] for _ in range(5)]
            assert rest == [e["id"] for e in later]


async def test_one_uuid_posted_ten_times_over_the_nodes_is_stored_once(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            answers = []

            async def one(i: int) -> None:
                answers.append(
                    await post(
                        http, cluster.url(i), cluster.auth("alice"), "once", "same-uuid-everywhere"
                    )
                )

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [200] * 9 + [201], statuses
            assert len({r.json()["id"] for r in answers}) == 1
            history = (
                await http.get(
                    f"{cluster.url(0)}/flows/general/messages", headers=cluster.auth("alice")
                )
            ).json()["messages"]
            assert [m["content"] for m in history] == ["once"]


async def test_a_ticket_is_redeemed_on_another_node(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            client = client_id()
            r = await http.post(
                f"{cluster.url(0)}/auth/ticket",
                headers=cluster.auth("bob"),
                json={"client": client},
            )
            ticket = r.json()["ticket"]
            async with sse(http, cluster.url(1), {}, client, ticket=ticket) as s:
                assert (await s.next())["type"] == "ready"


async def test_a_user_made_on_one_node_is_known_on_the_others_at_once(cluster, redis):
    with trio.fail_after(30):
        done = subprocess.run(
            [sys.executable, "-m", "rt", "user", "add", "carol", "--redis", redis.url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(3):
                r = await http.get(
                    f"{cluster.url(i)}/me", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200 and r.json()["user"] == "carol"


async def test_a_guest_made_on_one_node_streams_through_the_others_at_once(cluster):
    """Behind a round-robin proxy a guest's next requests land on nodes that have not
    reloaded their directory yet: a Bearer token and a ticket that miss the cache
    reload it, and quick misses in a row each get a reload that began after them."""
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(4):
                r = await http.post(f"{cluster.url(i)}/auth/guest", json={"name": f"guest{i}"})
                assert r.status_code == 201, r.text
                auth = {"Authorization": f"Bearer {r.json()['token']}"}
                me = await http.get(f"{cluster.url(i + 1)}/me", headers=auth)
                assert me.status_code == 200 and me.json()["user"] == f"guest{i}", me.text
                client = client_id()
                r = await http.post(
                    f"{cluster.url(i + 1)}/auth/ticket", headers=auth, json={"client": client}
                )
                async with sse(
                    http, cluster.url(i + 2), {}, client, ticket=r.json()["ticket"]
                ) as s:
                    assert (await s.next())["type"] == "ready"


async def test_presence_and_typing_cross_nodes(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=10) as http:
            async with sse(http, cluster.url(0), cluster.auth("bob"), client_id()) as bob:
                ready = await bob.next()
                assert ready["presence"]["general"] == ["bob"]
                async with sse(http, cluster.url(1), cluster.auth("alice"), client_id()) as alice:
                    alice_ready = await alice.next()
                    assert alice_ready["presence"]["general"] == ["alice", "bob"]
                    online = await bob.until(lambda o: o["type"] == "presence")
                    assert (online["user"], online["state"]) == ("alice", "online")
                    r = await http.post(
                        f"{cluster.url(1)}/flows/general/typing", headers=cluster.auth("alice")
                    )
                    assert r.status_code == 204
                    typing = await bob.until(lambda o: o["type"] == "typing")
                    assert typing["user"] == "alice"


async def test_max_streams_counts_a_users_streams_on_every_node(redis, tmp_path):
    """--max-streams 2 over two nodes: a third stream, anywhere, evicts the oldest."""
    cluster = Cluster(redis, tmp_path, 2, "--max-streams", "2")
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10) as http:
                bob = cluster.auth("bob")
                async with (
                    sse(http, cluster.url(0), bob, client_id()) as oldest,
                    sse(http, cluster.url(1), bob, client_id()) as second,
                ):
                    assert (await oldest.next())["type"] == "ready"
                    assert (await second.next())["type"] == "ready"
                    async with sse(http, cluster.url(0), bob, client_id()) as third:
                        assert (await third.next())["type"] == "ready"
                        closed = await oldest.until(lambda o: o["type"] == "close")
                        assert closed["reason"] == "evicted"
                        # The others go on.
                        r = await post(http, cluster.url(1), cluster.auth("alice"), "still")
                        for s in (second, third):
                            assert (await s.stored())["id"] == r.json()["id"]
    finally:
        cluster.close()


async def test_a_users_rate_limit_holds_across_nodes(redis, tmp_path):
    """--ops-burst 4 is one bucket in Redis: posts spread over two nodes get 4 (or 5 with
    a second's refill) through, where two buckets per node would let 8 through."""
    cluster = Cluster(redis, tmp_path, 2, "--ops-rate", "1", "--ops-burst", "4")
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10) as http:
                statuses = [
                    (await post(http, cluster.url(n), cluster.auth("alice"), f"r{n}")).status_code
                    for n in range(8)
                ]
        assert statuses.count(201) in (4, 5), statuses
        assert set(statuses) == {201, 429}, statuses
    finally:
        cluster.close()


async def test_unix_socket_password_and_database_number(tmp_path):
    """`unix:///path?db=N&password=P` and `redis://:P@host:port/N` name the same dataset."""
    sock = tmp_path / "redis.sock"
    secured = RedisServer(
        "--unixsocket", str(sock), "--unixsocketperm", "700", "--requirepass", "s3cret"
    )
    nodes: list[RtProcess] = []
    try:
        urls = (
            f"unix://{sock}?db=3&password=s3cret",
            f"redis://:s3cret@127.0.0.1:{secured.port}/3",
        )
        for i, url in enumerate(urls):
            node = RtProcess(
                "--redis", url, "--flow", "general", "--user", f"u{i}", db=tmp_path / f"x{i}.db"
            )
            nodes.append(node)
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10) as http:
                auth = {"Authorization": f"Bearer {nodes[0].tokens['u0']}"}
                r = await post(http, nodes[0].url, auth, "over the socket")
                assert r.status_code == 201, r.text
                history = (
                    await http.get(f"{nodes[1].url}/flows/general/messages", headers=auth)
                ).json()["messages"]
                assert [m["content"] for m in history] == ["over the socket"]

        def keys_in(db: int) -> str:
            return subprocess.run(
                [
                    "redis-cli",
                    "-s",
                    str(sock),
                    "-a",
                    "s3cret",
                    "--no-auth-warning",
                    "-n",
                    str(db),
                    "dbsize",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()

        assert keys_in(0) == "0" and int(keys_in(3)) > 0
    finally:
        for node in nodes:
            node.kill()
        secured.stop()


async def test_takeover_races_across_nodes_never_overlap_and_leave_no_claim(
    cluster, redis, tmp_path
):
    rounds = 100
    with trio.fail_after(120):
        async with httpx.AsyncClient(timeout=10) as http:

            async def poster() -> None:
                while True:
                    await post(http, cluster.url(0), cluster.auth("alice"), "tick")
                    await trio.sleep(0.02)

            async with trio.open_nursery() as background:
                background.start_soon(poster)
                for n in range(rounds):
                    client = client_id()
                    outcomes: list[str] = []

                    async def one(
                        i: int, client: str = client, outcomes: list[str] = outcomes
                    ) -> None:
                        async with sse(http, cluster.url(i), cluster.auth("bob"), client) as s:
                            first = await s.next()
                            if first["type"] == "close":
                                outcomes.append(first["reason"])
                                return
                            # The winner is the one still delivering once its rival
                            # lost (leaving at the first message would let the other,
                            # opened later, win too, with no race at all).
                            obj = await s.until(
                                lambda o: (
                                    o["type"] == "close"
                                    or (o["type"] == "message" and len(outcomes) == 1)
                                )
                            )
                            outcomes.append(obj.get("reason") or "won")

                    async with trio.open_nursery() as racing:
                        for i in range(2):
                            racing.start_soon(one, n + i)
                    assert sorted(outcomes) == ["superseded", "won"], outcomes
                background.cancel_scope.cancel()
    # No two streams of one client id delivered at the same time, on any node.
    streams: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(dict)
    for path in tmp_path.glob("deliveries-*.jsonl"):
        for line in path.read_text().splitlines():
            d = json.loads(line)
            span = streams[(d["user"], d["client"])].setdefault(d["stream"], [d["t"], d["t"]])
            span[0], span[1] = min(span[0], d["t"]), max(span[1], d["t"])
    for key, spans in streams.items():
        ordered = sorted(spans.values())
        for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
            assert start >= end, (key, ordered)
    # Every claim was given back.
    with trio.fail_after(10):
        while True:
            keys = redis_keys(redis, "rt:claim:*")
            if not keys:
                break
            await trio.sleep(0.1)


def redis_keys(redis: RedisServer, pattern: str) -> list[str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "--scan", "--pattern", pattern],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [line for line in out.stdout.splitlines() if line]


async def test_polls_that_land_on_other_nodes_continue_the_session(cluster):
    with trio.fail_after(30):
        async with httpx.AsyncClient(timeout=30) as http:
            client = client_id()
            base = {"flows": "general", "client": client}
            first = (
                await http.get(
                    f"{cluster.url(0)}/stream/poll", params=base, headers=cluster.auth("bob")
                )
            ).json()
            ready = first[0]
            assert ready["type"] == "ready"
            cursor, seen = ready["cursor"], []
            for i in range(6):
                await post(http, cluster.url(i), cluster.auth("alice"), f"p{i}")
                answer = (
                    await http.get(
                        f"{cluster.url(i + 1)}/stream/poll",
                        params={**base, "cursor": cursor, "epoch": ready["epoch"]},
                        headers=cluster.auth("bob"),
                    )
                ).json()
                assert all(o["type"] != "ready" for o in answer), answer
                stored = [o["id"] for o in answer if isinstance(o.get("id"), int)]
                seen += stored
                cursor = stored[-1] if stored else cursor
            assert seen == sorted(set(seen)) and len(seen) == 6


async def wait_presence(
    http: httpx.AsyncClient, url: str, auth: dict[str, str], user: str, present: bool
) -> None:
    """Until `url`'s node lists (or no longer lists) `user` online in general."""
    while True:
        r = await http.get(f"{url}/flows/general/presence", headers=auth)
        if (user in r.json()["users"]) == present:
            return
        await trio.sleep(0.05)  # polling the node's view; the test's fail_after bounds it


async def test_presence_between_polls_moves_with_the_polling_session(redis, tmp_path):
    """A presence change that reaches a polling session between its polls is not lost when
    the next poll lands on another node: the old node hands the session over.

    The grace is long, so bob's session (which expires a grace after its last poll)
    outlives the test: who comes online is what moves; an `offline` would need a
    grace to pass, and bob's session would expire with it."""
    cluster = Cluster(
        redis, tmp_path, 2, "--presence-grace", "10", "--poll-timeout", "3", "--user", "carol"
    )
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10) as http:
                client = client_id()
                base = {"flows": "general", "client": client}
                bob = cluster.auth("bob")
                [ready] = (
                    await http.get(f"{cluster.url(0)}/stream/poll", params=base, headers=bob)
                ).json()
                assert ready["type"] == "ready" and not {"alice", "carol"} & set(
                    ready["presence"]["general"]
                )
                resume = {**base, "cursor": ready["cursor"], "epoch": ready["epoch"]}

                async def poll(node: int) -> list[tuple[str, str]]:
                    r = await http.get(
                        f"{cluster.url(node)}/stream/poll", params=resume, headers=bob
                    )
                    assert r.status_code == 200, r.text
                    answer = r.json()
                    assert all(o["type"] != "ready" for o in answer), answer
                    return [(o["user"], o["state"]) for o in answer if o["type"] == "presence"]

                # alice comes online (her stream on node 1) while bob's session
                # sits between polls on node 0; bob's next poll goes to node 1.
                async with sse(http, cluster.url(1), cluster.auth("alice"), client_id()) as s:
                    await s.next()
                    await wait_presence(http, cluster.url(0), bob, "alice", True)
                    assert await poll(1) == [("alice", "online")]
                    # carol comes online (on node 0) while the session is on node 1;
                    # the next poll goes back to node 0.
                    carol = cluster.auth("carol")
                    async with sse(http, cluster.url(0), carol, client_id()) as c:
                        await c.next()
                        await wait_presence(http, cluster.url(1), bob, "carol", True)
                        assert await poll(0) == [("carol", "online")]
    finally:
        cluster.close()


async def test_a_killed_node_loses_no_acknowledged_event(cluster):
    acked: list[int] = []
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=5) as http:

            async def posting(i: int) -> None:
                for n in range(100):
                    try:
                        r = await post(http, cluster.url(i), cluster.auth("alice"), f"k{i}-{n}")
                    except httpx.HTTPError:
                        continue
                    if r.status_code in (200, 201):
                        acked.append(r.json()["id"])

            async with trio.open_nursery() as nursery:
                for i in (1, 2):
                    nursery.start_soon(posting, i)
                await trio.sleep(0.5)
                cluster.nodes[2].kill()
            history = (
                await http.get(
                    f"{cluster.url(0)}/flows/general/messages",
                    params={"limit": 500},
                    headers=cluster.auth("alice"),
                )
            ).json()["messages"]
    stored = {m["id"] for m in history}
    assert acked and set(acked) <= stored


async def test_a_killed_nodes_users_go_offline_within_its_lease_and_the_grace(redis, tmp_path):
    """Presence of a node killed with -9 is taken down by node liveness in Redis (its
    lease lapses), not by a timeout per user: offline within lease + grace."""
    grace = 1.0
    cluster = Cluster(redis, tmp_path, 2, "--presence-grace", str(grace))
    try:
        with trio.fail_after(30):
            async with httpx.AsyncClient(timeout=10) as http:
                async with sse(http, cluster.url(0), cluster.auth("bob"), client_id()) as bob:
                    await bob.next()
                    alice = http.stream(
                        "GET",
                        f"{cluster.url(1)}/stream/sse",
                        params={"flows": "general", "client": client_id()},
                        headers=cluster.auth("alice"),
                    )
                    async with alice:
                        online = await bob.until(lambda o: o["type"] == "presence")
                        assert (online["user"], online["state"]) == ("alice", "online")
                        cluster.nodes[1].kill()
                        killed = time.monotonic()
                        offline = await bob.until(lambda o: o["type"] == "presence")
                    took = time.monotonic() - killed
        assert (offline["user"], offline["state"]) == ("alice", "offline")
        # The lease is 3 s (rt/backend/redis/node.py), renewed every second.
        assert grace <= took < 3.0 + grace + 2.0, took
    finally:
        cluster.close()


async def test_every_request_while_redis_is_down_is_answered_never_a_500(redis, tmp_path):
    """Redis unreachable: each route answers from the node's cache, or 503
    `shutting_down` with Retry-After, or (a stream) `close` `shutdown`; never 500."""
    cluster = Cluster(redis, tmp_path, 1, "--guests", "--ops-rate", "1000", "--ops-burst", "1000")
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(timeout=10) as http:
                url, auth = cluster.url(0), cluster.auth("alice")
                first = (await post(http, url, auth, "before")).json()["id"]
                redis.kill()
                m = f"/flows/general/messages/{first}"
                requests = [
                    ("POST", "/auth/guest", None),
                    ("POST", "/auth/ticket", {"client": client_id()}),
                    ("GET", "/me", None),
                    ("GET", "/flows", None),
                    ("POST", "/flows", {"name": "new-flow"}),
                    ("POST", "/flows/general/members", {"user": "bob"}),
                    ("GET", "/flows/general/presence", None),
                    ("POST", "/flows/general/typing", None),
                    ("GET", "/flows/general/messages", None),
                    ("POST", "/flows/general/messages", {"content": "x", "uuid": "u-down-1"}),
                    ("PATCH", m, {"content": "y", "uuid": "u-down-2"}),
                    ("POST", f"{m}/tags", {"add": ["t"], "uuid": "u-down-3"}),
                    ("DELETE", f"{m}?uuid=u-down-4", None),
                ]
                for method, path, body in requests:
                    r = await http.request(method, url + path, json=body, headers=auth)
                    if r.status_code >= 500:
                        assert is_retry_later(r), (method, path, r.text)
                        assert r.json()["error"]["code"] == "shutting_down", r.text
                for transport in ("sse", "xhr", "multipart", "htmlfile", "poll", "jsonp"):
                    query = {"flows": "general", "client": client_id(), "callback": "cb"}
                    async with http.stream(
                        "GET", f"{url}/stream/{transport}", params=query, headers=auth
                    ) as r:
                        if r.status_code != 200:
                            assert is_retry_later(r), (transport, r.status_code)
                            continue
                        body = b""
                        with trio.move_on_after(5):
                            async for chunk in r.aiter_bytes():
                                body += chunk
                                if b'"shutdown"' in body or b'"ready"' in body:
                                    break
                        assert b'"shutdown"' in body or b'"ready"' in body, (transport, body)
                redis.start()
                # And the node comes back by itself.
                started = time.monotonic()
                while (await post(http, url, auth, "after")).status_code != 201:
                    assert time.monotonic() - started < 20
                    await trio.sleep(0.2)
    finally:
        cluster.close()


def is_retry_later(r: httpx.Response) -> bool:
    return r.status_code == 503 and "Retry-After" in r.headers


class RedisBehind:
    """The Redis URL of `redis` reached through a fault proxy's listener."""

    def __init__(self, port: int) -> None:
        self.url = f"redis://127.0.0.1:{port}/0"


async def test_latency_to_redis_does_not_serialise_the_node(redis, tmp_path):
    """With 20 ms each way between a node and Redis, concurrent posts share round trips
    (pipelined, batched): many posts take a few round trips, not one or more each."""
    from rt.chaos.proxy import open_proxy

    one_way = 0.020
    posts = 100
    host, port = "127.0.0.1", int(redis.url.rsplit(":", 1)[1].split("/")[0])
    with trio.fail_after(90):
        async with open_proxy((host, port), [("redis", "127.0.0.1", 0)]) as proxy:
            proxy.start_spec(f"latency:delay={int(one_way * 1000)}ms:jitter=0ms:for=1h", seed=1)
            behind = RedisBehind(proxy.addresses["redis"][1])
            cluster = await trio.to_thread.run_sync(
                lambda: Cluster(behind, tmp_path, 1, "--ops-rate", "1000", "--ops-burst", "1000")
            )
            try:
                async with httpx.AsyncClient(timeout=20) as http:
                    auth = cluster.auth("alice")
                    assert (await post(http, cluster.url(0), auth, "warm")).status_code == 201
                    statuses: list[int] = []

                    async def one(n: int) -> None:
                        statuses.append(
                            (await post(http, cluster.url(0), auth, f"p{n}")).status_code
                        )

                    started = time.monotonic()
                    async with trio.open_nursery() as nursery:
                        for n in range(posts):
                            nursery.start_soon(one, n)
                    took = time.monotonic() - started
            finally:
                await trio.to_thread.run_sync(cluster.close)
    assert statuses == [201] * posts
    serialised = posts * 2 * one_way  # at least one round trip per post, one after another
    print(f"{posts} posts through {one_way * 1000:.0f} ms each way: {took:.2f} s")
    assert took < serialised / 3, (took, serialised)


async def test_redis_killed_and_restarted_loses_nothing_and_the_nodes_recover(cluster, redis):
    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(timeout=5) as http,
            sse(http, cluster.url(0), cluster.auth("bob"), client_id()) as live,
        ):
            assert (await live.next())["type"] == "ready"
            before = [
                (await post(http, cluster.url(i), cluster.auth("alice"), f"b{i}")).json()["id"]
                for i in range(5)
            ]
            assert [(await live.stored())["id"] for _ in before] == before
            redis.kill()
            r = await post(http, cluster.url(0), cluster.auth("alice"), "while down")
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert r.json()["error"]["code"] == "shutting_down"
            # A stream opened meanwhile is told to come back later, one way or the other.
            query = {"flows": "general", "client": client_id()}
            async with http.stream(
                "GET", f"{cluster.url(1)}/stream/sse", params=query, headers=cluster.auth("bob")
            ) as opened:
                if opened.status_code == 200:
                    closed = await SseReader(opened).until(lambda o: o["type"] == "close")
                    assert closed["reason"] == "shutdown" and closed["retry_ms"] > 0, closed
                else:
                    assert opened.status_code == 503 and "Retry-After" in opened.headers
            redis.start()
            started = time.monotonic()
            while True:
                r = await post(http, cluster.url(1), cluster.auth("alice"), "after")
                if r.status_code == 201:
                    break
                assert time.monotonic() - started < 20, r.text
                await trio.sleep(0.2)
            assert r.json()["id"] > max(before)
            history = (
                await http.get(
                    f"{cluster.url(2)}/flows/general/messages", headers=cluster.auth("alice")
                )
            ).json()["messages"]
            assert set(before) <= {m["id"] for m in history}
            # A stream that was live meanwhile held (heartbeats) and goes on with the
            # next event: nothing in between, since nothing was acknowledged.
            resumed = await live.stored()
            assert (resumed["id"], resumed["content"]) == (r.json()["id"], "after")


def test_redis_without_aof_is_refused_with_one_line(tmp_path):
    server = RedisServer("--appendonly", "no")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rt", "serve", "--port", "0", "--redis", server.url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert re.search(r"appendonly", done.stderr) and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()[-1:]) == 1
    finally:
        server.stop()
