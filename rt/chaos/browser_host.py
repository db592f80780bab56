"""`python -m rt.chaos.browser_host`: rt.js clients under test, one headless Chromium page each.

The race lab's `--builtin browser` (rt/chaos/browser.py) starts one of
these per run; it hosts every browser client of the run in one Chromium
(Debian's, driven by Playwright: never a downloaded browser), a page each,
and speaks JSON lines with the lab:

- in, on stdin: `{"open": LAB_ID, "url": RT_URL, "token": T, "flows": [...],
  "transport": T}` opens a page; `{"to": LAB_ID, "cmd": CMD}` hands it a
  command of LAB.md section 2 (`post`, `stop`);
- out, on stdout: `{"from": LAB_ID, "rec": REC}` for each record the page
  makes (LAB.md section 2's `view`, `seen`, `acked`, `gave_up`, `stopped`),
  and `{"from": LAB_ID, "exit": CODE}` when the page is done.

Each page is served at `RT_URL/__rt_lab__` by Playwright itself (a routed
request: the server is not asked), so it has the proxy listener's origin and
rt.js (loaded from the server through the proxy, like any page would) talks
to the lab's proxy. The page maps rt.js's public surface (PROTOCOL.md
section 7) to the lab's records: a `view` at the first `open` and at the
first `open` after each `reset`, with `rt.cursor`; a `seen` per `event`; an
`acked` or `gave_up` when a post's `done` settles; `stopped` once every post
asked for has settled after `stop`. Console messages go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

PAGE = """<!doctype html><meta charset="utf-8"><title>rt lab client</title>
<script type="module">
import { connect } from "/static/rt.js";
const record = (rec) => window.rtLabRecord(rec);
let rt = null, viewDue = true, stopping = false, unsettled = 0;
const settle = () => { if (--unsettled === 0 && stopping) record({ stopped: true }); };
window.rtLab = {
  start(o) {
    rt = connect({ url: location.origin, token: o.token, flows: o.flows,
                   transport: o.transport, history: 1 });
    rt.on("reset", () => { viewDue = true; });
    rt.on("state", (s) => {
      if (s === "open" && viewDue) { viewDue = false; record({ view: rt.cursor }); }
    });
    rt.on("event", (e) => record({ seen: e }));
  },
  post(flow, content) {
    unsettled++;
    const p = rt.post(flow, content);
    p.done.then((e) => { record({ acked: content, id: e.id }); settle(); },
                (err) => { record({ gave_up: content, error: err.code || "error" }); settle(); });
  },
  stop() {
    stopping = true;
    if (unsettled === 0) record({ stopped: true });
  },
};
window.rtLabReady = true;
</script>"""

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    # The page is routed by Playwright, not fetched: Chromium would count it
    # as public and block its requests to the loopback proxy.
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
]
CHROMIUM = os.environ.get("RT_CHROMIUM", "/usr/bin/chromium")


def write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> int:
    from playwright.async_api import async_playwright

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        pages: dict[str, Any] = {}

        async def open_page(lab_id: str, url: str, opts: dict[str, Any]) -> None:
            context = await browser.new_context()
            page = await context.new_page()

            def on_record(rec: dict[str, Any]) -> None:
                write({"from": lab_id, "rec": rec})
                if rec.get("stopped"):
                    write({"from": lab_id, "exit": 0})

            await page.expose_function("rtLabRecord", on_record)
            page.on(
                "console",
                lambda m: print(
                    f"{lab_id} console {m.type}: {m.text}", file=sys.stderr, flush=True
                ),
            )
            page.on(
                "pageerror",
                lambda e: print(f"{lab_id} page error: {e}", file=sys.stderr, flush=True),
            )
            await page.route(
                url + "/__rt_lab__",
                lambda route: route.fulfill(
                    status=200, content_type="text/html; charset=utf-8", body=PAGE
                ),
            )
            await page.goto(url + "/__rt_lab__")
            await page.wait_for_function("window.rtLabReady === true", timeout=30000)
            await page.evaluate("(o) => window.rtLab.start(o)", opts)
            pages[lab_id] = page

        while line := await reader.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "open" in message:
                try:
                    await open_page(
                        message["open"],
                        message["url"],
                        {
                            "token": message["token"],
                            "flows": message["flows"],
                            "transport": message["transport"],
                        },
                    )
                except Exception as error:  # the page could not start: say so, go on
                    print(
                        f"{message['open']}: the page did not start: {error}",
                        file=sys.stderr,
                        flush=True,
                    )
                    write({"from": message["open"], "exit": 1})
                continue
            page = pages.get(message.get("to"))
            cmd = message.get("cmd") or {}
            if page is None:
                continue
            try:
                if cmd.get("cmd") == "post":
                    await page.evaluate(
                        "([f, c]) => window.rtLab.post(f, c)", [cmd.get("flow"), cmd.get("content")]
                    )
                elif cmd.get("cmd") == "stop":
                    await page.evaluate("() => window.rtLab.stop()")
            except Exception as error:
                print(f"{message.get('to')}: {error}", file=sys.stderr, flush=True)
        await browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
