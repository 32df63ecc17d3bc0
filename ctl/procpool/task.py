"""The API that task code imports: context, namespace, progress, logger.

Inside a task (a ``call`` task running in a procpool worker)::

    from procpool import task

    def resize(path: str) -> int:
        ctx = task.context()
        ctx.logger.info("resizing %s (attempt %d)", path, ctx.attempt)
        done = task.namespace().incr("resized")
        task.progress(fraction=0.5)
        ...

Namespace operations are atomic because the daemon executes them, one at a
time, on its event loop: 200 concurrent tasks that each ``incr("n")`` leave
exactly 200. Outside a task (say, in a unit test of your function) these
calls raise :class:`NotInTask`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from procpool.contract.nsschema import NsType, Record

T = TypeVar("T")

#: Namespace operations understood by the daemon, with their argument names.
NAMESPACE_OPS: dict[str, tuple[str, ...]] = {
    "get": ("key", "default"),
    "set": ("key", "value"),
    "incr": ("key", "by"),
    "append": ("key", "value"),
    "cas": ("key", "expected", "value"),
    "delete": ("key",),
    "snapshot": (),
}


class NotInTask(RuntimeError):
    """A task API was used outside a running procpool task."""


class NamespaceTypeError(TypeError):
    """A namespace value does not have the type a typed view declares (never coerced).

    ``field`` is the value's path in the namespace (``count``, ``point.x``, ``names[2]``),
    ``expected`` the declared type and ``got`` the type found, as ``int``, ``list[str]``,
    ``float?`` (or null), ``null``.
    """

    def __init__(self, field: str, expected: str, got: str, owner: str) -> None:
        if expected == "no such field":
            message = f"namespace field {field} is not declared (by {owner}), got {got}"
        else:
            message = f"namespace field {field} is declared {expected} (by {owner}), got {got}"
        super().__init__(message)
        self.field = field
        self.expected = expected
        self.got = got
        self.owner = owner

    def __reduce__(self) -> tuple[Any, ...]:  # (an exception pickles its args: these are not those)
        return (type(self), (self.field, self.expected, self.got, self.owner))


class Channel(Protocol):
    """How a worker runtime carries task API calls to the daemon."""

    def request(self, op: str, args: dict[str, Any]) -> Any:
        """A round trip: the daemon's result, or raise the daemon's error."""

    def send(self, op: str, args: dict[str, Any]) -> None:
        """Fire and forget (progress reports)."""


@dataclass(frozen=True)
class TaskContext:
    """Who is running: ids, names, the attempt number and a logger."""

    job_id: str
    job_name: str
    task_id: str
    task_name: str
    attempt: int
    run: int
    logger: logging.Logger


class _Attempt:
    """The running attempt as the task API sees it; its :class:`TaskContext` is built on first use.

    A no-op task never asks for its context, so the worker's per-attempt cost stays one small
    object (a frozen dataclass takes microseconds to build).
    """

    __slots__ = ("_context", "channel", "fields", "logger")

    def __init__(
        self, channel: Channel, fields: dict[str, Any], logger: logging.Logger | None = None
    ) -> None:
        self.channel = channel
        self.fields = fields
        self.logger = logger
        self._context: TaskContext | None = None

    def context(self) -> TaskContext:
        if self._context is None:
            fields = self.fields
            self._context = TaskContext(
                job_id=str(fields["job_id"]),
                job_name=str(fields.get("job_name", "")),
                task_id=str(fields["task_id"]),
                task_name=str(fields["task_name"]),
                attempt=int(fields["attempt"]),
                run=int(fields.get("run", 1)),
                logger=self.logger or logging.getLogger(f"procpool.task.{fields['task_name']}"),
            )
        return self._context


_current: _Attempt | None = None


def _install(channel: Channel, fields: dict[str, Any], logger: logging.Logger | None = None) -> _Attempt:
    """Called by the worker runtime before the task function runs; returns what it installed."""
    global _current
    _current = _Attempt(channel, fields, logger)
    return _current


def _clear() -> None:
    """Called by the worker runtime after the task function returned."""
    global _current
    _current = None


def _need() -> _Attempt:
    if _current is None:
        raise NotInTask("procpool.task is only available inside a task run by procpoold")
    return _current


def context() -> TaskContext:
    """The running task's context."""
    return _need().context()


