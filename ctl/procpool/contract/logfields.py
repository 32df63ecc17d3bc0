"""Log context: the journal fields a job and its tasks add to their records (``PROCPOOL_X_<NAME>``).

Two sources, one rule for names:

* ``"log_fields"`` on a job, a group or a task of the tree (a map; a job's and a group's are
  inherited by the tasks inside, an inner value wins): checked by :func:`tree_fields`, where a
  bad name is an error of the tree;
* ``extra={...}`` on a task's ``logging`` call: :func:`task_fields` in the worker (or the remote
  harness) keeps what it can and renames or drops the rest, never raising (task code must not
  fail because of a field name); the daemon checks again what arrives (:func:`wire_field_ok`).

A name is upper-cased and must then be letters A-Z, digits and ``_``, at most
:data:`MAX_NAME` characters; it becomes ``PROCPOOL_X_<NAME>``, so a task can never set another
field (``PROCPOOL_JOB_ID``, ``MESSAGE_ID``, ``MESSAGE``, ``PRIORITY``: they come out as
``PROCPOOL_X_PROCPOOL_JOB_ID`` and so on). Values are text: numbers and booleans are written as
JSON writes them, anything else with ``str()``; at most :data:`MAX_VALUE` characters (longer
values are cut, with a mark), NUL bytes replaced. At most :data:`MAX_FIELDS` fields a record.

``"log_level"`` (``debug``, ``info``, ``warning``, ``error`` or ``critical``) is the least severe
level at which a task's own ``logging`` records are kept; :data:`LEVELS` maps the names to the
``logging`` numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Final

#: The prefix of every field a job or task names.
PREFIX: Final = "PROCPOOL_X_"
#: The longest name after the prefix (a journald field name has at most 64 characters).
MAX_NAME: Final = 64 - len(PREFIX)
#: Fields of one record, at most (the tree's and a logging call's together).
MAX_FIELDS: Final = 32
#: Characters of one value, at most.
MAX_VALUE: Final = 4096
#: What a cut value ends with.
CUT_MARK: Final = " [cut]"

NAME_RE: Final = re.compile(r"[A-Z0-9_]+")
_BAD_CHARS: Final = re.compile(r"[^A-Z0-9_]")
#: A whole field name as the daemon accepts it from a worker.
WIRE_NAME_RE: Final = re.compile(rf"PROCPOOL_X_[A-Z0-9_]{{1,{MAX_NAME}}}")

LEVELS: Final[dict[str, int]] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class FieldError(ValueError):
    """A bad name or value in the tree's ``log_fields`` (``where`` is the key that is wrong)."""

    def __init__(self, where: str | None, message: str) -> None:
        super().__init__(message)
        self.where = where


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if type(value) is str else str(value)


def _bounded(text: str) -> str:
    if "\0" in text:
        text = text.replace("\0", "\ufffd")
    if len(text) > MAX_VALUE:
        text = text[: MAX_VALUE - len(CUT_MARK)] + CUT_MARK
    return text


def tree_name(name: Any) -> str:
    """The journal field of a tree's ``log_fields`` key; raise :class:`FieldError` for a bad one."""
    if type(name) is not str:
        raise FieldError(None, "a field name must be a string")
    upper = name.upper()
    if upper.startswith(PREFIX):
        upper = upper[len(PREFIX):]  # (the prefix may be spelled out)
    if not name.isascii() or not NAME_RE.fullmatch(upper) or len(upper) > MAX_NAME:
        raise FieldError(
            name, f"invalid log field name {name[:64]!r}: use letters, digits and _ "
            f"(at most {MAX_NAME} characters; it becomes {PREFIX}<NAME>, upper-cased)")
    return PREFIX + upper


def tree_fields(raw: Any) -> dict[str, str]:
    """A tree's ``log_fields`` map, checked, as journal fields; raise :class:`FieldError`."""
    if type(raw) is not dict:
        raise FieldError(None, "must be an object of field names and values")
    if len(raw) > MAX_FIELDS:
        raise FieldError(None, f"{len(raw)} fields, the most allowed is {MAX_FIELDS}")
    out: dict[str, str] = {}
    for name, value in raw.items():
        field = tree_name(name)
        if type(value) not in (str, int, float, bool) or (type(value) is float and not math.isfinite(value)):
            raise FieldError(name, "a value must be a string, a number or a boolean")
        text = _text(value)
        if "\0" in text:
            raise FieldError(name, "must not contain a NUL byte")
        if len(text) > MAX_VALUE:
            raise FieldError(name, f"a value of {len(text):,} characters, the most allowed is {MAX_VALUE:,}")
        if field in out:
            raise FieldError(name, f"{field} is named twice")
        out[field] = text
    return out


def tree_level(raw: Any) -> int:
    """A tree's ``log_level`` as a ``logging`` level; raise :class:`FieldError`."""
    level = LEVELS.get(raw.lower()) if type(raw) is str else None
    if level is None:
        raise FieldError(None, f"must be one of {', '.join(LEVELS)}")
    return level


def task_name(name: Any) -> str | None:
    """The journal field of a name a task gave (``extra={...}``), renamed to fit, or None (dropped)."""
    if type(name) is not str or not name:
        return None
    upper = name[: MAX_NAME * 4].upper()
    if not upper.isascii() or not NAME_RE.fullmatch(upper):
        upper = _BAD_CHARS.sub("_", upper)
    upper = upper[:MAX_NAME]
    if not upper.strip("_"):
        return None
    return PREFIX + upper


def task_fields(items: Iterable[tuple[Any, Any]], room: int = MAX_FIELDS) -> dict[str, str]:
    """The fields of a task's ``extra`` items: at most ``room``, renamed or dropped as needed
    (never raises for a name or a value: a value whose ``str()`` fails is dropped)."""
    out: dict[str, str] = {}
    if room <= 0:
        return out
    for name, value in items:
        field = task_name(name)
        if field is None:
            continue
        try:
            out[field] = _bounded(_text(value))
        except Exception:
            continue
        if len(out) >= room:
            break
    return out


def wire_field_ok(name: Any, value: Any) -> bool:
    """Whether a field a worker sent with a log record is one a task may set."""
    return (type(name) is str and type(value) is str and len(value) <= MAX_VALUE
            and WIRE_NAME_RE.fullmatch(name) is not None and "\0" not in value)
