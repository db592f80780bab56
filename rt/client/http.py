"""HTTP/1.1 over trio sockets with h11: one connection, and a small keep-alive pool.

Every network wait is bounded: connecting (and the TLS handshake) by the
caller's connect timeout, each write by its write timeout, and each read of
the socket by a read timeout that restarts whenever a byte arrives (so a
slow but live response is never cut, and a silent one always is). A
timeout, a reset, an early close or broken HTTP all raise `NetworkError`
(`ProtocolError` for broken bytes); the connection is then unusable and is
closed. h11 removes HTTP's framing (chunked or close-delimited bodies):
`receive_data` returns body bytes only.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
import trio

from rt.client.errors import NetworkError, ProtocolError

USER_AGENT = "rt.client/1"
_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    # Made once: building a default context costs tens of milliseconds.
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


@dataclass(frozen=True)
class Origin:
    """Where an rt server is: `http(s)://host:port/prefix` (a prefix when behind a proxy)."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL of an rt server: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.prefix}"


async def open_stream(origin: Origin, timeout: float) -> trio.abc.Stream:
    """A connected TCP (or TLS) stream to `origin`, within `timeout` seconds."""
    stream: Any = None
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(origin.host, origin.port)
            if origin.tls:
                stream = trio.SSLStream(
                    stream, _ssl_context(), server_hostname=origin.host, https_compatible=True
                )
                await stream.do_handshake()
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise NetworkError(
            f"connecting to {origin} took more than {timeout:g} s", code="timeout"
        ) from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as error:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise NetworkError(f"cannot connect to {origin}: {error}") from None
    return stream


async def send_all(stream: trio.abc.Stream, data: bytes, timeout: float, what: str) -> None:
    """Write `data` within `timeout` seconds, or raise NetworkError."""
    try:
        with trio.fail_after(timeout):
            await stream.send_all(data)
    except trio.TooSlowError:
        raise NetworkError(f"{what}: a write blocked for {timeout:g} s", code="timeout") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as error:
        raise NetworkError(
            f"{what}: the connection failed ({error or type(error).__name__})"
        ) from None


async def receive_some(stream: trio.abc.Stream, timeout: float, what: str) -> bytes:
    """The next bytes from `stream` (b"" at its end) within `timeout` seconds."""
    try:
        with trio.fail_after(max(0.0, timeout)):
            return bytes(await stream.receive_some(65536))
    except trio.TooSlowError:
        raise NetworkError(
            f"{what}: no byte from the server for {timeout:g} s", code="timeout"
        ) from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as error:
        raise NetworkError(
            f"{what}: the connection failed ({error or type(error).__name__})"
        ) from None