def progress(
    fraction: float | None = None,
    *,
    done: int | None = None,
    total: int | None = None,
    message: str | None = None,
) -> None:
    """Report progress: a ``fraction`` in [0, 1], or ``done`` out of ``total``; shown by status."""
    channel = _need().channel
    report: dict[str, Any] = {}
    if fraction is not None:
        report["fraction"] = max(0.0, min(1.0, float(fraction)))
    if done is not None:
        report["done"] = int(done)
    if total is not None:
        report["total"] = int(total)
    if message is not None:
        report["message"] = str(message)
    channel.send("progress", report)


class Namespace:
    """The job's shared key-value namespace; every method is one atomic daemon operation."""

    def _op(self, op: str, **args: Any) -> Any:
        return _need().channel.request("ns", {"op": op, **args})

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self._op("get", key=key, default=default)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (msgpack-able)."""
        self._op("set", key=key, value=value)

    def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add ``by`` to the number at ``key`` (missing counts as 0); returns the new value."""
        result: int | float = self._op("incr", key=key, by=by)
        return result

    def append(self, key: str, value: Any) -> int:
        """Append to the list at ``key`` (missing counts as empty); returns the new length."""
        result: int = self._op("append", key=key, value=value)
        return result

    def cas(self, key: str, expected: Any, value: Any) -> bool:
        """Set ``key`` to ``value`` only if it currently equals ``expected`` (missing is None)."""
        return bool(self._op("cas", key=key, expected=expected, value=value))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return bool(self._op("delete", key=key))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the whole namespace."""
        result: dict[str, Any] = self._op("snapshot")
        return result


_namespace = Namespace()


class TypedNamespace(Generic[T]):
    """The job's namespace seen through dataclass ``T`` (see :func:`namespace`).

    Reads: ``view.FIELD`` reads the view's **snapshot** of the namespace (no round trip): taken
    by the first such read (one ``snapshot`` round trip), renewed by :meth:`snapshot`, and
    dropped by every update made through the view (so a task reads its own writes). A field that
    is not set reads as its dataclass default. :meth:`get` is a **live** read (one round trip).
    :meth:`snapshot` returns a whole ``T``.

    Updates (:meth:`set`, :meth:`incr`, :meth:`append`, :meth:`cas`, :meth:`delete`) are the
    namespace's atomic operations, one round trip each; their values are checked before they
    are sent. A value of another type than declared raises :class:`NamespaceTypeError`, at a
    read or an update, naming the field and both types: never a silent coercion (``bool`` is
    not ``int``; an ``int`` read where ``float`` is declared is widened to a float, the only
    conversion). Namespace keys that ``T`` does not declare are left alone.
    """

    __slots__ = ("_cls", "_raw", "_type")

    def __init__(self, cls: type[T], record: Record) -> None:
        self._cls = cls
        self._type = record
        self._raw: dict[str, Any] | None = None

    def _field(self, name: str) -> NsType:
        t = self._type.fields.get(name)
        if t is None:
            raise AttributeError(f"{self._cls.__qualname__} has no field {name!r}")
        return t

    def _check(self, name: str, t: NsType, value: Any) -> None:
        from procpool.contract import nsschema

        found = nsschema.mismatch(t, value)
        if found is not None:
            raise NamespaceTypeError(name + found[0], found[1], found[2], self._cls.__qualname__)

    def _read(self, name: str, raw: dict[str, Any]) -> Any:
        """Field ``name`` of namespace values ``raw``, checked and built (its default if absent)."""
        from procpool.contract import nsschema

        t = self._field(name)
        if name not in raw:
            has_default, default = self._default(name)
            if has_default:
                return default
            owner = self._cls.__qualname__
            raise NamespaceTypeError(name, t.describe(), "nothing (not set, no default)", owner)
        value = raw[name]
        self._check(name, t, value)
        return nsschema.build(t, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._field(name)
        raw = self._raw
        if raw is None:
            raw = self._raw = _namespace.snapshot()
        return self._read(name, raw)

    def snapshot(self) -> T:
        """The whole namespace as a ``T`` (one round trip); also becomes the view's snapshot."""
        raw = self._raw = _namespace.snapshot()
        values = {name: self._read(name, raw) for name in self._type.fields}
        return self._cls(**values)

    def get(self, name: str) -> Any:
        """Field ``name`` as it is now (a live read: one round trip), or its default."""
        self._field(name)
        value = _namespace.get(name, _ABSENT)
        return self._read(name, {} if value == _ABSENT else {name: value})

    def set(self, name: str, value: Any) -> None:
        """Set field ``name`` to ``value`` (a nested dataclass is stored as a map)."""
        from procpool.contract import nsschema

        t = self._field(name)
        wire = nsschema.unbuild(value)
        self._check(name, t, wire)
        self._raw = None
        _namespace.set(name, wire)

    def incr(self, name: str, by: int | float = 1) -> Any:
        """Add ``by`` to the number field ``name`` (missing counts as 0); returns the new value."""
        from procpool.contract.nsschema import Scalar

        t = self._field(name)
        if not isinstance(t, Scalar) or t.name not in ("int", "float"):
            raise NamespaceTypeError(name, t.describe(), "an increment (incr needs int or float)",
                                     self._cls.__qualname__)
        self._check(name, t if t.name == "int" else Scalar("float"), by)
        self._raw = None
        return self._read(name, {name: _namespace.incr(name, by)})

    def append(self, name: str, value: Any) -> int:
        """Append ``value`` to the list field ``name`` (missing counts as empty); returns its length."""
        from procpool.contract import nsschema

        t = self._field(name)
        if not isinstance(t, nsschema.ListOf):
            owner = self._cls.__qualname__
            raise NamespaceTypeError(name, t.describe(), "an append (append needs a list)", owner)
        wire = nsschema.unbuild(value)
        self._check(f"{name}[]", t.item, wire)
        self._raw = None
        return _namespace.append(name, wire)

    def cas(self, name: str, expected: Any, value: Any) -> bool:
        """Set field ``name`` to ``value`` only if it now reads as ``expected`` through the view.

        The daemon compares values and their types. A field the view reads as ``expected`` may be
        stored otherwise, so when the first atomic try fails, one more is made for each other
        spelling: not set (when ``expected`` is the field's default), and, for a ``float``
        field, an int (a JSON ``2`` or a sum of int increments is read as ``2.0``).
        """
        from procpool.contract import nsschema

        t = self._field(name)
        wire = nsschema.unbuild(value)
        self._check(name, t, wire)
        self._raw = None
        old = nsschema.unbuild(expected)
        tries = [old]
        if isinstance(t, nsschema.Scalar) and t.name == "float" and type(old) is float and (
            old.is_integer() and abs(old) < 2**63
        ):
            tries.append(int(old))
        if old is not None:
            has_default, default = self._default(name)
            if has_default and nsschema.unbuild(default) == old:
                tries.append(None)  # (the daemon's "missing")
        return any(_namespace.cas(name, each, wire) for each in tries)

    def _default(self, name: str) -> tuple[bool, Any]:
        """Whether field ``name`` has a default, and a fresh copy of it."""
        import dataclasses

        for f in dataclasses.fields(self._cls):  # type: ignore[arg-type]
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return True, f.default
                if f.default_factory is not dataclasses.MISSING:
                    return True, f.default_factory()
        return False, None

    def delete(self, name: str) -> bool:
        """Remove field ``name`` (it reads as its default again); True if it was set."""
        self._field(name)
        self._raw = None
        return _namespace.delete(name)

    def __repr__(self) -> str:
        return f"<typed namespace view of {self._cls.__qualname__}>"


#: The default a live read asks for, to tell "not set" from a stored null in one round trip.
_ABSENT = "\0procpool: not set\0"


#: the record type of each dataclass a view was made of (derived once per process)
_types: dict[type, Record] = {}


@overload
def namespace() -> Namespace: ...
@overload
def namespace(cls: type[T]) -> TypedNamespace[T]: ...
def namespace(cls: type[T] | None = None) -> Namespace | TypedNamespace[T]:
    """The running task's job namespace; with a dataclass ``cls``, a typed view of it
    (:class:`TypedNamespace`). Raises TypeError naming the field for a dataclass field of a
    type a namespace cannot hold."""
    _need()
    if cls is None:
        return _namespace
    record = _types.get(cls)
    if record is None:
        from procpool.contract.nsschema import from_dataclass

        record = _types[cls] = from_dataclass(cls)
    return TypedNamespace(cls, record)
