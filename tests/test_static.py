"""The browser client as files: native modules served as they are, with validators.

rt.js is the public entry point; its code lives in ES modules under
rt/static/rt/ (issue 12). The demo page preloads every one of them, every
one is served with a JavaScript type and an ETag, and the WebSocket refusal
table the client uses is the one the tests' clients use.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import trio

from tests.clients import WS_REFUSALS
from tests.helpers import serve_rt

STATIC = Path(__file__).resolve().parents[1] / "rt" / "static"


def modules() -> list[str]:
    return sorted(
        "/static/" + p.relative_to(STATIC).as_posix() for p in (STATIC / "rt").rglob("*.js")
    )


def test_the_demo_page_preloads_every_module() -> None:
    page = (STATIC / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="([^"]+)">', page))
    assert len(modules()) >= 10
    assert preloaded == {"/static/rt.js", *modules()}


def test_every_module_import_names_a_module_that_exists() -> None:
    for path in [STATIC / "rt.js", *(STATIC / "rt").rglob("*.js")]:
        for target in re.findall(r'from "(\.[^"]+)"', path.read_text()):
            assert (path.parent / target).resolve().is_file(), (path, target)


def test_the_websocket_refusal_tables_agree() -> None:
    source = (STATIC / "rt" / "transports" / "index.js").read_text()
    table = re.search(r"WS_REFUSALS = (\{[^}]*\})", source)
    assert table is not None
    in_rt_js = ast.literal_eval(re.sub(r"(\d+):", r"\1:", table[1]))
    assert in_rt_js == WS_REFUSALS


async def test_static_files_have_etags_and_answer_304_when_unchanged() -> None:
    with trio.fail_after(10):
        async with serve_rt() as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                for path in ["/static/rt.js", *modules()]:
                    r = await http.get(path)
                    assert r.status_code == 200, path
                    assert r.headers["content-type"].startswith("text/javascript")
                    assert r.headers["cache-control"] == "no-cache"
                    etag = r.headers["etag"]
                    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
                    again = await http.get(path, headers={"If-None-Match": etag})
                    assert again.status_code == 304 and again.content == b""
                    assert again.headers["etag"] == etag
                    weak = await http.get(path, headers={"If-None-Match": f'"x", W/{etag}'})
                    assert weak.status_code == 304
                    other = await http.get(path, headers={"If-None-Match": '"stale"'})
                    assert other.status_code == 200 and other.content == r.content
                page = await http.get("/")
                assert page.status_code == 200 and "etag" in page.headers
