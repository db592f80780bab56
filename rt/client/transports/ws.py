"""The `ws` transport: one WebSocket, `{"op":"ping"}` every heartbeat, a read watchdog.

Two tasks per connection: the reader waits for frames until the watchdog's
limit (no byte for 2.5 heartbeats: the connection is half-open, give it
up), and once `ready` came a pinger sends `{"op":"ping"}` at once and then
every heartbeat (the server closes a WebSocket it heard nothing from for
2.5 heartbeats). Reads are never cancelled to send a ping: over TLS a
cancelled read may leave the stream unusable. Close codes without a
`close` frame mean what PROTOCOL.md section 6 says: before `ready` they
are refusals (the HTTP status they stand for), after it stream ends.
"""

from __future__ import annotations

import trio

from rt.client.errors import NetworkError, ProtocolError
from rt.client.http import Response
from rt.client.parsers import ws_objects
from rt.client.transports.base import Closed, End, Link, Lost, Refused
from rt.client.websocket import Accepted, Message, Rejected, WebSocket
from rt.client.websocket import Closed as WsClosed

# Close codes that end a stream as a `close` reason would.
CLOSE_REASONS = {
    1001: "shutdown",
    4001: "unauthorized",
    4009: "superseded",
    4010: "lagging",
    4011: "evicted",
}
# Refusals: the HTTP status each close code stands for (the reason is the error code).
REFUSALS = {4003: 403, 4004: 404, 4400: 400, 1009: 413, 4029: 429, 1011: 500}
PING = '{"op":"ping"}'


def end_of_close(code: int, reason: str) -> End:
    """What a WebSocket close code (with no `close` frame before it) means for the stream."""
    if code in CLOSE_REASONS:
        return Closed(CLOSE_REASONS[code])
    if code in REFUSALS:
        return Refused(REFUSALS[code], reason or None, f"closed with {code} {reason}".strip())
    if code == 4408:
        return Lost("the server heard nothing from this client for 2.5 heartbeats (4408)")
    return Lost(f"the WebSocket closed with {code} {reason}".strip())


class _Pinger:
    def __init__(self, ws: WebSocket, link: Link, scope: trio.CancelScope) -> None:
        self.ws = ws
        self.link = link
        self.scope = scope
        self.error: NetworkError | None = None

    async def run(self) -> None:
        try:
            while True:
                await self.ws.send_text(PING, self.link.timeouts.write)
                await trio.sleep(self.link.heartbeat)
        except NetworkError as error:
            self.error = error
            self.scope.cancel()  # the connection is gone: end the reader too


async def run_ws(link: Link) -> End:
    t = link.timeouts
    ws = await WebSocket.connect(
        link.origin, link.target(), link.headers, connect_timeout=t.connect, write_timeout=t.write
    )
    end: End | None = None
    failure: NetworkError | None = None
    try:
        async with trio.open_nursery() as nursery:
            pinger = _Pinger(ws, link, nursery.cancel_scope)
            try:
                end = await _read(link, ws, lambda: nursery.start_soon(pinger.run))
            except NetworkError as error:
                failure = error  # raised outside the nursery: not wrapped in a group
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose(1000, timeout=0.5)
    if failure is not None:
        raise failure
    if end is None:
        return Lost(f"a ping could not be sent ({pinger.error})")
    return end


async def _read(link: Link, ws: WebSocket, start_pinger) -> End:
    accepted = False
    pinging = False
    while True:
        event = await ws.next_event(ws.last_byte + link.read_timeout(), link.timeouts.write)
        if event is None:
            if trio.current_time() >= ws.last_byte + link.read_timeout():
                what = "a byte" if link.ready else "ready"
                return Lost(f"no {what} for {link.read_timeout():.1f} s: half-open")
            continue  # bytes of a frame came meanwhile: the limit moved
        if isinstance(event, Message):
            if not accepted:
                raise ProtocolError("WebSocket: a message before the upgrade's answer")
            end = link.feed(ws_objects(event.text))
            if end is not None:
                return end
            if link.ready and not pinging:
                pinging = True
                start_pinger()
        elif isinstance(event, WsClosed):
            if not accepted:
                return Lost("the connection ended before the upgrade's answer")
            return end_of_close(event.code, event.reason)
        elif isinstance(event, Accepted):
            accepted = True
        elif isinstance(event, Rejected):
            return Refused.of(Response(event.status, event.headers, event.body))
