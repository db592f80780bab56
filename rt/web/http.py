"""HTTP helpers for rt/web: JSON responses, errors, CORS. The only quart imports besides app.py."""

from __future__ import annotations

from typing import Any

from quart import Response

from rt.core.codec import encode
from rt.core.errors import RtError

JSON_TYPE = "application/json; charset=utf-8"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(obj), status=status, content_type=JSON_TYPE, headers=headers)


def error_response(error: RtError) -> Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after + 0.499)))
    return json_response(error.body(), error.status, headers)


def origin_allowed(
    origin: str | None, scheme: str, host: str | None, allowed: tuple[str, ...]
) -> bool:
    """An absent Origin (not a browser), the server's own (scheme and Host), or a configured one."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if host and origin in (f"{scheme}://{host}", f"{_http_scheme(scheme)}://{host}"):
        return True
    return origin in allowed or "*" in allowed


def _http_scheme(scheme: str) -> str:
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


#: The longest text a log line quotes from a request; the rest is cut with "...".
LOGGABLE_CHARS = 512


def loggable(text: str) -> str:
    """`text` safe to write into one log line: no control, format or separator characters.

    Each such character (a decoded `%0A`, an escape sequence, NUL, a bidi
    override) and the backslash itself are written as Python escapes, so a
    request cannot forge or hide log lines and the line still says exactly
    what arrived; long texts are cut.
    """
    cut = len(text) > LOGGABLE_CHARS
    text = text[:LOGGABLE_CHARS]
    if text.isprintable() and "\\" not in text:
        return text + ("..." if cut else "")
    out = "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
    return out + ("..." if cut else "")
