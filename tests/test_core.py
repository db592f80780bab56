"""Tier 0: rt/core, pure, with case tables.

The grammars of PROTOCOL.md section 1 (rt/core/grammar.py), the JSON codec
(rt/core/codec.py), the op rules of PROTOCOL.md section 2, checks 3 to 5
(rt/core/ops.py) and the token buckets (rt/core/ratelimit.py).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from rt.core import grammar
from rt.core.codec import decode, decode_object, encode
from rt.core.errors import RtError
from rt.core.events import MessageState
from rt.core.ops import (
    Change,
    NoOp,
    Op,
    delete_op,
    edit_op,
    next_state,
    plan,
    post_op,
    tag_op,
)
from rt.core.ratelimit import TokenBuckets


def rejects(fn: Callable[[Any], Any], value: Any, code: str = "bad_request") -> RtError:
    """Call fn(value), assert it raises RtError with `code`, return the error."""
    with pytest.raises(RtError) as info:
        fn(value)
    assert info.value.code == code, (info.value.code, info.value.message)
    return info.value


# Values of the wrong JSON type, for every grammar that takes a string.
NOT_STRINGS = [
    pytest.param(None, id="None"),
    pytest.param(1, id="int"),
    pytest.param(1.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param(["general"], id="list"),
    pytest.param({"name": "general"}, id="dict"),
    pytest.param(b"general", id="bytes"),
]


# -- names: flow and user ---------------------------------------------------------

FLOW_GOOD = [
    pytest.param("a", id="one-letter"),
    pytest.param("0", id="one-digit"),
    pytest.param("general", id="word"),
    pytest.param("a-b_c", id="dash-underscore"),
    pytest.param("9lives", id="leading-digit"),
    pytest.param("a-", id="trailing-dash"),
    pytest.param("a_", id="trailing-underscore"),
    pytest.param("a" * 64, id="64-chars"),
]

NAME_BAD_COMMON = [
    pytest.param("", id="empty"),
    pytest.param("General", id="uppercase"),
    pytest.param("A", id="one-uppercase"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("_a", id="leading-underscore"),
    pytest.param("-", id="only-dash"),
    pytest.param("a b", id="space"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a ", id="trailing-space"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a.b", id="dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("a,b", id="comma"),
    pytest.param("caf\u00e9", id="non-ascii-latin"),
    pytest.param("\uff41", id="fullwidth-a"),
    pytest.param("\u212a", id="kelvin-sign"),
    pytest.param("a\x00", id="nul"),
    pytest.param("a\u200b", id="zero-width-space"),
]


@pytest.mark.parametrize("name", FLOW_GOOD)
def test_flow_name_good(name: str) -> None:
    assert grammar.check_flow(name) == name


@pytest.mark.parametrize(
    "name", [*NAME_BAD_COMMON, pytest.param("a" * 65, id="65-chars"), *NOT_STRINGS]
)
def test_flow_name_bad(name: Any) -> None:
    error = rejects(grammar.check_flow, name)
    assert "flow" in error.message


def test_flow_name_error_names_the_field() -> None:
    error = rejects(lambda v: grammar.check_flow(v, "flows"), "Bad")
    assert error.message.startswith("flows")


USER_GOOD = [
    pytest.param("a", id="one-letter"),
    pytest.param("7", id="one-digit"),
    pytest.param("alice", id="word"),
    pytest.param("bob_2-x", id="dash-underscore"),
    pytest.param("a" * 32, id="32-chars"),
]


@pytest.mark.parametrize("name", USER_GOOD)
def test_user_name_good(name: str) -> None:
    assert grammar.check_user(name) == name


@pytest.mark.parametrize(
    "name",
    [
        *NAME_BAD_COMMON,
        pytest.param("a" * 33, id="33-chars"),
        pytest.param("a" * 64, id="64-chars"),
        *NOT_STRINGS,
    ],
)
def test_user_name_bad(name: Any) -> None:
    error = rejects(grammar.check_user, name)
    assert "user" in error.message


# -- client ids, uuids, epochs ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a" * 16, id="16-chars"),
        pytest.param("Z" * 64, id="64-chars"),
        pytest.param("AbC-123_xyz-0987", id="mixed"),
        pytest.param("-" * 16, id="all-dashes"),
        pytest.param("_" * 20, id="all-underscores"),
    ],
)
def test_client_id_good(value: str) -> None:
    assert grammar.check_client(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 15, id="15-chars"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("a" * 15 + ".", id="dot"),
        pytest.param("a" * 15 + " ", id="space"),
        pytest.param("a" * 15 + "=", id="equals"),
        pytest.param("a" * 15 + "\u00e9", id="non-ascii"),
        pytest.param("a" * 16 + "\n", id="trailing-newline"),
        *NOT_STRINGS,
    ],
)
def test_client_id_bad(value: Any) -> None:
    rejects(grammar.check_client, value)


# -- JSONP callback --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("cb", id="simple"),
        pytest.param("_", id="underscore"),
        pytest.param("$", id="dollar"),
        pytest.param("a.b.c", id="path"),
        pytest.param("$.x_1.$y", id="dollar-path"),
        pytest.param("jQuery3210_1700000000000", id="jquery"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("a." * 31 + "ab", id="64-chars-path"),
    ],
)
def test_callback_good(value: str) -> None:
    assert grammar.check_callback(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("1a", id="leading-digit"),
        pytest.param("a.", id="trailing-dot"),
        pytest.param(".a", id="leading-dot"),
        pytest.param("a..b", id="double-dot"),
        pytest.param("a.1b", id="segment-leading-digit"),
        pytest.param("a-b", id="dash"),
        pytest.param("a b", id="space"),
        pytest.param("a;alert(1)", id="statement"),
        pytest.param("a(1)", id="call"),
        pytest.param("a[0]", id="index"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("a." * 32 + "a", id="65-chars-path"),
        *NOT_STRINGS,
    ],
)
def test_callback_bad(value: Any) -> None:
    rejects(grammar.check_callback, value)


# -- refs and message ids -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", "", id="empty"),
        pytest.param("r1", "r1", id="short"),
        pytest.param("x" * 64, "x" * 64, id="64-chars"),
        pytest.param("\u00e9" * 64, "\u00e9" * 64, id="64-code-points-non-ascii"),
    ],
)
def test_ref_good(value: Any, expected: Any) -> None:
    assert grammar.check_ref(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 65, id="65-chars"),
        pytest.param(1, id="int"),
        pytest.param(True, id="bool"),
        pytest.param(["r"], id="list"),
        pytest.param({"r": 1}, id="dict"),
    ],
)
def test_ref_bad(value: Any) -> None:
    rejects(grammar.check_ref, value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1, id="one"),
        pytest.param(123456, id="typical"),
        pytest.param(2**63 - 1, id="sqlite-max"),
    ],
)
def test_message_id_good(value: int) -> None:
    assert grammar.check_message_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(True, id="true-is-not-an-int"),
        pytest.param(False, id="false-is-not-an-int"),
        pytest.param(1.0, id="float"),
        pytest.param("1", id="string"),
        pytest.param(None, id="None"),
        pytest.param([1], id="list"),
        # A larger id is no message, and it must not reach SQLite (OverflowError
        # there fails the writer's whole batch, other users' ops included).
        pytest.param(2**63, id="above-sqlite-max"),
        pytest.param(2**64 - 1, id="u64-max"),
    ],
)
def test_message_id_bad(value: Any) -> None:
    rejects(grammar.check_message_id, value)


@pytest.mark.parametrize(
    ("text", "minimum", "expected"),
    [
        pytest.param(None, 0, None, id="absent"),
        pytest.param("", 0, None, id="empty"),
        pytest.param("0", 0, 0, id="zero"),
        pytest.param("42", 0, 42, id="number"),
        pytest.param("9" * 18, 0, int("9" * 18), id="18-digits"),
        pytest.param("1", 1, 1, id="at-minimum"),
    ],
)
def test_parse_int_good(text: str | None, minimum: int, expected: int | None) -> None:
    assert grammar.parse_int(text, "cursor", minimum=minimum) == expected


@pytest.mark.parametrize(
    ("text", "minimum"),
    [
        pytest.param("-1", 0, id="negative"),
        pytest.param("1.5", 0, id="decimal"),
        pytest.param(" 1", 0, id="space"),
        pytest.param("1e3", 0, id="exponent"),
        pytest.param("\u0661", 0, id="arabic-indic-digit"),
        pytest.param("\u00b2", 0, id="superscript-two"),
        pytest.param("9" * 19, 0, id="19-digits"),
        pytest.param("0", 1, id="below-minimum"),
    ],
)
def test_parse_int_bad(text: str, minimum: int) -> None:
    rejects(lambda v: grammar.parse_int(v, "cursor", minimum=minimum), text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("general", ["general"], id="one"),
        pytest.param("a,b", ["a", "b"], id="two"),
        pytest.param("b,a,b", ["b", "a"], id="repeat-kept-once-in-order"),
        pytest.param(",".join(f"f{i}" for i in range(5)), [f"f{i}" for i in range(5)], id="at-max"),
    ],
)
def test_flow_list_good(text: str, expected: list[str]) -> None:
    assert grammar.check_flow_list(text, max_flows=5) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("a,,b", id="empty-name"),
        pytest.param("a,", id="trailing-comma"),
        pytest.param("a, b", id="space"),
        pytest.param("a,B", id="uppercase"),
        pytest.param(",".join(f"f{i}" for i in range(6)), id="above-max"),
    ],
)
def test_flow_list_bad(text: str | None) -> None:
    rejects(lambda v: grammar.check_flow_list(v, max_flows=5), text)


# -- content ----------------------------------------------------------------------

MAX = grammar.MAX_CONTENT_BYTES
assert MAX == 16 * 1024


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("hi", "hi", id="simple"),
        pytest.param("  padded\n", "  padded\n", id="whitespace-kept"),
        pytest.param("e\u0301", "\u00e9", id="nfc-composes"),
        pytest.param("\u212b", "\u00c5", id="nfc-angstrom-sign"),
        pytest.param("\u200bx", "\u200bx", id="cf-with-visible"),
        pytest.param("\U0001f600", "\U0001f600", id="emoji"),
        pytest.param("\x01", "\x01", id="control-is-not-white-space"),
        pytest.param("a" * MAX, "a" * MAX, id="exactly-16KiB-ascii"),
        pytest.param("\u20ac" * 5461 + "a", "\u20ac" * 5461 + "a", id="exactly-16KiB-multibyte"),
        pytest.param("\U0001f600" * 4096, "\U0001f600" * 4096, id="exactly-16KiB-4-byte"),
        # The limit applies to the NFC form: 24 KiB decomposed is 16 KiB composed.
        pytest.param("e\u0301" * (MAX // 2), "\u00e9" * (MAX // 2), id="limit-after-nfc"),
    ],
)
def test_content_good(value: str, expected: str) -> None:
    result = grammar.check_content(value)
    assert result == expected
    assert unicodedata.is_normalized("NFC", result)
    assert len(result.encode("utf-8")) <= MAX


@pytest.mark.parametrize(
    ("value", "code"),
    [
        pytest.param("", "bad_request", id="empty"),
        pytest.param(" ", "bad_request", id="space"),
        pytest.param("\t\n\r\v\f", "bad_request", id="ascii-white-space"),
        pytest.param("\u200b\u200d", "bad_request", id="cf-only-zero-width"),
        pytest.param("\ufeff", "bad_request", id="cf-only-bom"),
        pytest.param("\u00ad", "bad_request", id="cf-only-soft-hyphen"),
        pytest.param("\u202e\u2066", "bad_request", id="cf-only-bidi"),
        pytest.param("\u00a0\u3000\u2028\u2029\x85", "bad_request", id="unicode-white-space"),
        pytest.param(" \u200b\t\u200d ", "bad_request", id="white-space-and-cf"),
        pytest.param("\ud800", "bad_request", id="lone-high-surrogate"),
        pytest.param("\udc00", "bad_request", id="lone-low-surrogate"),
        pytest.param("a\ud800b", "bad_request", id="surrogate-inside"),
        pytest.param("\x00", "bad_request", id="nul"),
        pytest.param("a\x00b", "bad_request", id="nul-inside"),
        pytest.param("a" * (MAX + 1), "too_large", id="16KiB-plus-one-byte"),
        pytest.param("\u20ac" * 5461 + "ab", "too_large", id="multibyte-plus-one-byte"),
        pytest.param("\u20ac" * 5462, "too_large", id="multibyte-over"),
        # U+0958 is a composition exclusion: NFC makes 3 bytes into 6.
        pytest.param("\u0958" * 2731, "too_large", id="over-only-after-nfc"),
        pytest.param(" " * (MAX + 1), "too_large", id="oversize-white-space"),
        *[pytest.param(p.values[0], "bad_request", id=f"type-{p.id}") for p in NOT_STRINGS],
    ],
)
def test_content_bad(value: Any, code: str) -> None:
    rejects(grammar.check_content, value, code)


def test_content_limit_after_nfc_case_is_really_over_before() -> None:
    raw = "e\u0301" * (MAX // 2)
    assert len(raw.encode()) > MAX  # the case above would be too_large before NFC
    small = "\u0958" * 2731
    assert len(small.encode()) <= MAX  # and this one would fit before NFC


# -- tags ---------------------------------------------------------------------------

ANGSTROM_COMPOSED = "\u00c5NGSTR\u00d6M"
ANGSTROM_DECOMPOSED = "A\u030aNGSTRO\u0308M"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("python", "python", id="plain"),
        pytest.param("Python", "python", id="casefold"),
        pytest.param("Stra\u00dfe", "strasse", id="sharp-s"),
        pytest.param(ANGSTROM_COMPOSED, "\u00e5ngstr\u00f6m", id="angstrom-composed"),
        pytest.param(ANGSTROM_DECOMPOSED, "\u00e5ngstr\u00f6m", id="angstrom-decomposed"),
        pytest.param("\u212a", "k", id="kelvin-sign"),
        pytest.param("\ufb01", "fi", id="ligature"),
        pytest.param("#Python", "#python", id="leading-hash-kept"),
        pytest.param("#", "#", id="only-hash"),
        pytest.param("c++", "c++", id="punctuation"),
        pytest.param("\u65e5\u672c\u8a9e", "\u65e5\u672c\u8a9e", id="cjk"),
        pytest.param("a" * 64, "a" * 64, id="64-code-points"),
        pytest.param("#" + "a" * 63, "#" + "a" * 63, id="hash-counts"),
        pytest.param("\u00df" * 32, "ss" * 32, id="64-after-casefold"),
        pytest.param("A\u030a" * 64, "\u00e5" * 64, id="128-decomposed-is-64"),
        pytest.param("\U0001f600" * 64, "\U0001f600" * 64, id="64-astral"),
    ],
)
def test_tag_good(value: str, expected: str) -> None:
    assert grammar.normalize_tag(value) == expected


def test_tag_composed_and_decomposed_are_equal() -> None:
    assert ANGSTROM_COMPOSED != ANGSTROM_DECOMPOSED
    assert grammar.normalize_tag(ANGSTROM_COMPOSED) == grammar.normalize_tag(ANGSTROM_DECOMPOSED)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="65-code-points"),
        pytest.param("#" + "a" * 64, id="65-with-hash"),
        pytest.param("\u00df" * 33, id="66-after-casefold"),
        pytest.param("\u0130" * 33, id="dotted-I-66-after-casefold"),
        pytest.param("a b", id="space"),
        pytest.param(" a", id="leading-space"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\x7fb", id="delete-control"),
        pytest.param("a\x85b", id="next-line-control"),
        pytest.param("a\x1bb", id="escape-control"),
        pytest.param("\x00", id="nul"),
        pytest.param("a\u200bb", id="zero-width-space"),
        pytest.param("\u200b", id="only-zero-width-space"),
        pytest.param("a\u200db", id="zero-width-joiner"),
        pytest.param("a\u202eb", id="bidi-override"),
        pytest.param("\u2066a", id="bidi-isolate"),
        pytest.param("a\ufeffb", id="bom"),
        pytest.param("a\u00adb", id="soft-hyphen"),
        pytest.param("a\u00a0b", id="nbsp"),
        pytest.param("a\u3000b", id="ideographic-space"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\u2029b", id="paragraph-separator"),
        pytest.param("\ud800", id="lone-surrogate"),
        *NOT_STRINGS,
    ],
)
def test_tag_bad(value: Any) -> None:
    rejects(grammar.normalize_tag, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, [], id="absent"),
        pytest.param([], [], id="empty"),
        pytest.param(["b", "a"], ["a", "b"], id="sorted"),
        pytest.param(["b", "a", "B", "#x"], ["#x", "a", "b"], id="dedupe-after-casefold"),
        pytest.param(["Stra\u00dfe", "STRASSE", "strasse"], ["strasse"], id="dedupe-sharp-s"),
        pytest.param(
            [ANGSTROM_COMPOSED, ANGSTROM_DECOMPOSED], ["\u00e5ngstr\u00f6m"], id="dedupe-nfc"
        ),
        pytest.param(
            [f"t{i:02d}" for i in range(32)][::-1], [f"t{i:02d}" for i in range(32)], id="32-tags"
        ),
    ],
)
def test_tags_good(value: Any, expected: list[str]) -> None:
    assert grammar.check_tags(value, "add") == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([f"t{i}" for i in range(33)], id="33-tags"),
        pytest.param("python", id="string-not-list"),
        pytest.param({"python": True}, id="dict"),
        pytest.param(("a",), id="tuple"),
        pytest.param(1, id="int"),
        pytest.param(True, id="bool"),
        pytest.param([1], id="non-string-element"),
        pytest.param([None], id="None-element"),
        pytest.param(["ok", ""], id="empty-element"),
        pytest.param(["ok", "a b"], id="bad-element"),
    ],
)
def test_tags_bad(value: Any) -> None:
    error = rejects(lambda v: grammar.check_tags(v, "add"), value)
    assert error.status == 400


# -- the codec ---------------------------------------------------------------------

HOSTILE = [
    pytest.param("</script><script>alert(1)</script>", id="script"),
    pytest.param("<!--", id="html-comment-open"),
    pytest.param("-->", id="html-comment-close"),
    pytest.param("]]>", id="cdata-close"),
    pytest.param("\u2028", id="U+2028"),
    pytest.param("\u2029", id="U+2029"),
    pytest.param("a\u2028b\u2029c", id="separators-inside"),
    pytest.param("a & b &amp; <b>", id="ampersand"),
    pytest.param("line\nbreak\r\nand\rcr", id="newlines"),
    pytest.param("\n\ndata: evil\n\n", id="sse-injection"),
    pytest.param("\x00\x01\x1f\x7f\x85", id="controls"),
    pytest.param('"quote" \\back\\', id="quotes"),
    pytest.param("\u00e9\U0001f600\u65e5", id="non-ascii"),
    pytest.param("\ufeffbom", id="bom"),
]

# Bytes that must never appear raw in encoded output (PROTOCOL.md section 3.1).
FORBIDDEN_RAW = [b"<", b">", b"&", "\u2028".encode(), "\u2029".encode(), b"\n", b"\r"]


@pytest.mark.parametrize("text", HOSTILE)
def test_encode_is_safe_and_round_trips(text: str) -> None:
    obj = {"type": "message", "content": text, text: [text, {"k": text}]}
    raw = encode(obj)
    assert isinstance(raw, bytes)
    for needle in FORBIDDEN_RAW:
        assert needle not in raw, needle
    assert b"</script" not in raw.lower()
    assert b"<!--" not in raw
    assert b"]]>" not in raw
    assert json.loads(raw) == obj
    assert json.loads(raw.decode("utf-8")) == obj


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("<", b'"\\u003c"', id="lt"),
        pytest.param(">", b'"\\u003e"', id="gt"),
        pytest.param("&", b'"\\u0026"', id="amp"),
        pytest.param("\u2028", b'"\\u2028"', id="U+2028"),
        pytest.param("\u2029", b'"\\u2029"', id="U+2029"),
        pytest.param("\n", b'"\\n"', id="newline"),
        pytest.param({"<": ">"}, b'{"\\u003c":"\\u003e"}', id="keys-too"),
        pytest.param({"type": "heartbeat"}, b'{"type":"heartbeat"}', id="compact"),
        pytest.param("\u00e9", '"\u00e9"'.encode(), id="utf-8-not-escaped"),
    ],
)
def test_encode_exact(value: Any, expected: bytes) -> None:
    assert encode(value) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"a":1}', {"a": 1}, id="bytes"),
        pytest.param('{"a":[1,"x"]}', {"a": [1, "x"]}, id="str"),
        pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", id="surrogate-pair"),
        pytest.param(b"[]", [], id="array"),
    ],
)
def test_decode_good(data: bytes | str, expected: Any) -> None:
    assert decode(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"nope", id="garbage"),
        pytest.param(b"[1,]", id="trailing-comma"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
        pytest.param(b'"\\ud800"', id="lone-high-surrogate-escape"),
        pytest.param(b'"\\udc00"', id="lone-low-surrogate-escape"),
        pytest.param(b'{"a":"\\ud800x"}', id="lone-surrogate-in-object"),
        pytest.param(b"\xff", id="invalid-utf-8"),
        pytest.param('"\ud800"', id="str-with-surrogate"),
        pytest.param(b"{} {}", id="two-values"),
    ],
)
def test_decode_bad(data: bytes | str) -> None:
    error = rejects(lambda d: decode(d, "frame"), data)
    assert "frame" in error.message


def test_decode_object_good() -> None:
    assert decode_object(b'{"op":"ping"}') == {"op": "ping"}
    assert decode_object(b"{}") == {}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b"[{}]", id="array-of-object"),
        pytest.param(b'"s"', id="string"),
        pytest.param(b"1", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
        pytest.param(b"{", id="invalid"),
    ],
)
def test_decode_object_bad(data: bytes) -> None:
    rejects(decode_object, data)


# -- ops: plan and next_state -------------------------------------------------------

FLOW = "general"
STATE = MessageState(id=1, flow=FLOW, user="alice", sent=1000, content="hello", tags=("a", "b"))
DELETED = replace(STATE, content="", deleted=True)
OWNER = "olivia"  # the flow's owner, not the author


def edit(user: str = "alice", content: str = "changed") -> Op:
    return edit_op(user, FLOW, 1, {"content": content, "uuid": "uuid-edit"})


def tag(user: str = "alice", add: list[str] | None = None, remove: list[str] | None = None) -> Op:
    return tag_op(user, FLOW, 1, {"add": add, "remove": remove, "uuid": "uuid-tag1"})


def delete(user: str = "alice") -> Op:
    return delete_op(user, FLOW, 1, "uuid-del1")


def many_tags(n: int) -> tuple[str, ...]:
    return tuple(f"t{i:02d}" for i in range(n))


@pytest.mark.parametrize(
    ("op", "state", "code"),
    [
        pytest.param(edit(), None, "not_found", id="edit-missing"),
        pytest.param(tag(add=["x"]), None, "not_found", id="tag-missing"),
        pytest.param(delete(), None, "not_found", id="delete-missing"),
        pytest.param(edit(), replace(STATE, flow="other"), "not_found", id="edit-other-flow"),
        pytest.param(
            tag(add=["x"]), replace(STATE, flow="other"), "not_found", id="tag-other-flow"
        ),
        pytest.param(delete(), replace(STATE, flow="other"), "not_found", id="delete-other-flow"),
        pytest.param(
            delete(OWNER), replace(STATE, flow="other"), "not_found", id="owner-delete-other-flow"
        ),
        pytest.param(edit(), DELETED, "deleted", id="edit-deleted"),
        pytest.param(tag(add=["x"]), DELETED, "deleted", id="tag-deleted"),
        pytest.param(tag(remove=["zz"]), DELETED, "deleted", id="tag-deleted-noop-change"),
        pytest.param(edit("bob"), DELETED, "deleted", id="deleted-before-forbidden"),
        pytest.param(edit("bob"), STATE, "forbidden", id="edit-non-author"),
        pytest.param(edit(OWNER), STATE, "forbidden", id="edit-owner-not-author"),
        pytest.param(edit("bob", content="hello"), STATE, "forbidden", id="forbidden-before-noop"),
        pytest.param(delete("bob"), STATE, "forbidden", id="delete-non-author"),
        pytest.param(delete("bob"), DELETED, "forbidden", id="delete-deleted-non-author"),
        pytest.param(
            tag(add=["new"]), replace(STATE, tags=many_tags(32)), "bad_request", id="tag-over-32"
        ),
        pytest.param(
            tag(add=["x", "y"], remove=["t00"]),
            replace(STATE, tags=many_tags(32)),
            "bad_request",
            id="tag-over-32-with-remove",
        ),
    ],
)
def test_plan_refuses(op: Op, state: MessageState | None, code: str) -> None:
    rejects(lambda s: plan(op, s, OWNER), state, code)


@pytest.mark.parametrize(
    ("op", "state"),
    [
        pytest.param(delete(), DELETED, id="delete-deleted"),
        pytest.param(delete(OWNER), DELETED, id="owner-delete-deleted"),
        pytest.param(edit(content="hello"), STATE, id="edit-same-content"),
        pytest.param(
            edit(content="e\u0301"), replace(STATE, content="\u00e9"), id="edit-same-after-nfc"
        ),
        pytest.param(tag(add=["a"]), STATE, id="tag-add-existing"),
        pytest.param(tag(add=["A", "B"]), STATE, id="tag-add-existing-normalised"),
        pytest.param(tag(remove=["zz"]), STATE, id="tag-remove-missing"),
        pytest.param(tag(add=["a"], remove=["zz"]), STATE, id="tag-add-existing-remove-missing"),
        pytest.param(
            tag(add=["t00"]), replace(STATE, tags=many_tags(32)), id="tag-full-add-existing"
        ),
    ],
)
def test_plan_noop(op: Op, state: MessageState) -> None:
    decision = plan(op, state, OWNER)
    assert isinstance(decision, NoOp)
    assert decision.state == state
    assert decision.body() == {"changed": False, "state": state.to_dict()}


def test_plan_post() -> None:
    op = post_op("alice", FLOW, {"content": "e\u0301", "uuid": "uuid-0001"})
    decision = plan(op, None, OWNER)
    assert isinstance(decision, Change)
    assert decision.fields == {
        "flow": FLOW,
        "type": "message",
        "user": "alice",
        "uuid": "uuid-0001",
        "content": "\u00e9",
    }


def test_plan_edit() -> None:
    decision = plan(edit(content="changed"), STATE, OWNER)
    assert isinstance(decision, Change)
    assert decision.fields == {
        "flow": FLOW,
        "type": "edit",
        "user": "alice",
        "uuid": "uuid-edit",
        "message": 1,
        "content": "changed",
    }


@pytest.mark.parametrize("user", ["alice", OWNER])
def test_plan_delete_by_author_or_owner(user: str) -> None:
    decision = plan(delete(user), STATE, OWNER)
    assert isinstance(decision, Change)
    assert decision.fields == {
        "flow": FLOW,
        "type": "delete",
        "user": user,
        "uuid": "uuid-del1",
        "message": 1,
    }


def test_plan_delete_with_no_owner() -> None:
    rejects(lambda s: plan(delete("bob"), s, None), STATE, "forbidden")
    assert isinstance(plan(delete("alice"), STATE, None), Change)


@pytest.mark.parametrize(
    ("add", "remove", "state_tags", "ev_add", "ev_remove", "tags"),
    [
        pytest.param(["c"], None, ("a", "b"), ["c"], [], ["a", "b", "c"], id="add"),
        pytest.param(None, ["a"], ("a", "b"), [], ["a"], ["b"], id="remove"),
        pytest.param(
            ["Zed", "alpha", "ZED"],
            ["b", "missing"],
            ("a", "b"),
            ["alpha", "zed"],
            ["b", "missing"],
            ["a", "alpha", "zed"],
            id="normalised-deduped-sorted",
        ),
        pytest.param(
            ["a", "c"],
            None,
            ("a", "b"),
            ["a", "c"],
            [],
            ["a", "b", "c"],
            id="add-names-unchanged-tag-too",
        ),
        pytest.param(["#x"], ["a", "b"], ("a", "b"), ["#x"], ["a", "b"], ["#x"], id="replace-all"),
        pytest.param(
            ["last"],
            None,
            many_tags(31),
            ["last"],
            [],
            sorted([*many_tags(31), "last"]),
            id="reaches-32",
        ),
    ],
)
def test_plan_tag(
    add: Any,
    remove: Any,
    state_tags: tuple[str, ...],
    ev_add: list[str],
    ev_remove: list[str],
    tags: list[str],
) -> None:
    decision = plan(tag(add=add, remove=remove), replace(STATE, tags=state_tags), OWNER)
    assert isinstance(decision, Change)
    assert decision.fields == {
        "flow": FLOW,
        "type": "tag",
        "user": "alice",
        "uuid": "uuid-tag1",
        "message": 1,
        "add": ev_add,
        "remove": ev_remove,
        "tags": tags,
    }
    for key in ("add", "remove", "tags"):
        assert decision.fields[key] == sorted(decision.fields[key])


def test_plan_tag_by_anyone() -> None:
    assert isinstance(plan(tag("bob", add=["x"]), STATE, OWNER), Change)


def test_next_state_through_a_message_life() -> None:
    post = {
        "id": 5,
        "flow": FLOW,
        "type": "message",
        "user": "alice",
        "sent": 100,
        "uuid": "uuid-0001",
        "content": "hi",
    }
    state = next_state(None, post)
    assert state == MessageState(5, FLOW, "alice", 100, "hi", (), False, False)
    assert set(state.to_dict()) == {
        "id",
        "flow",
        "user",
        "sent",
        "content",
        "tags",
        "edited",
        "deleted",
    }

    state = next_state(
        state,
        {
            "id": 7,
            "flow": FLOW,
            "type": "edit",
            "user": "alice",
            "sent": 200,
            "uuid": "uuid-0002",
            "message": 5,
            "content": "hello",
        },
    )
    assert state == MessageState(5, FLOW, "alice", 100, "hello", (), 7, False)

    state = next_state(
        state,
        {
            "id": 9,
            "flow": FLOW,
            "type": "tag",
            "user": "bob",
            "sent": 300,
            "uuid": "uuid-0003",
            "message": 5,
            "add": ["x"],
            "remove": [],
            "tags": ["w", "x"],
        },
    )
    assert state == MessageState(5, FLOW, "alice", 100, "hello", ("w", "x"), 7, False)

    state = next_state(
        state,
        {
            "id": 12,
            "flow": FLOW,
            "type": "delete",
            "user": "alice",
            "sent": 400,
            "uuid": "uuid-0004",
            "message": 5,
        },
    )
    assert state == MessageState(5, FLOW, "alice", 100, "", ("w", "x"), 7, True)
    assert state.to_dict() == {
        "id": 5,
        "flow": FLOW,
        "user": "alice",
        "sent": 100,
        "content": "",
        "tags": ["w", "x"],
        "edited": 7,
        "deleted": True,
    }


def test_plan_then_next_state_agree() -> None:
    """Applying each Change with next_state gives the state plan's NoOps then see."""
    state = next_state(
        None,
        {
            "id": 1,
            **plan(
                post_op("alice", FLOW, {"content": "hi", "uuid": "uuid-0001"}), None, OWNER
            ).fields,
            "sent": 1,
        },
    )
    change = plan(tag(add=["b", "a"]), state, OWNER)
    assert isinstance(change, Change)
    state = next_state(state, {"id": 2, **change.fields, "sent": 2})
    assert state.tags == ("a", "b")
    assert isinstance(plan(tag(add=["a"]), state, OWNER), NoOp)
    change = plan(delete(), state, OWNER)
    assert isinstance(change, Change)
    state = next_state(state, {"id": 3, **change.fields, "sent": 3})
    assert isinstance(plan(delete(), state, OWNER), NoOp)
    rejects(lambda s: plan(edit(), s, OWNER), state, "deleted")


