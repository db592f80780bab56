"""The demo chat served by two `rt serve --redis` nodes, in real Chromium pages (issue 13).

docs/cluster.md's setup: a redis-server, two nodes, and nginx in front
with both nodes in its upstream (round robin, so one page's requests land on
both nodes). Page `front` is served through nginx; pages `one` and `two` are
each pinned to one node (opened at that node's own address), so three
browsers on different nodes chat as they would on one server. Then node one
is killed with SIGKILL while `front` posts: `front` carries on through nginx
on node two with nothing lost or repeated, and page `one` comes back when
its node is started again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("RT_REQUIRE_BROWSER") == "1":
        raise
    pytest.skip("Playwright (python) is not installed", allow_module_level=True)

pytest.importorskip("coredis")

from tests.browser.chat import RECOVER_MS, TRANSPORTS, Chat, history, history_contents  # noqa: E402
from tests.browser.conftest import SERVER_ARGS, RtServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.test_nginx import find_nginx, start_nginx, stop_nginx  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass
class BrowserCluster:
    nodes: list[RtServer]
    front: str  # nginx's URL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserCluster]:
    nginx = find_nginx()
    redis = RedisServer()
    nodes: list[RtServer] = []
    proc = None
    try:
        for i in range(2):
            node = RtServer(
                tmp_path_factory.mktemp(f"node-{i}"), "--redis", redis.url, *SERVER_ARGS
            )
            node.start()
            nodes.append(node)
        upstream = f"127.0.0.1:{nodes[0].port};\n        server 127.0.0.1:{nodes[1].port}"
        proc, port = start_nginx(nginx, tmp_path_factory.mktemp("nginx"), upstream)
        yield BrowserCluster(nodes, f"http://127.0.0.1:{port}")
    finally:
        if proc is not None:
            stop_nginx(proc)
        for node in nodes:
            node.stop()
        redis.stop()


@pytest.fixture
def pages(chromium, cluster: BrowserCluster):
    """`pages(prefix, transport)`: the pages front (via nginx), one and two (one per node)."""
    opened: list[Chat] = []

    def make(prefix: str, transport: str) -> tuple[Chat, Chat, Chat]:
        bases = [cluster.front, cluster.nodes[0].url, cluster.nodes[1].url]
        names = [f"{prefix}-front", f"{prefix}-one", f"{prefix}-two"]
        for base, name in zip(bases, names, strict=True):
            opened.append(Chat.open(chromium, base, name, transport, sign_in=False))
        for chat in opened:
            chat.start_sign_in()
        for chat in opened:
            chat.wait_open(transport)
        front, one, two = opened
        return front, one, two

    yield make
    errors = [f"{c.user}: {e}" for c in opened for e in c.errors]
    for chat in opened:
        chat.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_three_browsers_on_two_nodes_chat_as_on_one_server(pages, cluster, transport):
    front, one, two = pages(f"cl-{transport}", transport)
    for page in (front, one, two):
        for other in (front, one, two):
            expect(page.tid("presence-list").locator(f'[data-user="{other.user}"]')).to_have_count(
                1, timeout=5000
            )

    # A post on each page reaches the others, in the server's one order.
    for author in (one, two, front):
        author.post(f"hello from {author.user}")
    for page in (front, one, two):
        for author in (one, two, front):
            expect(page.message_with(author.user, f"hello from {author.user}")).to_have_count(
                1, timeout=5000
            )
        ids = [int(x) for x in page.messages().evaluate_all("els => els.map(e => e.dataset.id)")]
        assert ids == sorted(ids), f"{page.user} shows messages out of id order: {ids}"

    # Page two (node two) tags the message of page one (node one); front edits its own.
    [msg_one] = history(cluster.front, one.token(), one.user)
    two.message(msg_one["id"]).get_by_test_id("tag-input").fill("urgent")
    two.message(msg_one["id"]).get_by_test_id("tag-input").press("Enter")
    [msg_front] = history(cluster.front, front.token(), front.user)
    front.message(msg_front["id"]).get_by_test_id("message-edit").click()
    front.message(msg_front["id"]).get_by_test_id("message-edit-input").fill("edited on the front")
    front.message(msg_front["id"]).get_by_test_id("message-edit-save").click()
    for page in (front, one, two):
        expect(
            page.message(msg_one["id"]).locator('[data-testid="tag-chip"][data-tag="urgent"]')
        ).to_have_count(1, timeout=5000)
        expect(page.message(msg_front["id"]).get_by_test_id("message-content")).to_have_text(
            "edited on the front", timeout=5000
        )


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_a_killed_node_loses_nothing_for_the_browsers(pages, cluster, transport):
    front, one, two = pages(f"kill-{transport}", transport)
    texts = [f"{front.user} {i}" for i in range(9)]
    node_one = cluster.nodes[0]
    try:
        for text in texts[:3]:
            front.post(text)
        node_one.kill()  # SIGKILL: page one's node, and half of nginx's upstream
        for text in texts[3:6]:
            front.post(text)
        # nginx sends front's requests to node two: it recovers without node one.
        front.wait_open(transport, timeout=RECOVER_MS)
        for text in texts[6:]:
            front.post(text)
        for page in (front, two):
            page.shows_exactly(front.user, texts)
    finally:
        node_one.start()  # same port, same Redis
    one.wait_open(transport, timeout=RECOVER_MS)
    one.shows_exactly(front.user, texts)
    assert history_contents(cluster.front, front.token(), front.user) == texts
