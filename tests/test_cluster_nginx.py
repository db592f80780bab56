"""Two `rt serve --redis` nodes behind nginx, round robin: every transport, as one server.

nginx runs docs/nginx.conf with its upstream holding both nodes
(docs/cluster.md), so consecutive requests of one client land on different
nodes: the ticket is made on one node and redeemed on the other, a post is
stored through one and echoed through the other, a resume continues on the
other node, and a takeover happens across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.helpers import Api, client_id, uuid
from tests.test_cluster import Cluster
from tests.test_nginx import TRANSPORTS, find_nginx, is_message, run_nginx, stream_via

pytestmark = pytest.mark.slow
pytest.importorskip("coredis")


@dataclass
class ClusterProxy:
    """Two nodes behind nginx; `url` and `ws_url` are nginx's (what tests.test_nginx needs)."""

    cluster: Cluster
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def user(self, name: str) -> Api:
        return Api(self, self.cluster.tokens[name])  # type: ignore[arg-type]


@pytest.fixture
async def proxy(tmp_path):
    from tests.redis_server import RedisServer

    nginx = find_nginx()
    redis = RedisServer()
    cluster = Cluster(redis, tmp_path, 2)
    try:
        a, b = (node.url.rsplit("/", 1)[-1] for node in cluster.nodes)
        # docs/nginx.conf's one `server` line becomes two: round robin over the nodes.
        upstream = f"{a};\n        server {b}"
        async with run_nginx(nginx, tmp_path / "nginx", upstream) as port:
            yield ClusterProxy(cluster, port, tmp_path / "nginx")
    finally:
        cluster.close()
        redis.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_resume_and_takeover_over_two_nodes(proxy, transport):
    with trio.fail_after(30):
        alice = await proxy.user("alice")
        bob = await proxy.user("bob")
        client = client_id()
        seen: list[int] = []
        async with stream_via(proxy, transport, alice, client) as s:
            ready = await s.next()
            assert ready["type"] == "ready" and not ready["reset"]
            for i in range(4):  # round robin: posts go through both nodes
                uid = uuid()
                r = await bob.post("general", f"live {i}", uid)
                assert r.status_code == 201, r.text
                seen.append((await s.until(is_message(uid)))["id"])
        missed = [(await bob.post("general", f"away {i}")).json()["id"] for i in range(3)]
        async with stream_via(
            proxy, transport, alice, client, cursor=seen[-1], epoch=ready["epoch"]
        ) as s:
            if transport in ("poll", "jsonp"):
                # The polling session is still alive (on whichever node): it goes on,
                # with no new `ready` (docs/decisions.md, Polling).
                caught = []
            else:
                again = await s.next()
                assert again["type"] == "ready" and again["reset"] is False
                caught = []
            while len(caught) < len(missed):
                caught.append((await s.until(lambda o: isinstance(o.get("id"), int)))["id"])
            assert caught == missed
            # a second stream of the same client id, through the other node, supersedes it
            async with stream_via(proxy, transport, alice, client) as newer:
                assert (await newer.next())["type"] == "ready"
                close = await s.until(lambda o: o.get("type") == "close")
                assert close["reason"] == "superseded"
        await alice.aclose()
        await bob.aclose()
    assert seen == sorted(seen)