def test_next_state_needs_a_post_first() -> None:
    with pytest.raises(AssertionError):
        next_state(None, {"id": 2, "type": "edit", "content": "x"})


def test_next_state_unknown_type() -> None:
    with pytest.raises(ValueError):
        next_state(STATE, {"id": 2, "type": "pin"})


# -- op builders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"uuid": "uuid-0001"}, "bad_request", id="no-change"),
        pytest.param(
            {"add": [], "remove": [], "uuid": "uuid-0001"}, "bad_request", id="empty-lists"
        ),
        pytest.param(
            {"add": None, "remove": None, "uuid": "uuid-0001"}, "bad_request", id="null-lists"
        ),
        pytest.param(
            {"add": ["x"], "remove": ["x"], "uuid": "uuid-0001"}, "bad_request", id="overlap"
        ),
        pytest.param(
            {"add": ["X", "y"], "remove": ["x"], "uuid": "uuid-0001"},
            "bad_request",
            id="overlap-after-normalising",
        ),
        pytest.param(
            {"add": ["Stra\u00dfe"], "remove": ["STRASSE"], "uuid": "uuid-0001"},
            "bad_request",
            id="overlap-after-casefold",
        ),
        pytest.param(
            {"add": [f"t{i}" for i in range(33)], "uuid": "uuid-0001"}, "bad_request", id="33-tags"
        ),
        pytest.param({"add": ["a b"], "uuid": "uuid-0001"}, "bad_request", id="bad-tag"),
        pytest.param({"add": "x", "uuid": "uuid-0001"}, "bad_request", id="not-a-list"),
        pytest.param({"add": ["x"]}, "bad_request", id="no-uuid"),
        pytest.param({"add": ["x"], "uuid": "short"}, "bad_request", id="short-uuid"),
    ],
)
def test_tag_op_bad(body: dict[str, Any], code: str) -> None:
    rejects(lambda b: tag_op("alice", FLOW, 1, b), body, code)


