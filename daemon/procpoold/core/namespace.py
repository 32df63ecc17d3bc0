"""Namespace operations, applied atomically by the daemon's loop (pure functions over a dict)."""

from __future__ import annotations

from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.task import NAMESPACE_OPS

_MISSING = object()


def _bad(message: str) -> ProcpoolError:
    return ProcpoolError(ErrorCode.INVALID_ARGUMENT, f"namespace: {message}")


def apply(ns: dict[str, Any], op: str, args: dict[str, Any]) -> Any:
    """Apply one operation to ``ns`` in place and return its result."""
    if op not in NAMESPACE_OPS:
        raise _bad(f"unknown operation {op!r}; known: {', '.join(NAMESPACE_OPS)}")
    extra = set(args) - set(NAMESPACE_OPS[op])
    if extra:
        raise _bad(f"{op}: unknown argument(s) {', '.join(sorted(extra))}")
    if op == "snapshot":
        return dict(ns)
    key = args.get("key")
    if not isinstance(key, str):
        raise _bad(f"{op}: key must be a string")
    if op == "get":
        return ns.get(key, args.get("default"))
    if op == "set":
        ns[key] = args.get("value")
        return None
    if op == "delete":
        return ns.pop(key, _MISSING) is not _MISSING
    if op == "incr":
        by = args.get("by", 1)
        current = ns.get(key, 0)
        for value in (by, current):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _bad(f"incr: {key!r} and the increment must be numbers, got {type(value).__name__}")
        ns[key] = current + by
        return ns[key]
    if op == "append":
        current = ns.setdefault(key, [])
        if not isinstance(current, list):
            raise _bad(f"append: {key!r} holds a {type(current).__name__}, not a list")
        current.append(args.get("value"))
        return len(current)
    # cas
    current = ns.get(key)
    if current == args.get("expected") and type(current) is type(args.get("expected")):
        ns[key] = args.get("value")
        return True
    return False
