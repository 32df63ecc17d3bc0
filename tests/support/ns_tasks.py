"""Call tasks that use typed namespace views (``procpool.task.namespace(State)``); importable by
the daemon's workers and by Dask workers (the job's python_path names the repository)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from procpool import task


@dataclass
class Point:
    x: float
    y: float = 0.0


@dataclass
class State:
    count: int = 0
    names: list[str] = field(default_factory=list)
    best: float | None = None
    point: Point | None = None


def typed_incr() -> int:
    """Increment ``count`` through the typed view; returns the new value (an int)."""
    value = task.namespace(State).incr("count")
    assert type(value) is int, type(value)
    return value


def typed_record(name: str, score: float) -> dict[str, Any]:
    """Append ``name``, keep the best ``score`` (compare-and-set) and return what the view reads."""
    view = task.namespace(State)
    view.append("names", name)
    while True:
        best = view.get("best")
        if best is not None and best >= score:
            break
        if view.cas("best", best, score):
            break
    view.set("point", Point(score, 1.0))
    state = view.snapshot()
    return {"count": view.count, "names": len(state.names), "best": type(view.best).__name__,
            "point": [state.point.x, state.point.y] if state.point else None}


def typed_read(name: str) -> str:
    """Read field ``name`` through the typed view (a wrong type raises NamespaceTypeError)."""
    return repr(getattr(task.namespace(State), name))


def untyped_set(key: str, value: Any) -> None:
    """Set ``key`` with the untyped API (the daemon checks it against a namespace_schema)."""
    task.namespace().set(key, value)


def untyped_append(key: str, value: Any) -> int:
    return task.namespace().append(key, value)
