"""The durable state store (SQLite, standard library): jobs, tasks, attempts, namespaces.

See :mod:`.sqlite` for the implementation and ``docs/state.md`` for the
guarantees: a job is committed before ``submit`` replies; every other change is
written in one transaction per loop iteration (group commit).
"""

from procpoold.store.sqlite import SCHEMA_VERSION, StateStore, StoreError, StoreFailure

__all__ = ["SCHEMA_VERSION", "StateStore", "StoreError", "StoreFailure"]
