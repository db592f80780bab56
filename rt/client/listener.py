"""What a client tells its application: the `Listener` protocol, with no-op defaults.

Callbacks run synchronously in the client's own tasks, in the order things
happened; they must not block (hand work to a task or a channel if it is
slow). A callback that raises is logged with its traceback and the client
goes on: it is the listener's bug, and the stream must not die of it.

Contract of the stream callbacks, per client:

- `on_view(cursor, epoch)`: the client (re)starts its view at `cursor`:
  after its first `ready`, and after every reset (a `ready` with
  `reset: true`, or of another epoch: the log the client followed is gone,
  drop what you hold and reload history). From then on every stored event
  of the flows with an id above `cursor` comes to `on_event`.
- `on_event(event)`: each stored event once, in strictly increasing id
  order within a view, with no gap (the client ignores ids at or below its
  cursor, so replays after a reconnect never reach you twice). The dict is
  the object as received.
- `on_ephemeral(obj)`: presence and typing objects, as received (never
  stored, never replayed: a reconnect may lose some).
- `on_acked(op, result)` / `on_gave_up(op, code)`: each op settles once,
  one way or the other (rt/client/outbox.py).
- `on_state(state)`: "connecting" (no `ready` yet), "open", "reconnecting"
  (the stream was open and is being re-established), "stopped" (after
  `stop()`, or a fatal refusal: then `on_error` came first).
- `on_error(error)`: the stream failed for good (`StreamFailed`: a 401, a
  flow that does not exist or may not be read, a bad parameter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rt.client.errors import ClientError
    from rt.client.outbox import Op


class Listener:
    """Subclass and override what you need; every method does nothing by default."""

    def on_view(self, cursor: int, epoch: str) -> None:
        pass

    def on_event(self, event: dict[str, Any]) -> None:
        pass

    def on_ephemeral(self, obj: dict[str, Any]) -> None:
        pass

    def on_acked(self, op: Op, result: dict[str, Any]) -> None:
        pass

    def on_gave_up(self, op: Op, code: str) -> None:
        pass

    def on_state(self, state: str) -> None:
        pass

    def on_error(self, error: ClientError) -> None:
        pass
