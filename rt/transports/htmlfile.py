"""HTMLFile: a never-ending HTML document in a hidden iframe
(PROTOCOL.md section 3.1, `?callback=F`).

The preamble is a document whose one script binds `p` to `parent.F`,
padded with an HTML comment of spaces to 1024 bytes, so that browsers that
buffer the first kilobyte before they run anything run it at once; a
comment renders nothing. Each batch is then

    <script>p([OBJ,...]);</script>\\n

a heartbeat `<script>p([]);</script>\\n`, and `control` and `ready` are
`<script>p([OBJ]);</script>\\n`. Content cannot end a script element early
or start one: OBJ writes every `<` as `\\u003c`, so `</script`, `<!--` and
`<script` never occur in it (and U+2028 and U+2029, which older JavaScript
took for line ends, are escaped too). F is checked against the callback
grammar (identifiers joined by dots, at most 64 characters), so it cannot
break out of `var p=parent.F;` either.

`epilogue` is `</body></html>\\n`: it closes the document when the server
ends the response. It is cosmetic (an HTML parser closes open elements at
the end of the input anyway), so a response cut short without it is fine.
The response rotates after `rotate-bytes`; the preamble counts.

The shared instance in FRAMERS has no callback: `for_request(callback)`
returns one bound to the validated callback, and only that one has a
preamble.
"""

from __future__ import annotations

from rt.transports.base import ArrayBatchFramer, bound_callback

PREAMBLE_BYTES = 1024

_HEAD = b'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
_OPEN = b"<script>p(["
_CLOSE = b"]);</script>\n"
_EPILOGUE = b"</body></html>\n"


def _preamble(callback: str) -> bytes:
    head = _HEAD + b"<script>var p=parent." + callback.encode("ascii") + b";</script>"
    # "<!--" + spaces + "-->\n": 8 bytes around the padding.
    padding = max(0, PREAMBLE_BYTES - len(head) - 8)
    return head + b"<!--" + b" " * padding + b"-->\n"


class HtmlFileFramer(ArrayBatchFramer):
    name = "htmlfile"
    content_type = "text/html; charset=utf-8"
    rotates = True
    open_bytes = _OPEN
    close_bytes = _CLOSE
    epilogue_bytes = _EPILOGUE
    needs_callback = True

    def __init__(self, callback: str | None = None) -> None:
        self.callback = callback
        self._preamble = None if callback is None else _preamble(callback)

    def for_request(self, callback: str | None) -> HtmlFileFramer:
        return HtmlFileFramer(bound_callback(self.name, callback))

    def preamble(self) -> bytes:
        if self._preamble is None:
            raise RuntimeError("htmlfile framer has no callback: use for_request(callback)")
        return self._preamble
