"""XHR multipart: `multipart/x-mixed-replace`, one part per batch
(PROTOCOL.md section 3.1).

    --B\\r\\nContent-Type: application/json\\r\\n\\r\\n[OBJ,...]\\r\\n

A heartbeat is a part holding `[]`; `control` and `ready` are a part holding
`[OBJ]`. When the server ends the response it writes the close delimiter
`--B--\\r\\n` (`epilogue`). The response rotates after `rotate-bytes`.

The boundary is fixed, and that is safe: in RFC 2046 a delimiter is
`CRLF--B` (the CRLF at the end of a part belongs to the delimiter that
follows it, and only the very first one may stand at the start of the
body). OBJ never holds a raw CR or LF (the codec writes them as `\\r`,
`\\n`), so the body of a part, `[OBJ,...]`, holds no CRLF at all and
`\\r\\n--B` cannot occur inside it, whatever the content: content that
spells `\\r\\n--B\\r\\n` arrives as the escaped text `\\\\r\\\\n--B\\\\r\\\\n`.
For the same reason a client may take the first CRLF after a part's blank
line as the end of its body, and so handle each batch as soon as it
arrives rather than when the next delimiter does. (A reader that looked for
`--B` anywhere, not only after a CRLF, would not be RFC 2046 and could be
fooled by content: clients must find parts by `CRLF--B`, as the decoder in
tests/test_framers_more.py does.)
"""

from __future__ import annotations

from rt.transports.base import ArrayBatchFramer

# RFC 2046 bchars only, and no character that needs quoting beyond the
# quotes the content type puts around it anyway.
BOUNDARY = "rt-mixed-5f0c3a"

_OPEN = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/json\r\n\r\n["
_CLOSE = b"]\r\n"
_EPILOGUE = b"--" + BOUNDARY.encode() + b"--\r\n"


class MultipartFramer(ArrayBatchFramer):
    name = "multipart"
    content_type = f'multipart/x-mixed-replace; boundary="{BOUNDARY}"'
    rotates = True
    open_bytes = _OPEN
    close_bytes = _CLOSE
    epilogue_bytes = _EPILOGUE
