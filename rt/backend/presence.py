"""`LocalPresence`: who follows which flow in this process, announced once per user and
flow, with grace.

A user is present in a flow while at least one of their streams (or polling
sessions) follows it. `join` announces `online` only when the user was not
present; `leave` of the last claimant schedules `offline` for
`grace` seconds later, and a `join` before then cancels it, so a reconnect
does not flap. Times are on Trio's clock (tests use `autojump_clock`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import trio

from rt.core.events import Event, presence_event


class LocalPresence:
    def __init__(self, grace: float, publish: Callable[[Event], None]) -> None:
        self.grace = grace
        self._publish = publish
        self._counts: dict[tuple[str, str], int] = {}
        self._offline_at: dict[tuple[str, str], float] = {}
        self._changed = trio.Event()

    def join(self, user: str, flows: Iterable[str]) -> None:
        for flow in flows:
            key = (flow, user)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if count == 0 and self._offline_at.pop(key, None) is None:
                self._publish(presence_event(flow, user, "online"))

    def leave(self, user: str, flows: Iterable[str]) -> None:
        deadline = trio.current_time() + self.grace
        for flow in flows:
            key = (flow, user)
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
                continue
            self._counts.pop(key, None)
            self._offline_at[key] = deadline
        self._changed.set()

    def leave_now(self, user: str, flows: Iterable[str]) -> None:
        """Announce `offline` at once (access revoked), whatever else is open."""
        for flow in flows:
            key = (flow, user)
            counted = self._counts.pop(key, 0) > 0
            leaving = self._offline_at.pop(key, None) is not None
            if counted or leaving:
                self._publish(presence_event(flow, user, "offline"))

    def online(self, flow: str) -> list[str]:
        """Users present in `flow`, those within their grace included."""
        users = {u for (f, u) in self._counts if f == flow}
        users.update(u for (f, u) in self._offline_at if f == flow)
        return sorted(users)

    def snapshot(self, flows: Iterable[str]) -> dict[str, list[str]]:
        return {flow: self.online(flow) for flow in flows}

    def expire(self, now: float) -> float:
        """Announce every offline that is due; return when the next one is."""
        due = [key for key, at in self._offline_at.items() if at <= now]
        for key in due:
            del self._offline_at[key]
            self._publish(presence_event(key[0], key[1], "offline"))
        return min(self._offline_at.values(), default=math.inf)

    async def run(self) -> None:
        """Announce offlines as they fall due, for ever."""
        while True:
            next_at = self.expire(trio.current_time())
            self._changed = trio.Event()
            with trio.move_on_at(next_at):
                await self._changed.wait()
