"""Live fan-out of events to a node's subscribers (the contract: rt/hub/contracts.py).

`MemoryHub` is the node-local hub every backend uses; what a shared backend
swaps is the bus and the log's reader behind it (rt/backend).
"""

from rt.hub.contracts import DirectSink, Hub
from rt.hub.memory import MemoryHub, Subscriber

__all__ = ["DirectSink", "Hub", "MemoryHub", "Subscriber"]
