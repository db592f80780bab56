"""Incremental parsers of the seven framings of PROTOCOL.md section 3.1 (pure: bytes in,
objects out).

Each parser takes the body bytes of one response (after HTTP's own framing,
which h11 removes) in pieces cut anywhere, a byte at a time included, and
returns from each `feed` the objects that piece completed, in order. A
stream's objects are JSON objects (stored events, ephemeral events, control
frames); heartbeats produce nothing (the watchdog counts bytes, not
objects). Bytes that break the framing raise `ProtocolError`: the caller
drops the connection and resumes from its cursor, so nothing half-parsed is
ever delivered.

Every delimiter looked for (`\\r`, `\\n`, `--B`, `<script>`, `]);`) is ASCII,
and an ASCII byte never occurs inside a multi-byte UTF-8 character, so the
parsers split bytes and orjson decodes (and validates) each object whole:
no incremental text decoder is needed.

- ws: `ws_objects(text)`, the objects of one text message (the WebSocket
  layer reassembles messages; rt/client/websocket.py).
- xhr: `NdjsonParser`; sse: `SseParser`; multipart: `MultipartParser`;
  htmlfile: `HtmlFileParser`; poll: `PollParser`; jsonp: `JsonpParser`
  (the polling ones hold the body until `end()`, which returns the answer).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from rt.client.errors import ProtocolError

# A part, a script or an answer longer than this is not rt's (its objects are
# at most a few hundred KiB even in a catch-up page of big messages).
MAX_PENDING = 16 * 1024 * 1024


def _objects(raw: bytes | bytearray, where: str) -> list[dict[str, Any]]:
    """The objects of a JSON array (`[OBJ,...]`)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"{where}: not JSON ({error}): {bytes(raw[:80])!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProtocolError(f"{where}: not an array of objects: {bytes(raw[:80])!r}")
    return value


def _object(raw: bytes | bytearray | str, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"{where}: not JSON ({error}): {raw[:80]!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: not a JSON object: {raw[:80]!r}")
    return value


def _check_size(buf: bytearray, where: str) -> None:
    if len(buf) > MAX_PENDING:
        raise ProtocolError(f"{where}: more than {MAX_PENDING} bytes without an end")


def ws_objects(text: str) -> list[dict[str, Any]]:
    """The objects of one WebSocket text message: one or more OBJ separated by `\\n`."""
    if "\n" not in text:
        return [_object(text, "ws message")] if text.strip() else []
    return [_object(line, "ws message") for line in text.split("\n") if line.strip()]


