"""Real clients for in-process servers: httpx for HTTP, trio-websocket, an SSE reader.

Every helper that waits takes a deadline from the caller's `trio.fail_after`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from rt.config import Config
from rt.web.server import Server, open_server

# No drain on shutdown: tests that look at draining drive it themselves
# (Service.begin_shutdown) or run `rt serve` as a subprocess.
TEST_CONFIG = dict(host="127.0.0.1", port=0, db=":memory:", guests=True, drain_seconds=0.0)


@asynccontextmanager
async def serve_rt(**overrides: Any) -> AsyncIterator[Server]:
    """An rt server on 127.0.0.1 with an ephemeral port, shut down on exit."""
    hooks = overrides.pop("hooks", None)
    backend = overrides.pop("backend", None)
    config = Config(**{**TEST_CONFIG, **overrides})
    async with open_server(config, backend=backend, hooks=hooks) as server:
        yield server


def client_id() -> str:
    return "c" + secrets.token_hex(10)


def uuid() -> str:
    return "u" + secrets.token_hex(8)


class Api:
    """An HTTP client for one user."""

    def __init__(self, server: Server, token: str | None = None) -> None:
        self.server = server
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def post(self, flow: str, content: str, uid: str | None = None) -> httpx.Response:
        return await self.http.post(
            f"/flows/{flow}/messages", json={"content": content, "uuid": uid or uuid()}
        )

    async def ticket(self, client: str) -> str:
        r = await self.http.post("/auth/ticket", json={"client": client})
        assert r.status_code == 200, r.text
        return r.json()["ticket"]

    async def history(self, flow: str, **params: Any) -> dict[str, Any]:
        r = await self.http.get(f"/flows/{flow}/messages", params=params)
        assert r.status_code == 200, r.text
        return r.json()


async def new_user(server: Server, name: str) -> Api:
    token = await server.service.directory.create_user(name)
    return Api(server, token)


async def new_flow(server: Server, name: str, **kwargs: Any) -> None:
    await server.service.directory.create_flow(name, **kwargs)


def stream_query(
    flows: list[str], client: str, cursor: int | None = None, epoch: str | None = None, **extra: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"flows": ",".join(flows), "client": client, **extra}
    if cursor is not None:
        params["cursor"] = cursor
    if epoch is not None:
        params["epoch"] = epoch
    return params


class WsClient:
    """A WebSocket stream: `next()` returns one decoded object at a time."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._pending: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        while not self._pending:
            message = await self.conn.get_message()
            self._pending = [json.loads(line) for line in message.split("\n") if line]
        return self._pending.pop(0)

    async def send(self, obj: dict[str, Any]) -> None:
        await self.conn.send_message(json.dumps(obj))

    async def until(self, predicate) -> dict[str, Any]:
        while True:
            obj = await self.next()
            if predicate(obj):
                return obj


@asynccontextmanager
async def ws_stream(
    api: Api, flows: list[str], client: str | None = None, **params: Any
) -> AsyncIterator[WsClient]:
    client = client or client_id()
    query = httpx.QueryParams(stream_query(flows, client, **params))
    url = f"{api.server.ws_url}/stream/ws?{query}"
    headers = [("Authorization", f"Bearer {api.token}")] if api.token else []
    async with open_websocket_url(url, extra_headers=headers) as conn:
        yield WsClient(conn)


class SseClient:
    """Server-Sent Events parsed as the WHATWG spec says (enough for rt's frames)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.last_id: str | None = None
        self.retry: int | None = None

    async def next_event(self) -> tuple[str, dict[str, Any], str | None]:
        """(event name, decoded data, id) of the next dispatched event."""
        name, data, event_id = "message", [], None
        async for line in self._lines:
            if line == "":
                if data:
                    return name, json.loads("\n".join(data)), event_id
                name, data, event_id = "message", [], None
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
            elif field == "id":
                event_id = self.last_id = value
            elif field == "retry":
                self.retry = int(value)
        raise EOFError("the SSE stream ended")

    async def next(self) -> dict[str, Any]:
        return (await self.next_event())[1]

    async def until(self, predicate) -> dict[str, Any]:
        while True:
            obj = await self.next()
            if predicate(obj):
                return obj


@asynccontextmanager
async def sse_stream(
    api: Api,
    flows: list[str],
    client: str | None = None,
    headers: dict[str, str] | None = None,
    use_ticket: bool = True,
    **params: Any,
) -> AsyncIterator[SseClient]:
    client = client or client_id()
    query = stream_query(flows, client, **params)
    http_headers = dict(headers or {})
    async with httpx.AsyncClient(base_url=api.server.url, timeout=30) as http:
        if use_ticket:
            # On this stream's own client, so closing the stream closes every
            # connection it opened (the task-tree checks rely on that).
            r = await http.post(
                "/auth/ticket",
                json={"client": client},
                headers={"Authorization": f"Bearer {api.token}"},
            )
            assert r.status_code == 200, r.text
            query["ticket"] = r.json()["ticket"]
        else:
            http_headers["Authorization"] = f"Bearer {api.token}"
        async with http.stream("GET", "/stream/sse", params=query, headers=http_headers) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            yield SseClient(r)


async def wait_for(predicate, interval: float = 0.01) -> None:
    """Poll a cheap in-process condition until it holds (the caller sets the deadline)."""
    while not predicate():
        await trio.sleep(interval)
