"""Sans-IO framers, one per wire format (PROTOCOL.md section 3.1).

A framer turns batches of events and control frames into the bytes of its
transport. It does no I/O. `FRAMERS` maps a transport name to its framer.
"""

from rt.transports.base import STREAM_HEADERS, Framer, http_chunk, rotation_cut
from rt.transports.htmlfile import HtmlFileFramer
from rt.transports.jsonp import JsonpFramer
from rt.transports.multipart import MultipartFramer
from rt.transports.poll import PollFramer
from rt.transports.sse import SseFramer
from rt.transports.websocket import WebSocketFramer, text_frame
from rt.transports.xhr import XhrFramer

# The shared instances. Bind htmlfile and jsonp to a request's callback with
# `FRAMERS[name].for_request(callback)` (the others return themselves).
FRAMERS: dict[str, Framer] = {
    "ws": WebSocketFramer(),
    "sse": SseFramer(),
    "xhr": XhrFramer(),
    "multipart": MultipartFramer(),
    "htmlfile": HtmlFileFramer(),
    "poll": PollFramer(),
    "jsonp": JsonpFramer(),
}

# Every transport of the protocol, in the browser client's fallback order.
ALL_TRANSPORTS = ("ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile")

__all__ = [
    "ALL_TRANSPORTS",
    "FRAMERS",
    "STREAM_HEADERS",
    "Framer",
    "http_chunk",
    "rotation_cut",
    "text_frame",
]
