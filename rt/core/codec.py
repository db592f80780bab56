"""The JSON codec.

`encode` writes the one form of an object that is safe in every framing of
PROTOCOL.md section 3.1: UTF-8, no raw newline, and `<`, `>`, `&`, U+2028,
U+2029 always escaped. An event is encoded once and its bytes are reused by
every connection and every framer.
"""

from __future__ import annotations

from typing import Any

import orjson

from rt.core.errors import bad_request

# orjson never writes a raw newline (it escapes control characters in
# strings and emits no whitespace); these five may appear raw inside
# strings and are replaced by their JSON escapes, which is valid because
# they can only occur inside string literals.
_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def encode(obj: Any) -> bytes:
    """Encode `obj` as framing-safe JSON bytes (see the module docstring)."""
    raw = orjson.dumps(obj)
    for needle, escape in _ESCAPES:
        if needle in raw:
            raw = raw.replace(needle, escape)
    return raw


def decode(data: bytes | str, what: str = "body") -> Any:
    """Decode JSON from a client; malformed input is the client's fault (400)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}") from None


def decode_object(data: bytes | str, what: str = "body") -> dict[str, Any]:
    """Decode a JSON object from a client (400 if it is not one)."""
    obj = decode(data, what)
    if not isinstance(obj, dict):
        raise bad_request(f"{what} must be a JSON object")
    return obj
