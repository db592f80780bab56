"""The fault proxy's control API: JSON over HTTP/1.1 on a port of its own, as with Toxiproxy.

    async with open_control(proxy, "127.0.0.1", 0) as control:
        host, port = control.address

Routes (every answer is a JSON object; errors are `{"error": message}`):

| route                 | answer |
|-----------------------|--------|
| `GET /`               | 200 `{"routes": [...]}`: this table |
| `GET /connections`    | 200 `{"connections": [...]}`: every open connection (`Connection.info`) |
| `GET /faults`         | 200 `{"faults": [...]}`: the lasting faults in force (`ActiveFault.to_json`) |
| `POST /faults`        | 201 the fault started: body `{"spec": "stall:for=3s:scope=all"}` (one fault of the `--faults` grammar, optional `"seed": N` for its choice of targets); it starts now, lasts its `for`, and the answer has its `id` and the `conns` it hit |
| `DELETE /faults/{id}` | 200 the fault, stopped now; 404 if no such fault is in force |
| `DELETE /faults`      | 200 `{"stopped": [...]}`: every lasting fault, stopped now |

Bad input is the caller's: 400 (bad JSON, a bad spec, a process fault, a
bad id), 404 (no such route or fault), 405 (with `Allow`), 413 (a body over
MAX_BODY). The server is HTTP/1.1 with keep-alive, written on h11 (no web
framework: the proxy process stays small); it listens on 127.0.0.1 unless
told otherwise, and nothing in it authenticates, so keep it on loopback.

`ControlAPI.handle` is the routing, data in and data out; `open_control`
puts it on a socket.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import trio

from rt.chaos.faults import FaultSpecError
from rt.chaos.proxy import FaultProxy

MAX_BODY = 64 * 1024  # bytes; a fault spec is a line
IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may sit without a request
ROUTES = [
    "GET /",
    "GET /connections",
    "GET /faults",
    "POST /faults",
    "DELETE /faults/{id}",
    "DELETE /faults",
]

Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]  # status, body, extra headers


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    return status, {"error": message}, headers or []


class ControlAPI:
    """The routes over a running `FaultProxy`. `seed` seeds the targets of
    faults started here that bring no seed of their own: the n-th one
    started gets the same seed on every run with the same `seed`."""

    def __init__(self, proxy: FaultProxy, seed: int = 0) -> None:
        self.proxy = proxy
        self.seed = seed
        self._started = 0

    def handle(self, method: str, target: str, body: bytes) -> Answer:
        path = target.split("?", 1)[0]
        if path != "/":
            path = path.rstrip("/")
        if path == "/":
            return self._allow(method, ["GET"]) or (200, {"routes": ROUTES}, [])
        if path == "/connections":
            return self._allow(method, ["GET"]) or (
                200,
                {"connections": [c.info() for c in self.proxy.connections()]},
                [],
            )
        if path == "/faults":
            refused = self._allow(method, ["GET", "POST", "DELETE"])
            if refused:
                return refused
            if method == "GET":
                return 200, {"faults": [f.to_json() for f in self.proxy.faults()]}, []
            if method == "POST":
                return self._post_fault(body)
            return 200, {"stopped": [f.to_json() for f in self.proxy.stop_all()]}, []
        if path.startswith("/faults/"):
            refused = self._allow(method, ["DELETE"])
            if refused:
                return refused
            text = path[len("/faults/") :]
            if not text.isdigit():
                return _error(
                    400,
                    f"fault ids are integers, not {text!r}: GET /faults lists the faults in force",
                )
            fault = self.proxy.stop(int(text))
            if fault is None:
                return _error(
                    404,
                    f"no fault {text} in force (an instant cut, or one that "
                    f"stopped already): GET /faults lists them",
                )
            return 200, fault.to_json(), []
        return _error(404, f"no route {path!r}: the routes are {', '.join(ROUTES)}")

    @staticmethod
    def _allow(method: str, allowed: list[str]) -> Answer | None:
        if method in allowed:
            return None
        return _error(
            405,
            f"{method} is not allowed here: use {', '.join(allowed)}",
            [("Allow", ", ".join(allowed))],
        )

    def _post_fault(self, body: bytes) -> Answer:
        example = 'such as {"spec": "stall:for=3s:scope=all"}'
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"the body must be a JSON object, {example} ({exc})")
        if not isinstance(request, dict) or not isinstance(request.get("spec"), str):
            return _error(400, f'the body must be a JSON object with a string "spec", {example}')
        unknown = sorted(set(request) - {"spec", "seed"})
        if unknown:
            return _error(
                400,
                f'unknown field(s) {", ".join(unknown)}: the body takes "spec" '
                f'and, optionally, an integer "seed"',
            )
        seed = request.get("seed")
        if seed is None:
            seed = random.Random(f"rt-chaos-control:{self.seed}:{self._started}").getrandbits(32)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            return _error(400, f'"seed" must be an integer, not {seed!r}')
        try:
            fault = self.proxy.start_spec(request["spec"], seed)
        except FaultSpecError as exc:
            return _error(400, str(exc))
        self._started += 1
        return 201, fault.to_json(), []


class ControlServer:
    """The control API on a socket; `address` is where it listens."""

    def __init__(self, api: ControlAPI, address: tuple[str, int]) -> None:
        self.api = api
        self.address = address

    async def serve_one(self, stream: trio.SocketStream) -> None:
        """Answer one client's requests until it closes, goes idle or breaks the protocol."""
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT):
                    request = await self._read_request(stream, conn)
                    if request is None:
                        return
                    method, target, body = request
                    status, payload, headers = self.api.handle(method, target, body)
                    await _respond(stream, conn, status, payload, headers)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # timed out mid-request, or one side asked to close
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                # The request was not read to its end: answer, then close.
                await _respond(
                    stream,
                    conn,
                    exc.error_status_hint,
                    {"error": f"bad HTTP request: {exc}"},
                    [("Connection", "close")],
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[str, str, bytes] | None:
        event = await _next_event(stream, conn)
        if not isinstance(event, h11.Request):
            return None  # the client closed between requests
        body = b""
        while True:
            if conn.client_is_waiting_for_100_continue:
                await stream.send_all(
                    conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            part = await _next_event(stream, conn)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError(
                        f"the body is over {MAX_BODY} bytes; a fault spec is one line",
                        error_status_hint=413,
                    )
            elif isinstance(part, h11.EndOfMessage):
                return (
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    body,
                )
            else:
                return None


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def _respond(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    payload: dict[str, Any],
    headers: list[tuple[str, str]],
) -> None:
    body = json.dumps(payload).encode() + b"\n"
    head = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *headers,
    ]
    data = conn.send(h11.Response(status_code=status, headers=head))
    data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


@asynccontextmanager
async def open_control(
    proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0
) -> AsyncIterator[ControlServer]:
    """Serve the control API over `proxy` on (host, port) (port 0: an
    ephemeral one, see `.address`) until the block is left."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host=host)
        for extra in listeners[1:]:
            await extra.aclose()  # one address, so `.address` says where it is
        address = tuple(listeners[0].socket.getsockname()[:2])
        server = ControlServer(ControlAPI(proxy, seed), address)
        nursery.start_soon(partial(trio.serve_listeners, server.serve_one, listeners[:1]))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
