"""The outbox: ops (post, edit, tag, delete) sent over HTTP, exactly once each.

Contract:

- Each op gets its uuid once, when it is made, and every attempt sends that
  same uuid: the server stores an op once per (user, uuid) and answers a
  repeat with what the first attempt got (PROTOCOL.md section 2), so a
  retry after a lost answer never doubles a post.
- Ops start in the order they were made, at most `concurrency` at a time
  (so a client's posts are stored in order unless one of them had to be
  retried).
- Retried, with the same uuid, for as long as the client runs (or
  `give_up_after` seconds): network failures and timeouts (the op may or
  may not have reached the server), 429 and 503 after their `Retry-After`,
  408 and other 5xx with backoff. Given up at once: 400, 401, 403, 404,
  409, 413 and any other 4xx, with the server's error code.
- An op is acknowledged when the answer carries its result: for a post the
  stored event (201, or 200 for a repeat of a used uuid); for an edit, tag
  or delete the stored event, or `{"changed": false, "state": S}` for a
  no-op. `await op.done` returns that, or raises `GaveUp`.
- `drain()` waits until nothing is pending; `abandon(code)` gives up every
  op still pending (at stop: code `stopped`; such an op may or may not be
  stored).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import quote

import orjson
import trio

from rt.client.errors import GaveUp, NetworkError
from rt.client.http import HttpPool
from rt.client.retry import Backoff, clamp, classify, make_uuid, parse_retry_after

log = logging.getLogger("rt.client")

_EVENT_TYPES = {"post": "message", "edit": "edit", "tag": "tag", "delete": "delete"}


class _Done:
    """`await op.done`: the op's result, or GaveUp."""

    __slots__ = ("_op",)

    def __init__(self, op: Op) -> None:
        self._op = op

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self._op.wait().__await__()


