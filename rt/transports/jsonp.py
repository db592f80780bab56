"""JSONP polling: `/**/F([OBJ,...]);` per response (PROTOCOL.md section 3.1,
`?callback=F`).

The body starts with the comment `/**/` so that it never starts with bytes
the caller chose (a callback such as `CWS...` would otherwise make the
response look like a Flash file: the "Rosetta Flash" attack). F is checked
against the callback grammar, and OBJ escapes `<`, `>`, `&`, U+2028 and
U+2029, so the body is one call whatever the content.

The shared instance in FRAMERS has no callback: `for_request(callback)`
returns one bound to the validated callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.events import Event
from rt.transports.base import Framer, bound_callback


class JsonpFramer(Framer):
    name = "jsonp"
    content_type = "application/javascript; charset=utf-8"
    polling = True
    needs_callback = True

    def __init__(self, callback: str | None = None) -> None:
        self.callback = callback
        self._open = None if callback is None else b"/**/" + callback.encode("ascii") + b"(["

    def for_request(self, callback: str | None) -> JsonpFramer:
        return JsonpFramer(bound_callback(self.name, callback))

    def answer(self, parts: Sequence[bytes]) -> bytes:
        if self._open is None:
            raise RuntimeError("jsonp framer has no callback: use for_request(callback)")
        return self._open + b",".join(parts) + b"]);"

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        return self.answer([e.raw for e in events])

    def control(self, obj: dict[str, Any]) -> bytes:
        return self.answer([encode(obj)])

    def heartbeat(self) -> bytes:
        raise NotImplementedError("polling has no heartbeat: an idle poll answers F([])")
