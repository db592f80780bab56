"""Sans-IO framers, one per wire format (PROTOCOL.md section 3.1).

A framer turns batches of events and control frames into the bytes of its
transport. It does no I/O. `FRAMERS` maps a transport name to its framer.
"""

from rt.transports.base import STREAM_HEADERS, Framer
from rt.transports.sse import SseFramer
from rt.transports.websocket import WebSocketFramer

FRAMERS: dict[str, Framer] = {
    "ws": WebSocketFramer(),
    "sse": SseFramer(),
}

# Every transport of the protocol, in the browser client's fallback order.
ALL_TRANSPORTS = ("ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile")

__all__ = ["ALL_TRANSPORTS", "FRAMERS", "STREAM_HEADERS", "Framer"]
