"""`LocalTickets`: stream tickets in this process (PROTOCOL.md section 4, POST /auth/ticket).

A ticket authenticates `/stream/*` for one user and client id, any number
of times; it lapses `ttl` seconds after its last use (or its issue), so a
leaked ticket dies a minute after its client leaves. Tickets live in
memory only: they do not survive a restart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import trio

from rt.core.errors import RtError


@dataclass
class Ticket:
    user: str
    client: str
    token: str  # the bearer token that asked for it: revoking it kills the ticket too
    lapses_at: float  # trio clock


class LocalTickets:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tickets: dict[str, Ticket] = {}

    async def issue(self, user: str, client: str, token: str) -> tuple[str, int]:
        """A new ticket and when it lapses if unused (Unix ms)."""
        self._sweep()
        ticket = "tk_" + secrets.token_urlsafe(24)
        self._tickets[ticket] = Ticket(user, client, token, trio.current_time() + self.ttl)
        return ticket, int((time.time() + self.ttl) * 1000)

    async def redeem(self, ticket: str, client: str) -> Ticket:
        """The ticket's record, its life extended; 401 if unknown, lapsed or for another client."""
        record = self._tickets.get(ticket)
        now = trio.current_time()
        if record is None or record.lapses_at <= now:
            self._tickets.pop(ticket, None)
            raise RtError(
                "unauthorized",
                "the ticket is unknown or has lapsed; get a new one from POST /auth/ticket",
            )
        if record.client != client:
            raise RtError("unauthorized", "the ticket was issued for another client id")
        record.lapses_at = now + self.ttl
        return record

    def _sweep(self) -> None:
        if len(self._tickets) < 1024:
            return
        now = trio.current_time()
        self._tickets = {k: t for k, t in self._tickets.items() if t.lapses_at > now}
