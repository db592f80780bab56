"""The demo chat in a real Chromium, on each of the seven transports (project issue 4).

Every page talks to the server through a TCP proxy the test controls, so the
network can be cut and the server killed (SIGKILL) and restarted on the same
database and port while the pages run. The tests share one server per module
and keep apart by user names; every wait is an auto-waiting `expect` with
an explicit timeout.
"""

from __future__ import annotations

import os

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("RT_REQUIRE_BROWSER") == "1":
        raise
    pytest.skip("Playwright (python) is not installed", allow_module_level=True)

from tests.browser.chat import RECOVER_MS, TRANSPORTS, Chat, history, history_contents

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("transport", TRANSPORTS)]


@pytest.fixture
def open_chat(chromium, net):
    """Open signed-in demo pages, one new user each, all on `transport`.

    `open_chat("a", "b", transport=t)` returns both pages; they sign in side
    by side. Every page is closed after the test, and an uncaught error in
    any of them fails it.
    """
    opened: list[Chat] = []

    def make(
        *users: str, transport: str = "auto", cache_static: tuple[str, ...] = ()
    ) -> list[Chat]:
        chats = [
            Chat.open(
                chromium, net.url, user, transport, sign_in=False, cache_static=user in cache_static
            )
            for user in users
        ]
        opened.extend(chats)
        for chat in chats:
            chat.start_sign_in()
        for chat in chats:
            chat.wait_open(transport)
        return chats

    yield make
    errors = [f"{c.user}: {e}" for c in opened for e in c.errors]
    for chat in opened:
        chat.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_post_tag_edit_delete_live(open_chat, server, transport):
    """A post reaches the other page within 2 s; a tag, an edit and a delete show on both."""
    a, b = open_chat(f"live-a-{transport}", f"live-b-{transport}", transport=transport)
    expect(b.tid("presence-list").locator(f'[data-user="{a.user}"]')).to_have_count(1, timeout=5000)

    text = f"hello from {a.user}"
    a.post(text)
    expect(b.message_with(a.user, text)).to_have_count(1, timeout=2000)

    a.shows_exactly(a.user, [text], timeout=5000)
    msg_id = int(a.messages(a.user).get_attribute("data-id"))
    expect(b.message(msg_id)).to_have_count(1, timeout=2000)

    # b tags a's message: the chip shows on both pages
    b.message(msg_id).get_by_test_id("tag-input").fill("urgent")
    b.message(msg_id).get_by_test_id("tag-input").press("Enter")
    for page in (a, b):
        expect(
            page.message(msg_id).locator('[data-testid="tag-chip"][data-tag="urgent"]')
        ).to_have_count(1, timeout=2000)

    # a edits it
    a.message(msg_id).get_by_test_id("message-edit").click()
    a.message(msg_id).get_by_test_id("message-edit-input").fill(f"{text}, edited")
    a.message(msg_id).get_by_test_id("message-edit-save").click()
    for page in (a, b):
        expect(page.message(msg_id).get_by_test_id("message-content")).to_have_text(
            f"{text}, edited", timeout=2000
        )
        expect(page.message(msg_id).get_by_test_id("message-edited")).to_be_visible(timeout=2000)

    # a removes the tag b added
    a.message(msg_id).get_by_test_id("tag-remove").click()
    for page in (a, b):
        expect(page.message(msg_id).get_by_test_id("tag-chip")).to_have_count(0, timeout=2000)

    # and deletes the message: gone from both pages
    a.message(msg_id).get_by_test_id("message-delete").click()
    for page in (a, b):
        expect(page.message(msg_id)).to_have_count(0, timeout=2000)

    [state] = history(server.url, a.token(), a.user)
    assert state["id"] == msg_id
    assert state["deleted"] is True and state["content"] == "" and state["tags"] == []
    assert state["edited"]