def test_tag_op_normalises() -> None:
    op = tag_op("alice", FLOW, 3, {"add": ["B", "a", "b"], "remove": ["#C"], "uuid": "u" * 8})
    assert op == Op("tag", "alice", FLOW, "u" * 8, message=3, add=("a", "b"), remove=("#c",))


@pytest.mark.parametrize(
    ("build", "code"),
    [
        pytest.param(
            lambda: post_op("alice", FLOW, {"uuid": "uuid-0001"}),
            "bad_request",
            id="post-no-content",
        ),
        pytest.param(
            lambda: post_op("alice", FLOW, {"content": "x" * (MAX + 1), "uuid": "uuid-0001"}),
            "too_large",
            id="post-too-large",
        ),
        pytest.param(
            lambda: post_op("alice", FLOW, {"content": "x"}), "bad_request", id="post-no-uuid"
        ),
        pytest.param(
            lambda: post_op("alice", "Bad", {"content": "x", "uuid": "uuid-0001"}),
            "bad_request",
            id="post-bad-flow",
        ),
        pytest.param(
            lambda: edit_op("alice", FLOW, True, {"content": "x", "uuid": "uuid-0001"}),
            "bad_request",
            id="edit-bool-message",
        ),
        pytest.param(
            lambda: edit_op("alice", FLOW, "1", {"content": "x", "uuid": "uuid-0001"}),
            "bad_request",
            id="edit-string-message",
        ),
        pytest.param(
            lambda: edit_op("alice", FLOW, 1, {"content": " ", "uuid": "uuid-0001"}),
            "bad_request",
            id="edit-blank",
        ),
        pytest.param(
            lambda: delete_op("alice", FLOW, 0, "uuid-0001"),
            "bad_request",
            id="delete-message-zero",
        ),
        pytest.param(lambda: delete_op("alice", FLOW, 1, None), "bad_request", id="delete-no-uuid"),
        pytest.param(
            lambda: tag_op("alice", FLOW, None, {"add": ["x"], "uuid": "uuid-0001"}),
            "bad_request",
            id="tag-no-message",
        ),
    ],
)
def test_op_builders_bad(build: Callable[[], Op], code: str) -> None:
    rejects(lambda _: build(), None, code)


