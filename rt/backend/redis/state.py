"""The small shared pieces of a Redis backend: tickets, rate limits, the ephemeral bus.

- `RedisTickets`: a ticket is a key with an expiry; redeeming it extends the
  expiry (GETEX), so it lapses `ttl` seconds after its last use, on any node.
- `RedisRateLimit`: a token bucket per key in Redis, updated by one script
  on Redis's own clock, so a user's rate holds across every node.
- `RedisBus`: ephemeral events (typing) on a pub/sub channel. A node
  publishes its own events to its hub at once and ignores them when they
  come back, so its clients wait for no round trip.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from rt.backend.redis.connection import reachable
from rt.backend.redis.keys import Keys
from rt.core.errors import RtError
from rt.core.events import Event
from rt.hub.contracts import Hub

log = logging.getLogger("rt.redis")


@dataclass
class Ticket:
    user: str
    client: str
    token: str


class RedisTickets:
    def __init__(self, client: Any, keys: Keys, ttl: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl

    async def issue(self, user: str, client: str, token: str) -> tuple[str, int]:
        ticket = "tk_" + secrets.token_urlsafe(24)
        with reachable("issuing a ticket"):
            await self.client.set(
                self.keys.ticket(ticket),
                orjson.dumps({"user": user, "client": client, "token": token}),
                px=int(self.ttl * 1000),
            )
        return ticket, int((time.time() + self.ttl) * 1000)

    async def redeem(self, ticket: str, client: str) -> Ticket:
        with reachable("redeeming a ticket"):
            raw = await self.client.getex(self.keys.ticket(ticket), px=int(self.ttl * 1000))
        if raw is None:
            raise RtError(
                "unauthorized",
                "the ticket is unknown or has lapsed; get a new one from POST /auth/ticket",
            )
        record = orjson.loads(raw)
        if record["client"] != client:
            raise RtError("unauthorized", "the ticket was issued for another client id")
        return Ticket(record["user"], record["client"], record["token"])


# KEYS[1]: the bucket. ARGV: rate (tokens a second), burst, 1 to take or -1 to refund.
# Answers the seconds to wait (as a string), "0" when a token was taken.
BUCKET = r"""
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or t
tokens = math.min(burst, tokens + (t - stamp) * rate)
local wait = 0
if ARGV[3] == '-1' then
  tokens = math.min(burst, tokens + 1)
elseif tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimit:
    def __init__(self, client: Any, keys: Keys, name: str, rate: float, burst: float) -> None:
        self.client = client
        self.prefix = f"{keys.prefix}:bucket:{name}:"
        self.rate = rate
        self.burst = burst
        self._script = client.register_script(BUCKET)

    async def take(self, key: str) -> float:
        with reachable("the rate limit"):
            answer = await self._script(keys=[self.prefix + key], args=[self.rate, self.burst, 1])
        return float(answer)

    async def refund(self, key: str) -> None:
        with reachable("the rate limit"):
            await self._script(keys=[self.prefix + key], args=[self.rate, self.burst, -1])


class RedisBus:
    def __init__(self, client: Any, keys: Keys, hub: Hub, node: str) -> None:
        self.client = client
        self.keys = keys
        self.hub = hub
        self.node = node
        self._send, self._receive = trio.open_memory_channel[bytes](10_000)

    def publish(self, event: Event) -> None:
        self.hub.publish_ephemeral(event)
        try:
            self._send.send_nowait(orjson.dumps({"n": self.node, "e": event.data}))
        except trio.WouldBlock:
            log.warning("rt: the Redis bus is behind; an ephemeral event stayed on this node")

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward)
            await subscribe(self.client, self.keys.bus, self._delivered)

    async def _forward(self) -> None:
        async for message in self._receive:
            try:
                await self.client.publish(self.keys.bus, message)
            except Exception as error:  # Redis away: ephemeral events are best effort
                log.warning("rt: publishing on the Redis bus failed: %s", error)

    def _delivered(self, data: bytes) -> None:
        message = orjson.loads(data)
        if message.get("n") != self.node:
            self.hub.publish_ephemeral(Event(message["e"]))


async def subscribe(client: Any, channel: str, handler: Any) -> None:
    """Call `handler(data)` for every message on `channel`, for ever (resubscribing)."""
    while True:
        try:
            async with client.pubsub(channels=[channel]) as pubsub:
                async for message in pubsub:
                    if message is not None and message.get("type") == "message":
                        handler(message["data"])
        except Exception as error:
            log.warning(
                "rt: the Redis subscription to %s broke (%s); resubscribing", channel, error
            )
            await trio.sleep(0.5)
