"""The seven transports of PROTOCOL.md section 3.1, as connection runners.

Each runner opens one connection (for polling: one run of polls) for a
`Link`, feeds what arrives to `link.feed`, and returns how it ended (an
`End`), or raises `NetworkError` when it failed. The client decides what
comes next (rt/client/client.py).
"""

from __future__ import annotations

from rt.client.transports.base import Closed, End, Link, Lost, Refused
from rt.client.transports.httpstream import run_http_stream
from rt.client.transports.polling import run_polling
from rt.client.transports.ws import run_ws

TRANSPORTS = ("ws", "sse", "xhr", "multipart", "htmlfile", "poll", "jsonp")
STREAMING = ("ws", "sse", "xhr", "multipart", "htmlfile")
POLLING = ("poll", "jsonp")

RUNNERS = {
    "ws": run_ws,
    "sse": run_http_stream,
    "xhr": run_http_stream,
    "multipart": run_http_stream,
    "htmlfile": run_http_stream,
    "poll": run_polling,
    "jsonp": run_polling,
}

__all__ = [
    "Closed",
    "End",
    "Link",
    "Lost",
    "Refused",
    "RUNNERS",
    "TRANSPORTS",
    "STREAMING",
    "POLLING",
]
