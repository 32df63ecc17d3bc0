"""Namespace operations, applied atomically by the daemon's loop (pure functions over a dict).

A namespace's size is bounded (``max_namespace_bytes``): :class:`Sizes` keeps the encoded size
of each key up to date, so a change costs the size of what changes, never an encoding of the
whole namespace, and an operation that would grow it beyond the limit fails, changing nothing.
"""

from __future__ import annotations

from typing import Any

from procpool.contract.codec import pack
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import shorten
from procpool.contract.nsschema import Record, check_update
from procpool.task import NAMESPACE_OPS

#: Operations that may change a namespace's size.
_GROWING = frozenset({"set", "incr", "append", "cas"})

_MISSING = object()


def _bad(message: str) -> ProcpoolError:
    return ProcpoolError(ErrorCode.INVALID_ARGUMENT, f"namespace: {message}")


def _size(value: Any) -> int:
    try:
        return len(pack(value))
    except (OverflowError, TypeError, ValueError):
        raise _bad(f"a value of type {type(value).__name__} cannot be stored") from None


class Sizes:
    """The approximate encoded size of one namespace, per key (msgpack bytes of key and value)."""

    def __init__(self, ns: dict[str, Any], limit: int) -> None:
        self.limit = limit
        self.of: dict[str, int] = {}
        for key, value in ns.items():
            try:
                self.of[key] = _size(key) + _size(value)
            except ProcpoolError:
                self.of[key] = 0
        self.total = sum(self.of.values())

    def check(self, op: str, key: str, new: int) -> None:
        """Refuse ``op`` if ``key`` growing to ``new`` bytes would take the total past the limit."""
        total = self.total - self.of.get(key, 0) + new
        if total > self.limit and new > self.of.get(key, 0):
            raise ProcpoolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"namespace: {op} of key {shorten(key, 64)} would make the namespace {total} bytes, "
                f"the limit is max_namespace_bytes = {self.limit}",
                "store large values in files and keep their paths in the namespace",
            )

    def update(self, key: str, new: int | None) -> None:
        """``key`` is now ``new`` bytes (None: deleted)."""
        self.total -= self.of.pop(key, 0)
        if new is not None:
            self.of[key] = new
            self.total += new


def apply(
    ns: dict[str, Any],
    op: str,
    args: dict[str, Any],
    sizes: Sizes | None = None,
    schema: Record | None = None,
) -> Any:
    """Apply one operation to ``ns`` in place and return its result.

    With ``sizes`` (kept up to date here), an operation that would grow the namespace past
    ``sizes.limit`` raises a ``limit_exceeded`` error and changes nothing. With ``schema`` (the
    job's ``namespace_schema``), an operation that would store a value of another type than the
    schema declares, or a key it does not declare, raises an ``invalid_argument`` error naming the
    key and both types, and changes nothing.
    """
    if op not in NAMESPACE_OPS:
        raise _bad(f"unknown operation {shorten(op, 64)}; known: {', '.join(NAMESPACE_OPS)}")
    extra = set(args) - set(NAMESPACE_OPS[op])
    if extra:
        raise _bad(f"{op}: unknown argument(s) {shorten(', '.join(sorted(map(str, extra))))}")
    if schema is not None and op in _GROWING:
        key = args.get("key")
        if not isinstance(key, str):
            raise _bad(f"{op}: key must be a string")
        why = check_update(schema, op, key, args, ns.get(key))
        if why is not None:
            raise _bad(f"{why} (the job's namespace_schema)")
    if sizes is None or (op not in _GROWING and op != "delete"):
        return _apply(ns, op, args)
    key = args.get("key")
    if not isinstance(key, str):
        raise _bad(f"{op}: key must be a string")
    if op == "delete":
        result = _apply(ns, op, args)
        sizes.update(key, None)
        return result
    if op in ("set", "cas"):
        new = _size(key) + _size(args.get("value"))
    elif op == "append":
        current = sizes.of.get(key)
        new = (current if current is not None else _size(key) + 1) + _size(args.get("value"))
    else:  # incr: a number
        new = _size(key) + 9
    sizes.check(op, key, new)
    result = _apply(ns, op, args)
    if op != "cas" or result is True:
        sizes.update(key, new)
    return result


def _apply(ns: dict[str, Any], op: str, args: dict[str, Any]) -> Any:
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
                raise _bad(
                    f"incr: {shorten(key, 64)} and the increment must be numbers, got {type(value).__name__}"
                )
        total = current + by
        if isinstance(total, int) and not -(2**63) <= total < 2**64:  # msgpack (and the store) hold 64 bits
            raise _bad(f"incr: {shorten(key, 64)} would leave the 64-bit range")
        ns[key] = total
        return ns[key]
    if op == "append":
        current = ns.setdefault(key, [])
        if not isinstance(current, list):
            raise _bad(f"append: {shorten(key, 64)} holds a {type(current).__name__}, not a list")
        current.append(args.get("value"))
        return len(current)
    # cas
    current = ns.get(key)
    if current == args.get("expected") and type(current) is type(args.get("expected")):
        ns[key] = args.get("value")
        return True
    return False
