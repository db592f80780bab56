"""Conformance checks every implementation of rt's contracts must pass (needs pytest).

Each module holds a class of pytest tests; a test module subclasses it with
a factory for the implementation under test, as `tests/` does for the
memory and SQLite ones and a Redis backend will:

- `rt.testing.log`: `LogChecks`, the log (run with a feed and a writer);
- `rt.testing.directory`: `DirectoryChecks`;
- `rt.testing.hub`: `HubChecks`;
- `rt.testing.backend`: `TicketsChecks`, `PresenceChecks`, `ClaimsChecks`, `BusChecks`.

`rt.testing.storage.Storage` runs a log and a directory the way a node
does (feed, writer), behind one object the checks talk to.
"""
