"""`rt.client`: a Python client of rt's wire protocol (PROTOCOL.md), for bots,
integrations and the race lab's built-in clients.

    import rt.client

    class Printer(rt.client.Listener):
        def on_event(self, event):
            print(event["id"], event["user"], event.get("content"))

    async with rt.client.connect("http://127.0.0.1:8000", token, ["general"],
                                 transport="ws", listener=Printer()) as client:
        post = client.post("general", "SUP")
        event = await post.done          # the stored event, or raises GaveUp

It talks to a server over the wire only (trio, h11, wsproto, orjson):
nothing here imports `rt.store`, `rt.hub`, `rt.service` or `rt.web`.
Modules: `http` (h11), `websocket` (wsproto), `parsers` (the seven
framings), `transports` (one runner per transport family), `outbox`,
`client`, `listener`, `recorder` and `driver` (the race lab's interface).
"""

from rt.client.client import Client, Stats, Timeouts, connect, open_client
from rt.client.errors import (
    ClientClosed,
    ClientError,
    GaveUp,
    NetworkError,
    ProtocolError,
    StreamFailed,
)
from rt.client.listener import Listener
from rt.client.outbox import Op, Post
from rt.client.recorder import LabRecorder
from rt.client.transports import TRANSPORTS

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "GaveUp",
    "LabRecorder",
    "Listener",
    "NetworkError",
    "Op",
    "Post",
    "ProtocolError",
    "Stats",
    "StreamFailed",
    "TRANSPORTS",
    "Timeouts",
    "connect",
    "open_client",
]
