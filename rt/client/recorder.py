"""`LabRecorder`: a listener that writes the race lab's records (LAB.md section 2).

The records, one dict each, handed to `write` in the order things happened:

- `{"view": C}`: the client (re)starts its view at cursor C (`on_view`);
- `{"seen": E}`: the client shows stored event E, the object as received;
- `{"acked": C, "id": N}`: the post whose content is C is stored with id N;
- `{"gave_up": C, "error": CODE}`: the post C will not be retried;
- `{"stopped": true}`: the last record (`stopped()`, called by the driver
  once `client.stop()` returned).

Only posts make `acked`/`gave_up` records (the lab asks for posts only).
`write` is called synchronously: `python -m rt.client.driver` prints each
record as a JSON line; a lab running many clients in one process gives each
client a recorder whose `write` appends to that client's history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rt.client.listener import Listener
from rt.client.outbox import Op

Record = dict[str, Any]


class LabRecorder(Listener):
    def __init__(self, write: Callable[[Record], None]) -> None:
        self.write = write

    def on_view(self, cursor: int, epoch: str) -> None:
        self.write({"view": cursor})

    def on_event(self, event: dict[str, Any]) -> None:
        self.write({"seen": event})

    def on_acked(self, op: Op, result: dict[str, Any]) -> None:
        if op.kind == "post":
            self.write({"acked": op.content, "id": result["id"]})

    def on_gave_up(self, op: Op, code: str) -> None:
        if op.kind == "post":
            self.write({"gave_up": op.content, "error": code})

    def gave_up(self, content: Any, code: str) -> None:
        """A post the client refused before it became an op (a bad flow name)."""
        self.write({"gave_up": content, "error": code})

    def stopped(self) -> None:
        self.write({"stopped": True})
