"""The framer interface shared by every transport, and the rotation rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.errors import bad_request
from rt.core.events import Event
from rt.core.grammar import check_callback

# Sent on every stream response, polling included (PROTOCOL.md section 3.1).
STREAM_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store, no-transform",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

HEARTBEAT_OBJ = {"type": "heartbeat"}


def http_chunk(data: bytes) -> bytes:
    """`data` as one chunk of an HTTP/1.1 chunked body (RFC 9112 section 7.1); non-empty."""
    if not data:
        raise ValueError("an empty chunk would end the body; send nothing instead")
    return b"%x\r\n%s\r\n" % (len(data), data)


class Framer:
    """Bytes for one transport. Stateless: one instance serves every connection.

    The instances in `rt.transports.FRAMERS` are shared. A framer with
    `needs_callback` (htmlfile, jsonp) must first be bound to the request's
    `?callback=F` with `for_request`, which returns a new instance; for the
    other framers `for_request` returns the shared instance itself. So the web
    layer always does `framer = FRAMERS[name].for_request(args.get("callback"))`.
    (An unbound htmlfile or jsonp framer raises RuntimeError where it would
    have to write F: `preamble` and `answer`.)

    Streaming framers (ws, sse, xhr, multipart, htmlfile):

    - `preamble()`: bytes that open the response body (may be empty).
    - `ready(obj, epoch)`: the `ready` control frame.
    - `frame(events, epoch)`: one batch of stored and ephemeral events
      (an empty batch frames to b"" for every streaming framer). Depends on
      nothing but the events, the epoch and the framer's `name` (never on a
      request's callback), so a batch's bytes can be shared by connections.
    - `control(obj)`: any other control frame (`close`, `pong`, `ack`, `error`).
    - `heartbeat()`: what an idle stream sends every `heartbeat` seconds.
    - `epilogue()`: bytes that end the body when the server ends the response
      (after `close`, or on shutdown); b"" for most. Not counted for rotation.

    A framer with `rotates` (xhr, multipart, htmlfile) has its response end
    with `close` reason `rotate` at the first batch boundary at or after
    `rotate-bytes` of body (preamble and heartbeats count): the web layer
    sends `batch[:rotation_cut(framer.object_sizes(batch), budget)]`, see
    `rotation_cut`.

    Polling framers (`polling`: poll, jsonp) answer each poll with one whole
    body: `answer(parts)` from already-encoded objects (`Event.raw`,
    `rt.core.codec.encode(obj)`). For them `frame`, `control` and `ready`
    also return one whole body (`answer` of those objects), and `heartbeat`
    raises NotImplementedError: an idle poll answers `answer([])`.
    """

    name = ""
    content_type = ""
    rotates: bool = False
    polling: bool = False
    needs_callback: bool = False

    def for_request(self, callback: str | None) -> Framer:
        """This framer for one request with `?callback=` `callback` (None if absent).

        Framers without `needs_callback` ignore `callback` and return self.
        The others return a new instance bound to the validated callback, or
        raise `RtError` `bad_request` if it is missing or invalid.
        """
        return self

    def preamble(self) -> bytes:
        return b""

    def ready(self, obj: dict[str, Any], epoch: str) -> bytes:
        return self.control(obj)

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        raise NotImplementedError

    def control(self, obj: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def heartbeat(self) -> bytes:
        raise NotImplementedError

    def epilogue(self) -> bytes:
        return b""

    def answer(self, parts: Sequence[bytes]) -> bytes:
        """One whole polling response body holding the encoded objects `parts`."""
        raise NotImplementedError(f"{self.name!r} streams; only polling framers answer")

    # Bytes of a batch's own framing before its first object, for
    # `object_sizes` (a multipart part header, `<script>p([`).
    batch_prefix = 0

    def object_sizes(self, events: Sequence[Event]) -> list[int]:
        """The `sizes` for `rotation_cut` of a batch, exact for rotating framers.

        Object i adds `len(OBJ) + 1` (its `\\n`, `,` or `]`), and the first
        also the batch's framing before it. So, counted from the batch's
        start, `sum(sizes[:i + 1])` is where object i and its separator end,
        and for i >= 1 `sum(sizes[:i])` is where its OBJ starts.
        """
        sizes = [len(e.raw) + 1 for e in events]
        if sizes:
            sizes[0] += self.batch_prefix
        return sizes


def bound_callback(name: str, callback: str | None) -> str:
    """The validated `?callback=` of transport `name` (for `for_request`).

    Raises `RtError` `bad_request` if it is missing, or does not match the
    callback grammar of PROTOCOL.md section 3.1 (at most 64 characters).
    """
    if callback is None:
        raise bad_request(
            f"the {name} transport needs ?callback=F, F the name of the client's function (a.b.c)"
        )
    return check_callback(callback)


def rotation_cut(sizes: Sequence[int], budget: int) -> int:
    """How many objects of a batch a rotating response sends before it rotates.

    `sizes[i]` is what object i of the batch adds to the body as framed:
    `framer.object_sizes(batch)` gives them exactly (`len(OBJ) + 1` each,
    the first also counting the batch's framing before it). `budget` is the
    bytes left before the mark: `rotate-bytes` minus the body bytes already
    sent (preamble, `ready`, batches, heartbeats). Plain `len(e.raw)` sizes
    give nearly the same cut (it may come later by the batch's framing, at
    most 60 bytes, and one byte per object).

    Returns n, and the caller sends `batch[:n]`:

    - 0 if the batch is empty or `budget <= 0` (the mark is already reached:
      the response ends with `close` reason `rotate` now, without the batch);
    - otherwise the smallest n >= 1 with `sum(sizes[:n]) >= budget`, or
      `len(sizes)` if the whole batch stays below the mark.

    So a batch that starts before the mark sends at least one object, every
    object sent but the first starts before the mark, and only the last one
    sent may reach or cross it: "no batch that starts before that mark runs
    more than one object past it" (PROTOCOL.md section 3.1).

    If n < len(sizes), the body has reached the mark: the caller sends
    `close` reason `rotate` right after `batch[:n]`, and `batch[n:]` is not
    sent on this response (its stored events come again from the log when
    the client resumes from its cursor; its ephemeral ones are the caller's
    to carry or drop). If n == len(sizes), the caller rotates after the
    batch iff the body has reached `rotate-bytes`, as after any write.
    Raises ValueError for a negative size.
    """
    if budget <= 0:
        return 0
    total = 0
    for n, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"object sizes are byte counts, got {size}")
        if total >= budget:
            return n
        total += size
    return len(sizes)


class ArrayBatchFramer(Framer):
    """A streaming framer that wraps each batch as one JSON array between fixed bytes.

    multipart and htmlfile: a batch is `open + [OBJ,...] + close` (`open` ends
    with `[`, `close` starts with `]`), a control frame is a batch of one,
    the heartbeat an empty batch, and `epilogue_bytes` end the response.
    """

    open_bytes = b"["
    close_bytes = b"]"
    epilogue_bytes = b""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.batch_prefix = len(cls.open_bytes)

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        if not events:
            return b""
        return self.open_bytes + b",".join([e.raw for e in events]) + self.close_bytes

    def control(self, obj: dict[str, Any]) -> bytes:
        return self.open_bytes + encode(obj) + self.close_bytes

    def heartbeat(self) -> bytes:
        return self.open_bytes + self.close_bytes

    def epilogue(self) -> bytes:
        return self.epilogue_bytes
