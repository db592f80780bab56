"""The backend's live-state conformance checks (rt.testing.backend) on the local backend."""

from __future__ import annotations

from rt.backend.bus import LocalBus
from rt.backend.claims import LocalClaims
from rt.backend.presence import LocalPresence
from rt.backend.tickets import LocalTickets
from rt.testing.backend import BusChecks, ClaimsChecks, PresenceChecks, TicketsChecks


class TestLocalTickets(TicketsChecks):
    def make_tickets(self, ttl):
        return LocalTickets(ttl)


class TestLocalPresence(PresenceChecks):
    def make_presence(self, grace, publish):
        return LocalPresence(grace, publish)


class TestLocalClaims(ClaimsChecks):
    def make_claims(self, write_timeout, max_streams):
        return LocalClaims(write_timeout, max_streams)


class TestLocalBus(BusChecks):
    def make_bus(self, hub):
        return LocalBus(hub)
