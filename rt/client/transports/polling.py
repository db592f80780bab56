"""The polling transports: `poll` (a JSON array per answer) and `jsonp` (`/**/F([...]);`).

A run of polls on the client's keep-alive pool, each carrying the cursor the
previous answer left (PROTOCOL.md section 3.2). The server's polling session
(user, client id) lives between polls: the first poll of a session answers
`ready`; a poll that finds its session still there (same cursor, epoch and
flows) just continues, without `ready`. An answer may hold a new `ready` (a
new session), `[]` (poll-timeout, or a newer poll superseded this one) or a
`close`. Each poll waits for its answer at most `poll_timeout` plus a
margin: past that the connection is taken for dead and the run ends.
"""

from __future__ import annotations

import trio

from rt.client.errors import ProtocolError
from rt.client.parsers import JsonpParser, PollParser
from rt.client.retry import clamp, parse_retry_after
from rt.client.transports.base import End, Link, Refused

MIN_POLL_GAP = 0.1  # poll-rate is 10 a second per session
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # 500 objects of at most a few hundred KiB
CONTENT_TYPES = {"poll": "application/json", "jsonp": "application/javascript"}


async def run_polling(link: Link) -> End:
    t = link.timeouts
    last_start = -1e9
    while True:
        gap = last_start + MIN_POLL_GAP - trio.current_time()
        if gap > 0:
            await trio.sleep(gap)
        last_start = trio.current_time()
        response = await link.poll_pool.request(
            "GET",
            link.target(),
            link.headers,
            head_timeout=link.poll_timeout + t.poll_margin,
            read_timeout=t.request,
            limit=MAX_ANSWER_BYTES,
        )
        if response.status == 429:
            # Polled too fast: the same session, after the wait.
            wait = parse_retry_after(response.header("retry-after"))
            await trio.sleep(clamp(wait, 0.05, 10.0) or 1.0)
            continue
        if response.status != 200:
            return Refused.of(response)
        ctype = (response.header("content-type") or "").lower()
        if not ctype.startswith(CONTENT_TYPES[link.transport]):
            raise ProtocolError(f"{link.transport} answer: Content-Type {ctype!r}")
        parser = PollParser() if link.transport == "poll" else JsonpParser(link.callback)
        parser.feed(response.body)
        objects = parser.end()
        if not link.ready:
            if objects and objects[0].get("type") == "ready":
                pass  # a new session: feed() handles its ready
            elif link.has_cursor():
                link.continued()  # the session went on from our cursor
            elif objects:
                raise ProtocolError(
                    f"the first {link.transport} answer of a session "
                    f"starts with {objects[0].get('type')!r}, not ready"
                )
            else:
                continue  # superseded before it could answer ready: ask again
        end = link.feed(objects)
        if end is not None:
            return end
