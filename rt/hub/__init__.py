"""Live fan-out of events to subscribers. `MemoryHub` now; `RedisHub` later."""

from rt.hub.memory import MemoryHub, Subscriber

__all__ = ["MemoryHub", "Subscriber"]
