"""The demo page itself: layout at a phone and a desktop width, and accessibility (axe-core).

Screenshots of both widths go under pytest's temporary directory
(`<basetemp>/browser-artifacts/`); their paths are listed at the end of the run.
"""

from __future__ import annotations

import os

import pytest

try:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("RT_REQUIRE_BROWSER") == "1":
        raise
    pytest.skip("Playwright or axe-playwright-python is not installed", allow_module_level=True)

from tests.browser.chat import Chat
from tests.browser.conftest import saved

pytestmark = pytest.mark.browser

SIZES = [pytest.param((375, 812), id="375x812"), pytest.param((1280, 800), id="1280x800")]


def no_horizontal_scroll(chat: Chat) -> None:
    width = chat.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], (
        f"the page scrolls sideways: scrollWidth {width[0]} > clientWidth {width[1]}"
    )


def shot(page, path) -> None:
    page.screenshot(path=path, animations="disabled")
    saved(path)


def serious_violations(chat: Chat) -> list[str]:
    results = Axe().run(chat.page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {[n['target'] for n in v['nodes']][:5]}"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


@pytest.mark.parametrize("size", SIZES)
def test_layout_and_accessibility(chromium, net, artifacts, size):
    width, height = size
    chat = Chat.open(chromium, net.url, f"page-{width}", viewport=size, sign_in=False)
    try:
        page = chat.page
        # the sign-in view
        expect(chat.tid("login-name")).to_be_in_viewport()
        no_horizontal_scroll(chat)
        assert serious_violations(chat) == [], "axe on the sign-in view"

        chat.sign_in()
        # something to show: a long unbroken word and a plain message
        chat.post("x" * 300)
        chat.post(f"hello from {chat.user}, at {width} pixels wide")
        expect(chat.messages(chat.user, pending=False)).to_have_count(2, timeout=5000)

        expect(chat.tid("composer")).to_be_in_viewport()
        expect(chat.tid("send")).to_be_in_viewport()
        no_horizontal_scroll(chat)
        shot(page, artifacts / f"chat-{width}x{height}.png")
        assert serious_violations(chat) == [], "axe on the chat view"

        flow = chat.tid("flow-item").first
        if width < 760:
            # a drawer: flows, people and the transport selector appear on demand
            for hook in ("flow-item", "presence-list", "transport-select"):
                expect(chat.tid(hook).first).to_be_hidden()
            chat.tid("menu-toggle").click()
            expect(chat.tid("menu-toggle")).to_have_attribute("aria-expanded", "true")
            for hook in ("flow-item", "presence-list", "transport-select"):
                expect(chat.tid(hook).first).to_be_visible()
            expect(
                chat.page.locator(f'[data-testid="presence-user"][data-user="{chat.user}"]')
            ).to_be_visible()
            no_horizontal_scroll(chat)
            shot(page, artifacts / f"chat-{width}x{height}-drawer.png")
            assert serious_violations(chat) == [], "axe with the drawer open"
            page.keyboard.press("Escape")
            expect(chat.tid("menu-toggle")).to_have_attribute("aria-expanded", "false")
            expect(flow).to_be_hidden()
        else:
            expect(chat.tid("menu-toggle")).to_be_hidden()
            expect(flow).to_be_visible()
            expect(chat.tid("transport-select")).to_be_visible()
        expect(chat.tid("composer")).to_be_in_viewport()
        assert chat.errors == []
    finally:
        chat.close()