def _post(content: str = "hi", uuid: str = "uuid-0001", flow: str = FLOW) -> Op:
    return post_op("alice", flow, {"content": content, "uuid": uuid})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(_post("hi"), _post("ho"), id="content"),
        pytest.param(_post("hi"), _post("hi", flow="other"), id="flow"),
        pytest.param(edit(content="x"), edit(content="y"), id="edit-content"),
        pytest.param(
            edit_op("alice", FLOW, 1, {"content": "x", "uuid": "uuid-0001"}),
            edit_op("alice", FLOW, 2, {"content": "x", "uuid": "uuid-0001"}),
            id="message",
        ),
        pytest.param(tag(add=["x"]), tag(add=["y"]), id="add"),
        pytest.param(tag(add=["x"]), tag(remove=["x"]), id="add-vs-remove"),
        pytest.param(tag(add=["x"]), tag(add=["x"], remove=["y"]), id="remove"),
        pytest.param(
            delete_op("alice", FLOW, 1, "uuid-0001"),
            edit_op("alice", FLOW, 1, {"content": "x", "uuid": "uuid-0001"}),
            id="kind",
        ),
    ],
)
def test_fingerprint_differs(a: Op, b: Op) -> None:
    assert a.fingerprint != b.fingerprint


def test_fingerprint_equal_for_the_same_op() -> None:
    assert _post("e\u0301").fingerprint == _post("\u00e9").fingerprint
    assert tag(add=["B", "a"]).fingerprint == tag(add=["a", "b"]).fingerprint


