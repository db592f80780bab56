"""Driving the demo page (rt/static/index.html + demo.js) through its data-testid hooks."""

from __future__ import annotations

import json
import re

import httpx
from playwright.sync_api import BrowserContext, Locator, Page, Route, expect

TRANSPORTS = ["ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile"]
TOKEN_KEY = "rt-demo:token"
TRANSPORT_KEY = "rt-demo:transport"

# Timeouts (ms) of the auto-waiting assertions.
SIGN_IN_MS = 10000
RECOVER_MS = (
    40000  # after a cut or a restart: reconnection backoff (jittered, up to 30 s), then the outbox
)


class Chat:
    """One signed-in demo page of one user in its own browser context."""

    def __init__(self, context: BrowserContext, page: Page, base: str, user: str) -> None:
        self.context = context
        self.page = page
        self.base = base
        self.user = user
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    @classmethod
    def open(
        cls,
        browser,
        base: str,
        user: str,
        transport: str = "auto",
        *,
        viewport: tuple[int, int] = (1280, 800),
        cache_static: bool = False,
        sign_in: bool = True,
    ) -> Chat:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        context.set_default_timeout(SIGN_IN_MS)
        # The transport the demo starts with (it remembers the selector's choice
        # under this key); set before the first load only, so a reload keeps
        # whatever the selector chose since.
        context.add_init_script(
            f"try {{ if (!localStorage.getItem({json.dumps(TRANSPORT_KEY)})) "
            f"localStorage.setItem({json.dumps(TRANSPORT_KEY)}, {json.dumps(transport)}); }} catch (e) {{}}"
        )
        if cache_static:
            _serve_static_when_offline(context, base)
        page = context.new_page()
        chat = cls(context, page, base, user)
        page.goto(base + "/")
        if sign_in:
            chat.sign_in(transport)
        return chat

    def close(self) -> None:
        self.context.close()

    # -- hooks ---------------------------------------------------------------

    def tid(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    @property
    def state(self) -> Locator:
        return self.tid("connection-state")

    @property
    def transport(self) -> Locator:
        return self.tid("transport-current")

    def sign_in(self, transport: str = "auto") -> None:
        self.start_sign_in()
        self.wait_open(transport)

    def start_sign_in(self) -> None:
        """Join as a guest named `self.user` (without waiting for the stream)."""
        self.tid("login-name").fill(self.user)
        self.tid("login-submit").click()

    def wait_open(self, transport: str = "auto", timeout: float = SIGN_IN_MS) -> None:
        expect(self.state).to_have_attribute("data-state", "open", timeout=timeout)
        expect(self.state).to_have_text("open", timeout=timeout)
        if transport != "auto":
            expect(self.transport).to_have_text(transport, timeout=timeout)

    def token(self) -> str:
        token = self.page.evaluate("(k) => localStorage.getItem(k)", TOKEN_KEY)
        assert token, "no token in localStorage"
        return token

    def post(self, text: str) -> None:
        self.tid("composer").fill(text)
        self.tid("send").click()

    def messages(self, user: str | None = None, *, pending: bool | None = None) -> Locator:
        selector = '[data-testid="message"]'
        if user is not None:
            selector += f'[data-user="{user}"]'
        if pending is not None:
            selector += f'[data-pending="{str(pending).lower()}"]'
        return self.tid("message-list").locator(selector)

    def contents(self, user: str, *, pending: bool | None = None) -> Locator:
        return self.messages(user, pending=pending).get_by_test_id("message-content")

    def message(self, msg_id: int) -> Locator:
        return self.tid("message-list").locator(f'[data-testid="message"][data-id="{msg_id}"]')

    def message_with(self, user: str, text: str) -> Locator:
        exact = re.compile("^" + re.escape(text) + "$")
        return self.messages(user).filter(
            has=self.page.get_by_test_id("message-content").filter(has_text=exact)
        )

    def shows_exactly(self, user: str, texts: list[str], timeout: float = RECOVER_MS) -> None:
        """The page lists exactly these messages of `user`, in this order, none pending."""
        expect(self.contents(user)).to_have_text(texts, timeout=timeout)
        expect(self.messages(user, pending=True)).to_have_count(0, timeout=timeout)
        expect(self.contents(user, pending=False)).to_have_text(texts, timeout=timeout)

    def select_transport(self, transport: str) -> None:
        self.tid("transport-select").select_option(transport)


def _serve_static_when_offline(context: BrowserContext, base: str) -> None:
    """The page and its static files keep loading while the network is cut.

    Each answer the server gave is remembered and served again when the
    server cannot be reached, as a service worker or the HTTP cache would do
    for an installed web app; the API and the streams are not touched, so
    they still fail while the proxy is cut. This lets a test reload the page
    with ops pending and no network.
    """
    cache: dict[str, dict] = {}
    # A document that did not come from the network has no address space, and
    # Chromium's Local Network Access checks then block its WebSocket to
    # 127.0.0.1: grant what a user would allow for an installed app.
    context.grant_permissions(["local-network-access"], origin=base)

    def handle(route: Route) -> None:
        url = route.request.url.split("#", 1)[0]
        try:
            response = route.fetch(timeout=5000)
        except Exception:  # noqa: BLE001 - the network is cut: serve what we had
            if url in cache:
                route.fulfill(**cache[url])
            else:
                route.abort("connectionreset")
            return
        cache[url] = {
            "status": response.status,
            "headers": response.headers,
            "body": response.body(),
        }
        route.fulfill(response=response)

    context.route(re.compile(re.escape(base) + r"/(\?.*)?$"), handle)
    context.route(re.compile(re.escape(base) + r"/static/.*"), handle)


def history(base: str, token: str, user: str, flow: str = "general") -> list[dict]:
    """Every message state of `user` in `flow`, in id order (GET /flows/{f}/messages, paged)."""
    messages: list[dict] = []
    before = None
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            params: dict[str, int] = {"limit": 500}
            if before is not None:
                params["before"] = before
            r = http.get(f"{base}/flows/{flow}/messages", params=params)
            assert r.status_code == 200, r.text
            page = r.json()["messages"]
            if not page:
                break
            messages = page + messages
            before = page[0]["id"]
    return [m for m in messages if m["user"] == user]


def history_contents(base: str, token: str, user: str, flow: str = "general") -> list[str]:
    return [m["content"] for m in history(base, token, user, flow) if not m["deleted"]]