def test_server_sigkill_and_restart_while_posting(open_chat, server, transport):
    """Posts made before, during and after a SIGKILL and restart land once each, in order."""
    a, b = open_chat(f"kill-a-{transport}", f"kill-b-{transport}", transport=transport)
    texts = [f"{a.user} {i}" for i in range(9)]

    for text in texts[:3]:
        a.post(text)
    server.kill()
    for text in texts[3:6]:
        a.post(text)
    expect(a.contents(a.user, pending=True)).to_contain_text(texts[3:6])
    server.start()  # same database, same port: the proxy keeps its port
    for text in texts[6:]:
        a.post(text)

    a.shows_exactly(a.user, texts)
    b.shows_exactly(a.user, texts)
    assert history_contents(server.url, a.token(), a.user) == texts
    for page in (a, b):
        page.wait_open(transport, timeout=RECOVER_MS)


def test_cut_network_shows_pending_then_delivers_once(open_chat, server, net, transport):
    """Posts made with the network cut show as pending, then arrive exactly once everywhere."""
    a, b = open_chat(f"cut-a-{transport}", f"cut-b-{transport}", transport=transport)
    texts = [f"{a.user} offline {i}" for i in range(3)]

    net.cut()
    for text in texts:
        a.post(text)
    expect(a.contents(a.user, pending=True)).to_have_text(texts, timeout=5000)
    expect(a.messages(a.user, pending=False)).to_have_count(0)
    expect(b.messages(a.user)).to_have_count(0)

    net.restore()
    a.shows_exactly(a.user, texts)
    b.shows_exactly(a.user, texts)
    assert history_contents(server.url, a.token(), a.user) == texts
    for page in (a, b):
        page.wait_open(transport, timeout=RECOVER_MS)


def test_reload_with_pending_ops(open_chat, server, net, transport):
    """A reload while ops are pending (cut, post, reload, restore) loses and duplicates none."""
    a, b = open_chat(
        f"reload-a-{transport}",
        f"reload-b-{transport}",
        transport=transport,
        cache_static=(f"reload-a-{transport}",),
    )
    texts = [f"{a.user} kept {i}" for i in range(3)]

    a.post(texts[0])
    a.shows_exactly(a.user, texts[:1], timeout=5000)
    net.cut()
    for text in texts[1:]:
        a.post(text)
    expect(a.contents(a.user, pending=True)).to_have_text(texts[1:], timeout=5000)

    a.page.reload()
    # The page came back without a network: it says so and keeps retrying.
    expect(a.tid("login-error")).to_contain_text("Cannot reach the server", timeout=5000)
    net.restore()

    a.wait_open(transport, timeout=RECOVER_MS)
    a.shows_exactly(a.user, texts)
    b.shows_exactly(a.user, texts)
    assert history_contents(server.url, a.token(), a.user) == texts


def test_switch_transport_while_other_posts(open_chat, server, transport):
    """Switching transport in the selector while the other user posts loses and duplicates nothing."""
    start = TRANSPORTS.index(transport)
    route = [TRANSPORTS[(start + i) % len(TRANSPORTS)] for i in (1, 2, 0)]
    a, b = open_chat(f"switch-a-{transport}", f"switch-b-{transport}", transport=transport)
    texts = [f"{b.user} {i}" for i in range(len(route) + 2)]

    b.post(texts[0])
    for i, name in enumerate(route):
        a.select_transport(name)
        b.post(texts[i + 1])
    a.wait_open(route[-1])
    b.post(texts[-1])

    a.shows_exactly(b.user, texts)
    b.shows_exactly(b.user, texts)
    assert history_contents(server.url, b.token(), b.user) == texts
    expect(a.transport).to_have_text(route[-1])


def test_auto_mode_stays_on_websocket_across_restart(open_chat, server, transport):
    """Switched to automatic mode, the page is on WebSocket, and stays there across a restart."""
    [a] = open_chat(f"auto-a-{transport}", transport=transport)
    a.select_transport("auto")
    a.wait_open("ws")

    server.kill()
    expect(a.state).not_to_have_attribute("data-state", "open", timeout=5000)
    server.start()
    a.wait_open(timeout=RECOVER_MS)
    expect(a.transport).to_have_text("ws", timeout=2000)

    text = f"{a.user} after restart"
    a.post(text)
    a.shows_exactly(a.user, [text], timeout=5000)
    expect(a.transport).to_have_text("ws")
