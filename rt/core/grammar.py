"""The grammars of PROTOCOL.md section 1.

Each `check_*` function takes untrusted input (already JSON-decoded, so of
any type), returns the canonical value, or raises `RtError` with
`bad_request` (or `too_large` for oversize content) naming the field and
what is wrong with it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rt.core.errors import RtError, bad_request

FLOW_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
USER_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
CLIENT_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
UUID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{8,32}")
CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*")

MAX_CONTENT_BYTES = 16 * 1024
MAX_TAG_CODEPOINTS = 64
MAX_TAGS = 32
MAX_REF = 64
MAX_CALLBACK = 64
# Ids are SQLite INTEGERs: a larger one from a client frame is not a message,
# and must not reach the store (it would fail the writer's whole batch).
MAX_ID = 2**63 - 1

# Unicode White_Space (PropList.txt); Python's str.isspace() differs slightly.
WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string, got {type(value).__name__}")
    return value


def _matching(value: Any, field: str, pattern: re.Pattern[str], rule: str) -> str:
    text = _string(value, field)
    if not pattern.fullmatch(text):
        raise bad_request(f"{field} {text[:80]!r} is not valid: {rule}")
    return text


def check_flow(value: Any, field: str = "flow") -> str:
    return _matching(
        value, field, FLOW_RE, "1 to 64 of a-z 0-9 _ -, starting with a letter or digit"
    )


def check_user(value: Any, field: str = "user") -> str:
    return _matching(
        value, field, USER_RE, "1 to 32 of a-z 0-9 _ -, starting with a letter or digit"
    )


def check_client(value: Any, field: str = "client") -> str:
    return _matching(value, field, CLIENT_RE, "16 to 64 of A-Z a-z 0-9 _ -")


def check_uuid(value: Any, field: str = "uuid") -> str:
    return _matching(value, field, UUID_RE, "8 to 64 of A-Z a-z 0-9 _ -")


def check_callback(value: Any, field: str = "callback") -> str:
    text = _string(value, field)
    if len(text) > MAX_CALLBACK or not CALLBACK_RE.fullmatch(text):
        raise bad_request(
            f"{field} must be a JavaScript identifier path (a.b.c) of at most 64 characters"
        )
    return text


def check_ref(value: Any) -> str | None:
    """A WebSocket frame's `ref`: absent, or a string of at most 64 characters."""
    if value is None:
        return None
    text = _string(value, "ref")
    if len(text) > MAX_REF:
        raise bad_request("ref must be at most 64 characters")
    return text


def check_message_id(value: Any, field: str = "message") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise bad_request(f"{field} must be a positive integer message id")
    return value


def parse_int(text: str | None, field: str, *, minimum: int = 0) -> int | None:
    """An integer query parameter: absent (None) or decimal digits, >= minimum."""
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise bad_request(f"{field} must be a non-negative integer")
    number = int(text)
    if number < minimum:
        raise bad_request(f"{field} must be at least {minimum}")
    return number


def _no_surrogates_or_nul(text: str, field: str) -> None:
    if "\x00" in text:
        raise bad_request(f"{field} must not contain NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{field} must not contain lone surrogates") from None


def check_content(value: Any) -> str:
    """Message content: NFC, at most 16 KiB of UTF-8, at least one visible character."""
    text = _string(value, "content")
    _no_surrogates_or_nul(text, "content")
    text = unicodedata.normalize("NFC", text)
    if len(text.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise RtError("too_large", "content is larger than 16 KiB of UTF-8; shorten it")
    if all(ch in WHITE_SPACE or unicodedata.category(ch) == "Cf" for ch in text):
        raise bad_request("content must hold at least one visible character")
    return text


def normalize_tag(value: Any) -> str:
    """A tag as stored: NFC(casefold(NFC(t))), 1 to 64 code points, no Cc/Cf/Z*."""
    text = _string(value, "tag")
    _no_surrogates_or_nul(text, "tag")
    tag = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())
    if not 1 <= len(tag) <= MAX_TAG_CODEPOINTS:
        raise bad_request("a tag must be 1 to 64 characters")
    for ch in tag:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf") or category.startswith("Z"):
            raise bad_request(
                f"tag {tag[:80]!r} holds a control, format or separator character (U+{ord(ch):04X})"
            )
    return tag


def check_tags(value: Any, field: str) -> list[str]:
    """A list of tags: normalised, de-duplicated, sorted; at most 32 given."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"{field} must be a list of tags")
    if len(value) > MAX_TAGS:
        raise bad_request(f"{field} names more than {MAX_TAGS} tags")
    return sorted({normalize_tag(v) for v in value})


def check_flow_list(text: str | None, max_flows: int) -> list[str]:
    """The `flows` query parameter: 1 to max_flows comma-separated names, no repeats kept."""
    if not text:
        raise bad_request("flows is required: a comma-separated list of flow names")
    names = text.split(",")
    if len(names) > max_flows:
        raise bad_request(f"at most {max_flows} flows per stream")
    seen: dict[str, None] = {}
    for name in names:
        seen[check_flow(name, "flows")] = None
    return list(seen)