class Op:
    """One operation of the outbox. `Post` is the same class (`kind == "post"`).

    Attributes: `kind`, `flow`, `uuid`, `content`, `message` (the target id,
    or the `Op` of a post not yet stored: the op then waits for its id),
    `add`, `remove`; `state` ("pending", "acked", "gave_up"), `result` (the
    server's answer once acked), `error` (`GaveUp` once given up),
    `attempts` (requests sent so far), `status` (the HTTP status of the last
    answer: 201 for a post stored by this attempt, 200 for a repeat of a uuid
    the server had already stored, None before any answer).
    """

    __slots__ = (
        "kind",
        "flow",
        "uuid",
        "content",
        "message",
        "add",
        "remove",
        "state",
        "result",
        "error",
        "attempts",
        "status",
        "created",
        "_settled",
    )

    def __init__(
        self,
        kind: str,
        flow: str,
        *,
        content: str | None = None,
        message: int | Op | None = None,
        add: list[str] | None = None,
        remove: list[str] | None = None,
        uuid: str | None = None,
    ) -> None:
        if kind not in _EVENT_TYPES:
            raise ValueError(f"unknown op {kind!r}")
        self.kind = kind
        self.flow = flow
        self.uuid = uuid or make_uuid()
        self.content = content
        self.message = message
        self.add = add
        self.remove = remove
        self.state = "pending"
        self.result: dict[str, Any] | None = None
        self.error: GaveUp | None = None
        self.attempts = 0
        self.status: int | None = None
        self.created = trio.current_time()
        self._settled = trio.Event()

    def __repr__(self) -> str:
        return f"<Op {self.kind} {self.flow} {self.uuid} {self.state}>"

    @property
    def settled(self) -> bool:
        return self.state != "pending"

    @property
    def id(self) -> int | None:
        """The stored event's id, once acked with one."""
        result = self.result
        value = result.get("id") if result else None
        return value if isinstance(value, int) else None

    @property
    def done(self) -> _Done:
        return _Done(self)

    async def wait(self) -> dict[str, Any]:
        """The op's result once acknowledged; raises GaveUp if it was given up."""
        await self._settled.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def request(self) -> tuple[str, str, bytes | None]:
        """(method, path, body) of this op's HTTP request (PROTOCOL.md section 4)."""
        base = f"/flows/{quote(self.flow, safe='')}/messages"
        if self.kind == "post":
            return "POST", base, orjson.dumps({"content": self.content, "uuid": self.uuid})
        target = self.message.id if isinstance(self.message, Op) else self.message
        if self.kind == "edit":
            return (
                "PATCH",
                f"{base}/{target}",
                orjson.dumps({"content": self.content, "uuid": self.uuid}),
            )
        if self.kind == "tag":
            return (
                "POST",
                f"{base}/{target}/tags",
                orjson.dumps(
                    {"add": self.add or [], "remove": self.remove or [], "uuid": self.uuid}
                ),
            )
        return "DELETE", f"{base}/{target}?uuid={quote(self.uuid, safe='')}", None

    def valid_result(self, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        if isinstance(body.get("id"), int) and not isinstance(body["id"], bool):
            return body.get("type") == _EVENT_TYPES[self.kind] and body.get("uuid") == self.uuid
        return self.kind != "post" and body.get("changed") is False


Post = Op


class Outbox:
    """The ops of one client, sent in order over `pool` (see the module docstring)."""

    def __init__(
        self,
        pool: HttpPool,
        headers: list[tuple[str, str]],
        *,
        request_timeout: float,
        on_acked: Callable[[Op, dict[str, Any]], None],
        on_gave_up: Callable[[Op, str], None],
        concurrency: int = 4,
        give_up_after: float | None = None,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        name: str = "",
    ) -> None:
        self._pool = pool
        self._headers = [
            *headers,
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ]
        self._timeout = request_timeout
        self._on_acked = on_acked
        self._on_gave_up = on_gave_up
        self.concurrency = max(1, concurrency)
        self.give_up_after = give_up_after
        self._backoff = Backoff(backoff_base, backoff_cap)
        self._name = name
        self._queue: deque[Op] = deque()
        self.pending: set[Op] = set()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.retries = 0  # attempts after the first, for statistics

    def add(self, op: Op) -> Op:
        self._queue.append(op)
        self.pending.add(op)
        self._wake.set()
        return op

    async def run(self) -> None:
        """Send ops until cancelled (the client's task)."""
        slots = trio.Semaphore(self.concurrency)
        async with trio.open_nursery() as nursery:
            while True:
                while not self._queue:
                    self._wake = trio.Event()
                    await self._wake.wait()
                await slots.acquire()
                op = self._queue.popleft()
                if op.settled:
                    slots.release()
                    continue
                nursery.start_soon(self._send, op, slots)

    async def drain(self) -> None:
        """Wait until no op is pending."""
        while self.pending:
            changed = self._changed
            await changed.wait()

    def abandon(self, code: str, message: str) -> None:
        """Give up every pending op with `code` (they are not retried from now on)."""
        for op in sorted(self.pending, key=lambda o: o.created):
            self._give_up(op, GaveUp(code, message, op=op))

    # -- one op ------------------------------------------------------------------

    async def _send(self, op: Op, slots: trio.Semaphore) -> None:
        try:
            if isinstance(op.message, Op):
                try:
                    await op.message.wait()
                except GaveUp:
                    self._give_up(
                        op, GaveUp("not_found", "the post this op aims at was given up", op=op)
                    )
                    return
                if op.message.id is None:
                    self._give_up(
                        op, GaveUp("not_found", "the op this op aims at stored no message", op=op)
                    )
                    return
            while not op.settled:
                if (
                    self.give_up_after is not None
                    and trio.current_time() - op.created > self.give_up_after
                ):
                    self._give_up(
                        op,
                        GaveUp(
                            "timeout", f"not acknowledged within {self.give_up_after:g} s", op=op
                        ),
                    )
                    return
                delay = await self._attempt(op)
                if delay is not None:
                    await trio.sleep(delay)
        finally:
            slots.release()

    def _delay(self, op: Op) -> float:
        return self._backoff.uniform(0, self._backoff.ceiling(op.attempts - 1))

    async def _attempt(self, op: Op) -> float | None:
        """Send `op` once; None when it settled, else the delay before the next attempt."""
        if op.attempts:
            self.retries += 1
        op.attempts += 1
        method, path, body = op.request()
        try:
            response = await self._pool.request(
                method,
                path,
                self._headers,
                body,
                head_timeout=self._timeout,
                read_timeout=self._timeout,
            )
        except NetworkError as error:
            # The op may or may not have reached the server: its uuid makes the retry safe.
            log.info(
                "rt.client %s: %s %s attempt %d failed (%s); retrying with the same uuid",
                self._name,
                op.kind,
                op.uuid,
                op.attempts,
                error,
            )
            return self._delay(op)
        op.status = response.status
        verdict = classify(response.status)
        if verdict == "ok":
            result = response.json()
            if op.valid_result(result):
                self._ack(op, result)
                return None
            log.warning(
                "rt.client %s: %s %s answered %d with %r, not its result (the server's "
                "fault); retrying with the same uuid",
                self._name,
                op.kind,
                op.uuid,
                response.status,
                response.body[:200],
            )
            return self._delay(op)
        if verdict == "retry":
            wait = parse_retry_after(response.header("retry-after"))
            log.info(
                "rt.client %s: %s %s got %d; retrying with the same uuid",
                self._name,
                op.kind,
                op.uuid,
                response.status,
            )
            return clamp(wait, 0.0, 60.0) if wait is not None else self._delay(op)
        code, message = response.error()
        self._give_up(
            op,
            GaveUp(
                code or f"http_{response.status}",
                message or f"the server answered {response.status}",
                status=response.status,
                op=op,
            ),
        )
        return None

    def _settle(self, op: Op) -> None:
        self.pending.discard(op)
        op._settled.set()
        self._changed.set()
        self._changed = trio.Event()

    def _ack(self, op: Op, result: dict[str, Any]) -> None:
        if op.settled:
            return
        op.state = "acked"
        op.result = result
        self._settle(op)
        self._on_acked(op, result)

    def _give_up(self, op: Op, error: GaveUp) -> None:
        if op.settled:
            return
        op.state = "gave_up"
        op.error = error
        self._settle(op)
        self._on_gave_up(op, error.code)
