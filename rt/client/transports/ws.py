"""The `ws` transport: one WebSocket, `{"op":"ping"}` every heartbeat, a read watchdog.

One task per connection: the read loop waits for the next frame until the
earlier of the next ping and the watchdog's limit (no byte for 2.5
heartbeats: the connection is half-open, give it up). Close codes without
a `close` frame mean what PROTOCOL.md section 6 says: before `ready` they
are refusals (the HTTP status they stand for), after it stream ends.
"""

from __future__ import annotations

import trio

from rt.client.errors import ProtocolError
from rt.client.http import Response
from rt.client.parsers import ws_objects
from rt.client.transports.base import Closed, End, Link, Lost, Refused
from rt.client.websocket import Accepted, Message, Rejected, WebSocket
from rt.client.websocket import Closed as WsClosed

# Close codes that end a stream as a `close` reason would.
CLOSE_REASONS = {1001: "shutdown", 4001: "unauthorized", 4009: "superseded", 4010: "lagging",
                 4011: "evicted"}
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


async def run_ws(link: Link) -> End:
    t = link.timeouts
    ws = await WebSocket.connect(link.origin, link.target(), link.headers,
                                 connect_timeout=t.connect, write_timeout=t.write)
    try:
        accepted = False
        next_ping: float | None = None
        while True:
            silence_at = ws.last_byte + link.read_timeout()
            wake = silence_at if next_ping is None else min(silence_at, next_ping)
            event = await ws.next_event(wake, t.write)
            now = trio.current_time()
            if event is None:
                if now >= ws.last_byte + link.read_timeout():
                    what = "ready" if not link.ready else "a byte"
                    return Lost(f"no {what} for {link.read_timeout():.1f} s: half-open")
                if next_ping is not None and now >= next_ping:
                    await ws.send_text(PING, t.write)
                    next_ping = now + link.heartbeat
                continue
            if isinstance(event, Message):
                if not accepted:
                    raise ProtocolError("WebSocket: a message before the upgrade's answer")
                end = link.feed(ws_objects(event.text))
                if end is not None:
                    return end
                if link.ready and next_ping is None:
                    # Ping at once, then every heartbeat (the server gives up on a
                    # client it heard nothing from for 2.5 heartbeats).
                    await ws.send_text(PING, t.write)
                    next_ping = trio.current_time() + link.heartbeat
            elif isinstance(event, WsClosed):
                if not accepted:
                    return Lost("the connection ended before the upgrade's answer")
                return end_of_close(event.code, event.reason)
            elif isinstance(event, Accepted):
                accepted = True
            elif isinstance(event, Rejected):
                return Refused.of(Response(event.status, event.headers, event.body))
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose(1000, timeout=0.5)
