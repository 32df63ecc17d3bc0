"""The types of a job's namespace: the tree's ``namespace_schema`` and typed namespace views.

A job may declare its namespace's schema, a JSON object mapping each key to a type::

    "namespace_schema": {"count": "int", "names": "list[str]", "best": "float?",
                         "point": {"x": "float", "y": "float"}, "points": [{"x": "float"}],
                         "*": "any"}

A type is one of:

* a string: ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``any``, ``list[T]``,
  ``dict[str, T]``, and any of them followed by ``?`` (or null);
* an object: a record whose keys are field names (letters, digits and ``_``, not starting
  with a digit, at most 64 characters) and whose values are types. Two keys are reserved:
  ``"?": true`` lets the record be null, and ``"*": T`` gives the type of every key not
  listed (without it, a key not listed is refused). A field listed may be absent;
* an array of exactly one type ``[T]``: a list of T (a list of records: ``[{"x": "int"}]``).

The schema itself is a record (its ``"*"`` lets a namespace hold keys it does not list).
``bool`` is never an ``int``; an ``int`` is accepted where ``float`` is declared (JSON has
one kind of number), and a typed view reads it as a float.

:func:`parse_schema` turns the JSON description into a :class:`Record` (errors name the JSON
path of the bad part); :func:`from_dataclass` derives one from a dataclass (for
``procpool.task.namespace(MyState)``); :func:`mismatch` checks a value against a type and
:func:`check_update` checks a namespace operation against a schema. Nothing here imports the
daemon or does I/O.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

#: Nesting of types (records, lists, maps) a schema may have.
MAX_DEPTH = 16
#: Types (every record, list, map and scalar counts one) a schema may have.
MAX_NODES = 1_000
#: Characters of one type string.
MAX_TYPE_CHARS = 200
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SCALARS = ("int", "float", "bool", "str", "bytes", "any")
#: How errors spell the types a schema may name (for the list of known types).
SPELLINGS = "int, float, bool, str, bytes, any, list[T], dict[str, T], T? (or null), {record}, [T]"


class SchemaError(ValueError):
    """A bad schema or a value that does not fit one; ``path`` is the JSON path of the bad part."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# -- the type model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    name: str  # one of SCALARS
    nullable: bool = False

    def describe(self) -> str:
        return self.name + ("?" if self.nullable else "")


@dataclass(frozen=True)
class ListOf:
    item: NsType
    nullable: bool = False

    def describe(self) -> str:
        return f"list[{self.item.describe()}]" + ("?" if self.nullable else "")


@dataclass(frozen=True)
class MapOf:
    value: NsType
    nullable: bool = False

    def describe(self) -> str:
        return f"dict[str, {self.value.describe()}]" + ("?" if self.nullable else "")


@dataclass(frozen=True)
class Record:
    """Named fields; ``rest``: the type of keys not listed (None: refused). ``required``: fields
    that must be present (a dataclass's fields without a default; a schema requires none).
    ``cls``: the dataclass a typed view builds (None for a schema)."""

    fields: dict[str, NsType]
    rest: NsType | None = None
    nullable: bool = False
    required: frozenset[str] = frozenset()
    cls: Any = None
    name: str = "record"

    def describe(self) -> str:
        return self.name + ("?" if self.nullable else "")


NsType = Scalar | ListOf | MapOf | Record


