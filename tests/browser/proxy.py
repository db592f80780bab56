"""A TCP proxy on 127.0.0.1 that a test can cut and restore (threads and sockets only).

The browser talks to the proxy's port; the proxy forwards each connection to
the rt server's port. `cut()` drops every open connection (with a reset, as a
network failure would) and turns new ones away at once until `restore()`.
The upstream port stays the same across server restarts, so a restarted
server is reached again without the browser noticing anything but failures.
"""

from __future__ import annotations

import socket
import struct
import threading

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(sock: socket.socket, wake: bool = False) -> None:
    """Close a socket abruptly (RST), ignoring a socket that is gone already.

    With `wake`, `shutdown` first: it wakes a thread blocked in `recv` on it,
    which `close` alone does not do on Linux (the socket would live on until
    that thread returns); the RST then goes when the last reference does.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    if wake:
        _close(sock)
        return
    try:
        sock.close()
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    """Close a socket, waking any thread blocked on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: the browser's socket and the one to the server."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        self.closed = False
        self.half_closed = 0

    def start(self) -> None:
        for src, dst in ((self.client, self.upstream), (self.upstream, self.client)):
            threading.Thread(
                target=self._pump, args=(src, dst), daemon=True, name="proxy-pump"
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            self.close(abrupt=True)
            return
        # A clean end of one direction: pass the FIN on; when both ended, close.
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            self.half_closed += 1
            both = self.half_closed >= 2
        if both:
            self.close(abrupt=False)

    def close(self, abrupt: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if abrupt:
                _reset(sock, wake=True)
            else:
                _close(sock)
        self.proxy._forget(self)


class TcpProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`upstream_port`, with `cut()` and `restore()`."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._cut = False
        self._stopped = False
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stop
            if self._stopped:
                _reset(client)
                return
            threading.Thread(
                target=self._open, args=(client,), daemon=True, name="proxy-open"
            ).start()

    def _open(self, client: socket.socket) -> None:
        if self._cut:
            self.refused += 1
            _reset(client)
            return
        try:
            upstream = socket.create_connection((self.host, self.upstream_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            # The server is down (killed, restarting): the browser sees a reset.
            self.refused += 1
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, client, upstream)
        with self._lock:
            if self._cut or self._stopped:
                refuse = True
            else:
                refuse = False
                self._pairs.add(pair)
                self.accepted += 1
        if refuse:
            self.refused += 1
            _reset(client)
            _reset(upstream)
            return
        pair.start()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Drop every connection (reset) and turn new ones away until `restore()`."""
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close(abrupt=True)

    def drop_all(self) -> None:
        """Drop every open connection once, without turning new ones away."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close(abrupt=True)

    def restore(self) -> None:
        """Accept and forward new connections again."""
        self._cut = False

    def close(self) -> None:
        self._stopped = True
        self.cut()
        _close(self._listener)
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
