"""The durable state store: a write-ahead log of group commits, applied to SQLite off the loop.

This package's top level is the store's interface only (:mod:`.protocol`: the :class:`Store`
Protocol, the rows it reads back, its errors), so that the scheduler can name it without
importing SQLite. The composition root constructs the concrete store,
:class:`procpoold.store.sqlite.StateStore` (also reachable here, imported on first use). See
``docs/state.md`` for the guarantees: a job is durable before ``submit`` replies; every other
change is made durable once per loop iteration (group commit).
"""

from __future__ import annotations

from typing import Any

from procpoold.store.protocol import Store, StoredJob, StoreError, StoreFailure

__all__ = ["SCHEMA_VERSION", "StateStore", "Store", "StoreError", "StoreFailure", "StoredJob"]


def __getattr__(name: str) -> Any:
    if name in ("StateStore", "SCHEMA_VERSION"):
        from procpoold.store import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
