"""`LocalBus`: ephemeral events (presence, typing) straight into this node's hub."""

from __future__ import annotations

from rt.core.events import Event
from rt.hub.contracts import Hub


class LocalBus:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def publish(self, event: Event) -> None:
        self._hub.publish_ephemeral(event)

    async def run(self) -> None:
        return None
