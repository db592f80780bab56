"""The event log and the directory of users, tokens and flows.

`MemoryStore` and `SqliteStore` implement `Store` (rt/store/base.py) and
pass one conformance suite (tests/test_store_conformance.py).
"""

from rt.store.base import OpResult, Store
from rt.store.memory import MemoryStore


def open_store_for(db: str, **kwargs) -> Store:
    """The store for a `--db` value: `:memory:` is the MemoryStore, else a SQLite file."""
    if db == ":memory:":
        return MemoryStore(**kwargs)
    from rt.store.sqlite import SqliteStore

    return SqliteStore(db, **kwargs)


__all__ = ["MemoryStore", "OpResult", "Store", "open_store_for"]
