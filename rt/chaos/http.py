"""The lab's own few HTTP requests to the server (not through the proxy): health, guests,
heads, and reading the log at the end. Blocking urllib calls in a worker thread:
they are rare and small, and need nothing the plain install lacks."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import trio


def _request(
    method: str, url: str, token: str | None, body: Any, timeout: float
) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read(), error.code, dict(error.headers)
    except urllib.error.URLError as error:
        raise OSError(str(error.reason)) from None
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = raw
    return status, parsed, headers


async def get_json(url: str, *, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    status, body, _ = await trio.to_thread.run_sync(_request, "GET", url, token, None, timeout)
    return status, body


async def post_json(
    url: str, body: Any, *, token: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    status, parsed, _ = await trio.to_thread.run_sync(_request, "POST", url, token, body, timeout)
    return status, parsed


async def read_log(url: str, token: str, flows: list[str], client: str) -> list[dict[str, Any]]:
    """Every stored event of `flows` in id order, read from the server by long-polling from
    cursor 0 in its epoch (the log itself, not message states)."""
    base = f"{url}/stream/poll?flows={','.join(flows)}&client={client}"
    status, answer = await get_json(base, token=token, timeout=30)
    if status != 200 or not answer or answer[0].get("type") != "ready":
        raise OSError(f"reading the log: the first poll answered {status}: {answer!r:.200}")
    epoch, head = answer[0]["epoch"], answer[0]["cursor"]
    events: list[dict[str, Any]] = []
    cursor = 0
    while cursor < head:
        status, answer = await get_json(
            f"{base}&cursor={cursor}&epoch={epoch}", token=token, timeout=60
        )
        if status == 429:
            await trio.sleep(0.2)
            continue
        if status != 200:
            raise OSError(f"reading the log: a poll answered {status}: {answer!r:.200}")
        stored = [o for o in answer if isinstance(o.get("id"), int)]
        if any(o.get("type") == "ready" for o in answer):  # a new session: start over
            events, cursor = [], 0
            continue
        events += stored
        if stored:
            cursor = stored[-1]["id"]
        else:
            break
    return events