class NdjsonParser:
    """xhr: `OBJ\\n` per object; a lone `\\n` is a heartbeat. A `\\r` before `\\n` is allowed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        buf += data
        if b"\n" not in data:
            _check_size(buf, "xhr stream")
            return []
        *lines, rest = buf.split(b"\n")
        self._buf = bytearray(rest)
        _check_size(self._buf, "xhr stream")
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():
                out.append(_object(line, "xhr stream"))
        return out


_LINE_END = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


class SseParser:
    """Server-Sent Events as the WHATWG event-stream parser reads them.

    Lines end with CRLF, LF or CR (a CR's LF may come in the next piece);
    `data` lines join with `\\n`; an event dispatches at a blank line if it
    has data; comments (`: hb`) and unknown fields dispatch nothing. Each
    dispatched event's data must be one JSON object: the object is what
    `feed` returns (its `type` says what it is; the `event:` name is kept in
    `last_event_type`). `last_event_id` and `retry` (ms) are the last seen.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._first = True
        self._skip_lf = False
        self._data: list[bytes] = []
        self._event = b""
        self._scan = 0  # no line end before this offset of the buffer
        self.last_event_id = ""
        self.last_event_type = ""
        self.retry: int | None = None
        self.comments = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        buf += data
        if self._first:
            if len(buf) < 3 and _BOM.startswith(buf):
                return []
            if buf.startswith(_BOM):
                del buf[:3]
            self._first = False
        out: list[dict[str, Any]] = []
        i = 0
        n = len(buf)
        while True:
            if self._skip_lf and i < n:
                if buf[i] == 0x0A:
                    i += 1
                self._skip_lf = False
            # From where the last search stopped: a long line arriving a byte at a
            # time is scanned once, not once a byte.
            m = _LINE_END.search(buf, max(i, self._scan))
            self._scan = 0
            if m is None:
                self._scan = n - i
                break
            j = m.start()
            self._line(bytes(buf[i:j]), out)
            if buf[j] == 0x0D:
                self._skip_lf = True
            i = j + 1
        del buf[:i]
        _check_size(buf, "sse stream")
        return out

    def _line(self, line: bytes, out: list[dict[str, Any]]) -> None:
        if not line:
            if self._data:
                out.append(_object(b"\n".join(self._data), "sse event"))
                self.last_event_type = self._event.decode("utf-8", "replace") or "message"
            self._data = []
            self._event = b""
            return
        if line[0] == 0x3A:  # ":" a comment: the heartbeat
            self.comments += 1
            return
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
        elif field == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif field == b"retry":
            if value.isdigit():
                self.retry = int(value)


_PADDING = re.compile(rb"[ \t]*\r?")


def boundary_of(content_type: str | None) -> str | None:
    """The boundary of a `multipart/...; boundary=B` Content-Type (quoted or not), or None."""
    if not content_type:
        return None
    m = re.search(r';\s*boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', content_type, re.I)
    if m is None:
        return None
    return m.group(1) or m.group(2)


class MultipartParser:
    """XHR multipart (RFC 2046 delimiters `CRLF--B`): one part per batch, each `[OBJ,...]`.

    The body is `--B\\r\\nContent-Type: application/json\\r\\n\\r\\n[OBJ,...]\\r\\n`
    per part and `--B--\\r\\n` at the end (`closed` turns true). Since OBJ
    never holds a raw CR or LF, a part's body ends at its first CRLF: each
    part is handed over when that CRLF arrives, and the next delimiter must
    follow at once. A heartbeat is a part holding `[]`.
    """

    def __init__(self, boundary: str) -> None:
        if not boundary:
            raise ValueError("multipart: no boundary")
        self._delim = b"--" + boundary.encode("ascii")
        self._buf = bytearray()
        self._state = "start"
        self._type = b""
        self._scan = 0  # no CRLF before this offset of a body still arriving
        self.closed = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        buf += data
        delim = self._delim
        out: list[dict[str, Any]] = []
        while True:
            state = self._state
            if state == "start":
                # The first delimiter may stand at the very start of the body.
                if buf.startswith(delim):
                    del buf[: len(delim)]
                    self._state = "boundary"
                    continue
                if len(buf) < len(delim) and delim.startswith(buf):
                    break
                i = buf.find(b"\r\n" + delim)
                if i < 0:  # a preamble: keep only what may start the delimiter
                    del buf[: max(0, len(buf) - len(delim) - 1)]
                    break
                del buf[: i + 2 + len(delim)]
                self._state = "boundary"
            elif state == "boundary":
                # After `--B`: `--` closes; else optional padding, then CRLF.
                if len(buf) < 2:
                    break
                if buf.startswith(b"--"):
                    self.closed = True
                    self._state = "done"
                    continue
                i = buf.find(b"\r\n")
                if i < 0:
                    if _PADDING.fullmatch(buf):
                        break
                    raise ProtocolError(f"multipart: bad delimiter line {bytes(buf[:80])!r}")
                if buf[:i].strip(b" \t"):
                    raise ProtocolError(f"multipart: bad delimiter line {bytes(buf[:i])!r}")
                del buf[: i + 2]
                self._state = "headers"
                self._type = b"application/json"
            elif state == "headers":
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 8192:
                        raise ProtocolError("multipart: a part's headers never end")
                    break
                line = bytes(buf[:i])
                del buf[: i + 2]
                if not line:
                    self._state = "body"
                    self._scan = 0
                    continue
                name, colon, value = line.partition(b":")
                if not colon:
                    raise ProtocolError(f"multipart: bad part header {line[:80]!r}")
                if name.strip().lower() == b"content-type":
                    self._type = value.strip().lower()
            elif state == "body":
                # From where the last search stopped: a big part (a catch-up batch)
                # that arrives a byte at a time is then scanned once, not once a byte.
                i = buf.find(b"\r\n", self._scan)
                if i < 0:
                    self._scan = max(0, len(buf) - 1)
                    _check_size(buf, "multipart part")
                    break
                if b"json" not in self._type:
                    raise ProtocolError(f"multipart: a part of type {self._type!r}, not JSON")
                out.extend(_objects(buf[:i], "multipart part"))
                del buf[: i + 2]
                self._state = "delim"
            elif state == "delim":
                if len(buf) < len(delim):
                    if delim.startswith(buf):
                        break
                    raise ProtocolError("multipart: a part's body went on past its first CRLF")
                if not buf.startswith(delim):
                    raise ProtocolError("multipart: a part's body went on past its first CRLF")
                del buf[: len(delim)]
                self._state = "boundary"
            else:  # done: the epilogue is ignored
                buf.clear()
                break
        return out


_SCRIPT_OPEN = b"<script>p("
_SCRIPT_END = b"</script>"
_HTML_END = b"</body></html>"
_WHITESPACE = b" \t\r\n\f"


class HtmlFileParser:
    """HTMLFile: a preamble (at least 1024 bytes, binding `p` to `parent.F`), then
    `<script>p([OBJ,...]);</script>\\n` per batch, `</body></html>\\n` at the end.

    Given `callback` (the `?callback=F` sent), the preamble must hold
    `var p=parent.F;`. After it, only whitespace, `p(...)` scripts and the
    closing tags may come: anything else raises ProtocolError. OBJ writes
    `<` as `\\u003c`, so the first `</script>` after `<script>p(` ends the script.
    """

    def __init__(self, callback: str | None = None) -> None:
        self._binding = b"var p=parent." + callback.encode("ascii") + b";" if callback else None
        self._buf = bytearray()
        self._preamble = True
        self._scan = 0
        self.closed = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        buf += data
        out: list[dict[str, Any]] = []
        while True:
            if self._preamble:
                i = buf.find(_SCRIPT_OPEN, self._scan)
                if i < 0:
                    self._scan = max(0, len(buf) - len(_SCRIPT_OPEN) + 1)
                    if len(buf) > 65536:
                        raise ProtocolError("htmlfile: no p(...) script in the first 64 KiB")
                    break
                if self._binding is not None and self._binding not in buf[:i]:
                    raise ProtocolError("htmlfile: the preamble does not bind p to the callback")
                del buf[:i]
                self._preamble = False
                self._scan = 0
                continue
            start = 0
            while start < len(buf) and buf[start] in _WHITESPACE:
                start += 1
            if start:
                del buf[:start]
            if not buf:
                break
            if buf.startswith(_SCRIPT_OPEN):
                j = buf.find(_SCRIPT_END, max(len(_SCRIPT_OPEN), self._scan))
                if j < 0:
                    self._scan = max(len(_SCRIPT_OPEN), len(buf) - len(_SCRIPT_END) + 1)
                    _check_size(buf, "htmlfile script")
                    break
                body = buf[len(_SCRIPT_OPEN) : j]
                if not body.endswith(b");"):
                    raise ProtocolError(
                        f"htmlfile: a script that is not p(ARRAY); {bytes(buf[:80])!r}"
                    )
                out.extend(_objects(body[:-2], "htmlfile script"))
                del buf[: j + len(_SCRIPT_END)]
                self._scan = 0
                continue
            if buf.startswith(_HTML_END):
                del buf[: len(_HTML_END)]
                self.closed = True
                continue
            if _SCRIPT_OPEN.startswith(buf) or _HTML_END.startswith(buf):
                break  # the start of a script or of the end, cut short
            raise ProtocolError(f"htmlfile: unexpected bytes {bytes(buf[:80])!r}")
        return out


class PollParser:
    """poll: one JSON array of OBJ per response. `feed` collects; `end()` is the answer."""

    where = "poll answer"

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        _check_size(self._buf, self.where)
        return []

    def end(self) -> list[dict[str, Any]]:
        """The objects of the whole body (call once the body is complete)."""
        return _objects(self._unwrap(bytes(self._buf)), self.where)

    def _unwrap(self, body: bytes) -> bytes:
        return body


class JsonpParser(PollParser):
    """jsonp: `/**/F([OBJ,...]);` per response, F the `?callback=` sent."""

    where = "jsonp answer"

    def __init__(self, callback: str) -> None:
        super().__init__()
        self._open = b"/**/" + callback.encode("ascii") + b"("

    def _unwrap(self, body: bytes) -> bytes:
        body = body.rstrip(_WHITESPACE)
        if not body.startswith(self._open) or not body.endswith(b");"):
            raise ProtocolError(f"jsonp: not a call of the callback: {body[:80]!r}")
        return body[len(self._open) : -2]