# -- rate limits -------------------------------------------------------------------


def test_token_bucket_burst_then_refusal() -> None:
    buckets = TokenBuckets(rate=2, burst=3)
    assert [buckets.take("alice", now=10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("alice", now=10.0) == pytest.approx(0.5)
    # A refusal spends nothing: asking again at once gives the same wait.
    assert buckets.take("alice", now=10.0) == pytest.approx(0.5)
    # Other keys have their own bucket.
    assert buckets.take("bob", now=10.0) == 0.0


def test_token_bucket_refills_over_time() -> None:
    buckets = TokenBuckets(rate=2, burst=3)
    for _ in range(3):
        assert buckets.take("k", now=0.0) == 0.0
    assert buckets.take("k", now=0.25) == pytest.approx(0.25)
    assert buckets.take("k", now=0.5) == 0.0
    assert buckets.take("k", now=0.5) == pytest.approx(0.5)
    assert buckets.take("k", now=1.0) == 0.0
    # Long idle: back to the burst, never above it.
    assert [buckets.take("k", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", now=100.0) == pytest.approx(0.5)


def test_token_bucket_protocol_defaults() -> None:
    buckets = TokenBuckets(rate=20, burst=50)
    assert all(buckets.take("u", now=0.0) == 0.0 for _ in range(50))
    assert buckets.take("u", now=0.0) == pytest.approx(0.05)
    assert buckets.take("u", now=0.05) == 0.0


def test_token_bucket_forgets_only_full_buckets() -> None:
    buckets = TokenBuckets(rate=1, burst=2)
    assert buckets.take("hot", now=0.0) == 0.0
    assert buckets.take("hot", now=0.0) == 0.0
    for i in range(10_001):  # the last take prunes: nothing is full at t=0
        assert buckets.take(i, now=0.0) == 0.0
    assert buckets.take("hot", now=0.0) == pytest.approx(1.0)
    assert buckets.take("new", now=100.0) == 0.0  # prunes again: all full but "new"
    assert len(buckets._buckets) < 10  # bounded by the active keys
    assert buckets.take("new", now=100.0) == 0.0
    assert buckets.take("new", now=100.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(0, 10, id="zero-rate"),
        pytest.param(-1, 10, id="negative-rate"),
        pytest.param(1, 0.5, id="burst-below-one"),
    ],
)
def test_token_bucket_bad_config(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate, burst)
