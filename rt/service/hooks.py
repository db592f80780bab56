"""`Hooks`: the test hooks of a node, injected whole (production passes `Hooks()`).

Each is None unless a test sets it; the hot paths pay one `is None`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rt.core.events import Event


@dataclass(frozen=True)
class Hooks:
    # Runs between a batch's commit and its publication; the writer waits for it.
    after_commit: Callable[[list[Event]], Awaitable[None]] | None = None
    # Called with (session, events) for every batch of events a session delivers.
    on_delivery: Callable[[Any, Sequence[Event]], None] | None = None