def type_name(value: Any) -> str:
    """A value's type as errors name it (the schema's spelling where there is one)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    return type(value).__name__


# -- parsing a schema ---------------------------------------------------------------------------


class _Parse:
    def __init__(self) -> None:
        self.nodes = 0
        self.raw = ""  # the type string being parsed (for errors)

    def count(self, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SchemaError(path, f"the schema has more than {MAX_NODES} types, the most allowed")
        if depth > MAX_DEPTH:
            raise SchemaError(path, f"types nested deeper than {MAX_DEPTH} levels, the most allowed")

    def node(self, raw: Any, path: str, depth: int) -> NsType:
        if isinstance(raw, str):
            return self.text(raw, path, depth)
        if isinstance(raw, dict):
            return self.record(raw, path, depth)
        if isinstance(raw, list):
            self.count(path, depth)
            if len(raw) != 1:
                raise SchemaError(path, f"an array type holds exactly one type (its items'), got {len(raw)}")
            return ListOf(self.node(raw[0], f"{path}[0]", depth + 1))
        what = type_name(raw)
        raise SchemaError(path, f"a type is a string, an object or an array of one type, got {what}")

    def record(self, raw: dict[str, Any], path: str, depth: int, top: bool = False) -> Record:
        self.count(path, depth)
        fields: dict[str, NsType] = {}
        rest: NsType | None = None
        nullable = False
        for key, value in raw.items():
            where = f"{path}.{key}" if isinstance(key, str) and FIELD_RE.match(key) else path
            if key == "?":
                if top:
                    why = 'the namespace itself cannot be null: "?" belongs to nested records'
                    raise SchemaError(where, why)
                if not isinstance(value, bool):
                    raise SchemaError(f'{path}["?"]', f"must be true or false, got {type_name(value)}")
                nullable = value
            elif key == "*":
                rest = self.node(value, f'{path}["*"]', depth + 1)
            elif not isinstance(key, str) or not FIELD_RE.match(key):
                raise SchemaError(
                    path,
                    f"invalid field name {_shown(key)}: use letters, digits and _, not starting with a "
                    'digit, at most 64 characters ("?" and "*" are reserved)',
                )
            else:
                fields[key] = self.node(value, where, depth + 1)
        return Record(fields, rest, nullable)

    def text(self, raw: str, path: str, depth: int) -> NsType:
        if len(raw) > MAX_TYPE_CHARS:
            raise SchemaError(path, f"a type of {len(raw)} characters; at most {MAX_TYPE_CHARS} are allowed")
        spelled = raw.replace(" ", "")
        self.raw = raw
        parsed, end = self._text(spelled, 0, path, depth)
        if end != len(spelled):
            raise SchemaError(path, f"unexpected {_shown(spelled[end:])} in type {_shown(raw)}")
        return parsed

    def _text(self, s: str, at: int, path: str, depth: int) -> tuple[NsType, int]:
        self.count(path, depth)
        match = _WORD.match(s, at)
        word = match.group(0) if match else ""
        at += len(word)
        t: NsType
        if word in ("list", "dict") and s.startswith("[", at):
            at += 1
            if word == "dict":
                if not s.startswith("str,", at):
                    why = f"a dict's keys are strings: write dict[str, T], got {_shown(self.raw)}"
                    raise SchemaError(path, why)
                at += 4
            inner, at = self._text(s, at, path, depth + 1)
            if not s.startswith("]", at):
                raise SchemaError(path, f"missing ] in type {_shown(self.raw)}")
            at += 1
            t = ListOf(inner) if word == "list" else MapOf(inner)
        elif word in SCALARS:
            t = Scalar(word)
        else:
            import difflib  # (only for this error: the worker imports this module)

            close = difflib.get_close_matches(word, [*SCALARS, "list", "dict"], n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close and word else ""
            shown = f"type {_shown(word)}" if word else f"type {_shown(self.raw)}"
            raise SchemaError(path, f"unknown {shown}{hint}; types: {SPELLINGS}")
        if s.startswith("?", at):
            at += 1
            t = dataclasses.replace(t, nullable=True)
        return t, at


_WORD = re.compile(r"[A-Za-z_]+")


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_schema(raw: Any, path: str = "namespace_schema") -> Record:
    """The schema described by ``raw`` (a decoded JSON object); :class:`SchemaError` names the
    JSON path of the bad part (below ``path``)."""
    if not isinstance(raw, dict):
        raise SchemaError(path, f"must be an object of field names and types, got {type_name(raw)}")
    return _Parse().record(raw, path, 0, top=True)


# -- checking values ----------------------------------------------------------------------------


def mismatch(t: NsType, value: Any) -> tuple[str, str, str] | None:
    """Why ``value`` does not fit ``t``: (the path below the value, the type expected, the type
    found), or None when it fits. A path part is ``.name`` or ``[i]``."""
    if value is None:
        ok = t.nullable or (isinstance(t, Scalar) and t.name == "any")
        return None if ok else ("", t.describe(), "null")
    if isinstance(t, Scalar):
        name = t.name
        if name == "any":
            return None
        if name == "int":
            ok = type(value) is int
        elif name == "float":
            ok = type(value) is float or type(value) is int
        elif name == "bool":
            ok = type(value) is bool
        elif name == "str":
            ok = type(value) is str
        else:
            ok = type(value) is bytes
        return None if ok else ("", t.describe(), type_name(value))
    if isinstance(t, ListOf):
        if type(value) is not list:
            return ("", t.describe(), type_name(value))
        item = t.item
        if isinstance(item, Scalar) and item.name == "any":
            return None
        for i, v in enumerate(value):
            found = mismatch(item, v)
            if found is not None:
                return (f"[{i}]{found[0]}", found[1], found[2])
        return None
    if isinstance(t, MapOf):
        if type(value) is not dict:
            return ("", t.describe(), type_name(value))
        for k, v in value.items():
            if type(k) is not str:
                return (f"[{_shown(k)}]", "a str key", type_name(k))
            found = mismatch(t.value, v)
            if found is not None:
                return (f"[{_shown(k)}]{found[0]}", found[1], found[2])
        return None
    if type(value) is not dict:
        return ("", t.describe(), type_name(value))
    for k, v in value.items():
        if type(k) is not str:
            return (f"[{_shown(k)}]", "a str key", type_name(k))
        ft = t.fields.get(k)
        if ft is None:
            ft = t.rest
            if ft is None:
                return (_child(k), "no such field", type_name(v))
        found = mismatch(ft, v)
        if found is not None:
            return (_child(k) + found[0], found[1], found[2])
    for name in t.required:
        if name not in value:
            return (f".{name}", t.fields[name].describe(), "nothing (missing)")
    return None


def _child(key: Any) -> str:
    return f".{key}" if type(key) is str and FIELD_RE.match(key) else f"[{_shown(key)}]"


def describe_mismatch(where: str, found: tuple[str, str, str]) -> str:
    """One phrase about ``found`` (see :func:`mismatch`), a mismatch of the value at ``where``."""
    path, expected, got = found
    if expected == "no such field":
        return f"{where}{path} is not declared, got {got}"
    if not path:
        return f"declared {expected}, got {got}"
    return f"{where}{path} is declared {expected}, got {got}"


def field_type(schema: Record, key: str) -> NsType | None:
    """The type of namespace key ``key``, or None if the schema does not allow it."""
    t = schema.fields.get(key)
    return t if t is not None else schema.rest


def check_values(schema: Record, values: dict[str, Any], path: str = "namespace") -> None:
    """Raise :class:`SchemaError` (at the JSON path of the bad value) if ``values`` break ``schema``."""
    for key, value in values.items():
        t = field_type(schema, key) if isinstance(key, str) else None
        where = f"{path}{_child(key)}"
        if t is None:
            raise SchemaError(where, "not declared in the namespace_schema")
        found = mismatch(t, value)
        if found is not None:
            raise SchemaError(
                where + found[0],
                f"the namespace_schema declares {found[1]}, got {found[2]}"
                if found[1] != "no such field"
                else "not declared in the namespace_schema",
            )


def check_update(schema: Record, op: str, key: str, args: dict[str, Any], current: Any) -> str | None:
    """Why namespace operation ``op`` on ``key`` (with ``args``, the key holding ``current``)
    would break ``schema``, or None if it keeps to it. Only operations that write are checked."""
    if op not in ("set", "cas", "incr", "append"):
        return None
    t = field_type(schema, key)
    shown = _shown(key, 64)
    if t is None:
        return f"{op} of {shown}: the key is not declared in the namespace_schema"
    if op in ("set", "cas"):
        found = mismatch(t, args.get("value"))
        if found is None:
            return None
        return f"{op} of {shown}: " + describe_mismatch(key if FIELD_RE.match(key) else shown, found)
    if op == "incr":
        if isinstance(t, Scalar) and t.name in ("int", "float", "any"):
            by = args.get("by", 1)
            if t.name == "int" and type(by) is float:
                return f"incr of {shown}: declared {t.describe()}, got an increment of float"
            if t.name == "int" and type(current) is float:
                return f"incr of {shown}: declared {t.describe()}, holds a float"
            return None
        return f"incr of {shown}: declared {t.describe()}, not a number"
    # append
    if isinstance(t, Scalar) and t.name == "any":
        return None
    if not isinstance(t, ListOf):
        return f"append to {shown}: declared {t.describe()}, not a list"
    found = mismatch(t.item, args.get("value"))
    if found is None:
        return None
    found = (found[0], f"{found[1]} (the items of {t.describe()})", found[2]) if not found[0] else found
    return f"append to {shown}: " + describe_mismatch("the item" if found[0] else "", found)


# -- dataclasses (typed views) ------------------------------------------------------------------


def from_dataclass(cls: Any) -> Record:
    """The record type of dataclass ``cls``: its fields' annotations, which may be int, float,
    bool, str, bytes, Any, list[T], dict[str, T], Optional[T] (``T | None``) and nested
    dataclasses. Raises TypeError naming the field for anything else."""
    return _from_dataclass(cls, 0)


def _from_dataclass(cls: Any, depth: int) -> Record:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"a typed namespace needs a dataclass, got {cls!r}")
    if depth > MAX_DEPTH:
        raise TypeError(f"{cls.__qualname__}: dataclasses nested deeper than {MAX_DEPTH} levels")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # a name the annotations use that is not found, a bad annotation
        raise TypeError(f"{cls.__qualname__}: its annotations cannot be resolved: {exc}") from None
    fields: dict[str, NsType] = {}
    required: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.init:  # (computed by the dataclass itself: not a namespace key)
            continue
        fields[f.name] = _from_annotation(hints.get(f.name, Any), f"{cls.__qualname__}.{f.name}", depth)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    return Record(fields, None, False, frozenset(required), cls, cls.__qualname__)


_PLAIN = {int: "int", float: "float", bool: "bool", str: "str", bytes: "bytes"}


def _from_annotation(tp: Any, where: str, depth: int) -> NsType:
    if tp is Any:
        return Scalar("any", True)
    if tp in _PLAIN:
        return Scalar(_PLAIN[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return dataclasses.replace(_from_annotation(rest[0], where, depth), nullable=True)
    elif origin is list and len(args) == 1:
        return ListOf(_from_annotation(args[0], where, depth + 1))
    elif origin is dict and len(args) == 2 and args[0] is str:
        return MapOf(_from_annotation(args[1], where, depth + 1))
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dataclass(tp, depth + 1)
    raise TypeError(
        f"{where}: a namespace field may be int, float, bool, str, bytes, Any, list[T], "
        f"dict[str, T], T | None or a dataclass, not {tp!r}"
    )


def build(t: NsType, value: Any) -> Any:
    """``value`` (checked by :func:`mismatch`) as a typed view returns it: records of a
    dataclass as its instances (missing fields take their defaults), ints of a float as floats."""
    if value is None:
        return None
    if isinstance(t, Scalar):
        return float(value) if t.name == "float" else value
    if isinstance(t, ListOf):
        return [build(t.item, v) for v in value]
    if isinstance(t, MapOf):
        return {k: build(t.value, v) for k, v in value.items()}
    if t.cls is None:
        return value
    return t.cls(**{k: build(t.fields[k], v) for k, v in value.items()})


def unbuild(value: Any) -> Any:
    """A value as the namespace stores it: dataclass instances as maps, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: unbuild(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [unbuild(v) for v in value]
    if isinstance(value, dict):
        return {k: unbuild(v) for k, v in value.items()}
    return value
