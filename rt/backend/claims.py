"""`LocalClaims`: one live stream per (user, client id), in this process (docs/architecture.md
invariant 5; the contract is rt/backend/contracts.py's `Claims`).

A new claimant is registered at once and ends the previous one (which then
delivers nothing more: ending detaches it from the hub), waits for it at
most `write_timeout`, then re-checks that it is still the registered one
(three can race). A user's claimants past `max_streams` are evicted, oldest
first. A claimant is forgotten only if the entry still points to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


class LocalClaims:
    """Live claimants by (user, client id), and by user for the stream limit."""

    def __init__(self, write_timeout: float, max_streams: int) -> None:
        self.write_timeout = write_timeout
        self.max_streams = max_streams
        self.by_key: dict[tuple[str, str], Any] = {}
        self.by_user: dict[str, list[Any]] = {}
        self.on_takeover: Callable[[Any], None] = lambda old: None

    def __len__(self) -> int:
        return len(self.by_key)

    def claimants(self) -> list[Any]:
        return [s for sessions in self.by_user.values() for s in sessions]

    def holder(self, key: tuple[str, str]) -> Any | None:
        return self.by_key.get(key)

    async def elsewhere(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """Another node's claim of `key`: never, on a single node."""
        return None

    async def claim(self, session: Any) -> bool:
        """Make `session` the claimant of its key; False if a newer one won meanwhile.

        Ends the previous claimant and waits for it (at most write_timeout),
        and evicts the user's oldest stream past `max_streams`.
        """
        key = session.key
        old = self.by_key.get(key)
        self.by_key[key] = session
        streams = self.by_user.setdefault(session.user, [])
        streams.append(session)
        if old is not None:
            self.on_takeover(old)
            old.end("superseded")
            with trio.move_on_after(self.write_timeout):
                await old.done.wait()
        if self.by_key.get(key) is not session:
            return False
        live = [s for s in streams if s.ended is None]
        while len(live) > self.max_streams:
            live.pop(0).end("evicted")
        return True

    def release(self, session: Any) -> None:
        """Forget `session`; the key's entry only if it still points to it."""
        key = session.key
        if self.by_key.get(key) is session:
            del self.by_key[key]
        streams = self.by_user.get(session.user)
        if streams is not None:
            try:
                streams.remove(session)
            except ValueError:
                pass
            if not streams:
                del self.by_user[session.user]