@dataclass
class Head:
    """A response's status line and headers (names in lower case; repeats joined by ", ")."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response(Head):
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def error(self) -> tuple[str | None, str]:
        """(code, message) of an rt error body `{"error":{"code","message"}}` (None, "" if not one)."""
        body = self.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            message = err.get("message")
            return err["code"], message if isinstance(message, str) else ""
        return None, ""


class HttpConnection:
    """One HTTP/1.1 client connection. One request at a time; not for concurrent use."""

    def __init__(self, stream: trio.abc.Stream, origin: Origin) -> None:
        self._stream = stream
        self.origin = origin
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.responded = False  # a byte of a response arrived on this connection
        self.idle_since = trio.current_time()
        self._what = str(origin)

    @classmethod
    async def open(cls, origin: Origin, timeout: float) -> HttpConnection:
        return cls(await open_stream(origin, timeout), origin)

    async def send_request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeout: float,
    ) -> None:
        self._what = f"{method} {target.split('?', 1)[0]}"
        hs = [("Host", self.origin.host_header), ("User-Agent", USER_AGENT), *headers]
        if body is not None:
            hs.append(("Content-Length", str(len(body))))
        try:
            data = self._h11.send(
                h11.Request(method=method, target=self.origin.prefix + target, headers=hs)
            )
            if body:
                data += self._h11.send(h11.Data(data=body))
            data += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as error:  # our bug, or a bad header value from the caller
            raise ValueError(f"cannot send {method} {target}: {error}") from None
        await send_all(self._stream, data, timeout, self._what)

    async def _event(self, timeout: float) -> Any:
        eof = False
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                if eof:  # the connection ended mid-response: cut, not broken
                    raise NetworkError(
                        f"{self._what}: the connection closed mid-response ({error})"
                    ) from None
                raise ProtocolError(
                    f"{self._what}: the server's answer broke HTTP ({error})"
                ) from None
            if event is not h11.NEED_DATA:
                return event
            data = await receive_some(self._stream, timeout, self._what)
            if data:
                self.responded = True
            else:
                eof = True
            try:
                self._h11.receive_data(data)
            except h11.RemoteProtocolError as error:
                raise ProtocolError(f"{self._what}: {error}") from None

    async def receive_head(self, timeout: float) -> Head:
        """The response's head; `timeout` bounds each wait for bytes."""
        while True:
            event = await self._event(timeout)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return Head(event.status_code, headers)
            if isinstance(event, h11.ConnectionClosed):
                raise NetworkError(
                    f"{self._what}: the server closed the connection before answering"
                )
            raise ProtocolError(f"{self._what}: unexpected {type(event).__name__}")

    async def receive_data(self, timeout: float) -> bytes:
        """The next bytes of the body, b"" once it is complete; `timeout` bounds each read."""
        while True:
            event = await self._event(timeout)
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                return b""
            if isinstance(event, h11.ConnectionClosed):
                raise NetworkError(f"{self._what}: the connection closed mid-body")
            raise ProtocolError(f"{self._what}: unexpected {type(event).__name__}")

    async def read_body(self, timeout: float, limit: int) -> bytes:
        parts = []
        size = 0
        while chunk := await self.receive_data(timeout):
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"{self._what}: a body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def reuse(self) -> bool:
        """Whether the connection may carry another request (then it is made ready for it)."""
        h = self._h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self.idle_since = trio.current_time()
            self.responded = False
            return True
        return False

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


class HttpPool:
    """Keep-alive connections to one origin, for requests with whole bodies (ops, polls).

    `request` takes an idle connection or opens one. A reused connection
    that closes or resets before any byte of the answer (the server closed
    it while it was idle) is replaced by a fresh one, once (a timeout is not
    retried here: the caller decides what silence means). The requests sent this way
    are safe to repeat (GETs, and ops, which carry their uuid). Idle
    connections older than `idle_ttl` (below the server's keep-alive
    timeout) are closed rather than reused.
    """

    def __init__(
        self,
        origin: Origin,
        *,
        connect_timeout: float,
        write_timeout: float,
        max_idle: int = 4,
        idle_ttl: float = 4.0,
    ) -> None:
        self.origin = origin
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self._idle: deque[HttpConnection] = deque()
        self.opened = 0  # connections made, for statistics

    async def _take(self) -> HttpConnection | None:
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.idle_ttl:
                return conn
            await conn.aclose()
        return None

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        head_timeout: float,
        read_timeout: float,
        limit: int = 1 << 20,
    ) -> Response:
        """Send one request and read its whole answer (`head_timeout` bounds each wait for the
        head, `read_timeout` each wait for body bytes). Raises NetworkError."""
        headers = list(headers)
        for attempt in (0, 1):
            conn = await self._take() if attempt == 0 else None
            fresh = conn is None
            if conn is None:
                conn = await HttpConnection.open(self.origin, self.connect_timeout)
                self.opened += 1
            try:
                await conn.send_request(method, target, headers, body, self.write_timeout)
                head = await conn.receive_head(head_timeout)
                data = await conn.read_body(read_timeout, limit)
            except NetworkError as error:
                await conn.aclose()
                if not fresh and not conn.responded and error.code != "timeout":
                    continue  # a stale keep-alive connection: once more on a new one
                raise
            except BaseException:
                await conn.aclose()  # cancelled mid-request: the connection is unusable
                raise
            if len(self._idle) < self.max_idle and conn.reuse():
                self._idle.append(conn)
            else:
                await conn.aclose()
            return Response(head.status, head.headers, data)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()
