"""What can go wrong in `rt.client`, and whose fault it is.

- `NetworkError`: the connection failed, was cut or went silent (nobody's
  fault in particular). Transient: the client reconnects and the outbox
  retries, with the same uuid.
- `ProtocolError` (a `NetworkError`): the server, or something between it
  and us, sent bytes that break PROTOCOL.md. Handled like a network failure
  (a fault proxy that cuts a frame short looks the same), and logged.
- `StreamFailed`: the server refused the stream for good (401, 403, 404,
  400, `unauthorized`): the caller's token, flows or parameters are wrong.
  The stream stops; fix the cause and connect again.
- `GaveUp`: an op will not be retried (a 4xx, or the client stopped first).
- `ClientClosed`: an op was asked of a client that is stopping.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """The base of every error `rt.client` raises. `code` names it (a PROTOCOL.md
    error code such as `not_found`, or one of the client's own: `network`,
    `protocol`, `stopped`, `timeout`, `closed`)."""

    code = "client"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NetworkError(ClientError):
    """The connection failed, closed early or timed out. Retried."""

    code = "network"


class ProtocolError(NetworkError):
    """The peer's bytes break the HTTP, WebSocket or rt framing. Retried like a network error."""

    code = "protocol"


class StreamFailed(ClientError):
    """The server refused this client's stream for good; it will not reconnect.

    `code` is the server's error code (`unauthorized`, `forbidden`,
    `not_found`, `bad_request`, ...), `status` the HTTP status (or the one a
    WebSocket close code stands for), when there was one.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class GaveUp(ClientError):
    """An op (`post`, `edit`, `tag`, `delete`) will not be retried.

    `code`: the server's error code (`bad_request`, `unauthorized`,
    `forbidden`, `not_found`, `exists`, `deleted`, `uuid_mismatch`,
    `too_large`, `http_<status>` for a status without rt's JSON), or
    `stopped` (the client stopped before the op was acknowledged: it may or
    may not be stored) or `timeout` (it was retried for `give_up_after`
    seconds). `status` is the HTTP status when the server answered.
    """

    def __init__(
        self, code: str, message: str, *, status: int | None = None, op: Any = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.op = op


class ClientClosed(ClientError):
    """The client is stopping or stopped: it takes no new ops."""

    code = "closed"
