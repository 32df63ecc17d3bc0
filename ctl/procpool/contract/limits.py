"""What one job tree or request may hold: the ranges of numbers and the size limits.

One definition for both sides: ``procctl validate`` checks a job against the defaults (as
``procctl submit`` does when a submission failed), and the daemon checks every job and request
against its own :class:`Limits` (its config may change the size limits; see ``docs/state.md``,
Settings). The ranges of numbers are fixed: they keep every timer, delay and count within what
the daemon can compute with.

A limit that is exceeded names itself (``job name is 10000000 bytes, the limit is
max_name_bytes = 256``), and no error message echoes more than :data:`ECHO_MAX` bytes of what
it refuses (:func:`shorten`).
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, fields, replace
from typing import Any

#: Longest timeout, retry delay or ``wait`` in seconds: ten years (365-day years).
SECONDS_MAX = 10 * 365 * 86400.0
#: Latest point in time a request may name (``since``, ``before``: seconds since the epoch):
#: the end of the year 9999.
TIMESTAMP_MAX = 253_402_300_799.0
#: Most retries of one task.
RETRIES_MAX = 1000
#: Most runs of a job with a numbered ``repeat`` ("forever" has no number).
REPEAT_MAX = 1_000_000_000
#: Largest count or cursor a request may carry (status ``limit``, logs ``lines``, ``after``,
#: ``attempt``): 2**53, the largest integer every JSON reader keeps exact.
COUNT_MAX = 2**53
#: Most workers ``pool_resize`` (and the config's ``workers``) may ask for.
WORKERS_MAX = 1024
#: Most bytes of a refused value an error message shows.
ECHO_MAX = 200
#: Fields of a request envelope (v, id, op, args).
ENVELOPE_KEYS = 4

_REPR = reprlib.Repr()
_REPR.maxstring = ECHO_MAX
_REPR.maxother = ECHO_MAX
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxlevel = 3

#: Names of locks and of named queues ("locks", "queue" in a tree; the config's [locks] and
#: [queues]), and the most a max_parallel or a queue's parallelism may be.
LOCK_NAME_MAX = 64
LOCK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_PARALLEL_MAX = 1_000_000


def clip(text: str, limit: int = ECHO_MAX) -> str:
    """``text`` as it is (a path, a name) cut to at most ``limit`` bytes of UTF-8, ``...`` included:
    for what an error quotes without the quotes :func:`shorten` adds."""
    if len(text) * 4 <= limit:  # short enough whatever its characters
        return text
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def shorten(value: Any, limit: int = ECHO_MAX) -> str:
    """``repr(value)`` cut to at most ``limit`` bytes of UTF-8 (and never built whole: a 10 MB
    string costs what 200 bytes cost)."""
    text = repr(value[: limit + 1]) if isinstance(value, (str, bytes)) else _REPR.repr(value)
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def finite_number(value: Any) -> bool:
    """A JSON/msgpack number that is not a boolean, NaN or an infinity."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


@dataclass(frozen=True)
class Limits:
    """Size limits of a job tree and of a request. Field names are the daemon's config keys."""

    #: Bytes (UTF-8) of a job's name, its idempotency key and each tag.
    max_name_bytes: int = 256
    #: Tags of one node.
    max_tags: int = 64
    #: Variables of one ``env`` map, and of a task's environment with its inherited ones.
    max_env_vars: int = 1024
    #: Bytes of an environment (each name and value plus 2): the kernel refuses much more.
    max_env_bytes: int = 256 * 1024
    #: Bytes of a call task's ``args`` and ``kwargs`` encoded (msgpack).
    max_args_bytes: int = 16 * 1024 * 1024
    #: Bytes of a job's namespace encoded (msgpack), initial values and every change by a task.
    max_namespace_bytes: int = 16 * 1024 * 1024
    #: Bytes of one task's result encoded (enforced where results arrive: the worker pool).
    max_result_bytes: int = 16 * 1024 * 1024
    #: Nodes (tasks and groups) of one tree, and its nesting depth.
    max_nodes: int = 100_000
    max_depth: int = 64
    #: Entries of one map and items of one array in a decoded request (the daemon refuses a
    #: request before building a bigger one: a map of a million keys is not built).
    max_map_items: int = 65_536
    max_array_items: int = 1_000_000

    def following(self, max_message_size: int) -> Limits:
        """These limits with the byte limits that follow the message size set to it (what the
        daemon's config does by default, and ``procctl`` with its ``--max-message-size``)."""
        return replace(self, **dict.fromkeys(FOLLOW_MESSAGE_SIZE, max_message_size))

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def exceeded(self, what: str, size: int, setting: str, unit: str = "bytes") -> str:
        """The sentence for a limit exceeded: ``job name is 300 bytes, the limit is max_name_bytes = 256``."""
        return f"{what} is {size} {unit}, the limit is {setting} = {getattr(self, setting)}"


#: Byte limits whose default is the maximum message size (a reply must be able to carry the value).
FOLLOW_MESSAGE_SIZE = ("max_args_bytes", "max_namespace_bytes", "max_result_bytes")
#: The defaults (what ``procctl validate`` checks a job against).
DEFAULT_LIMITS = Limits()
#: The highest a config may set each limit (and what the daemon uses to restore stored jobs,
#: which were within the limits in force when they were accepted). ``max_depth`` is bounded by
#: the validator's recursion.
CEILINGS = Limits(
    max_name_bytes=65_536,
    max_tags=65_536,
    max_env_vars=65_536,
    max_env_bytes=64 * 1024 * 1024,
    max_args_bytes=2**31,
    max_namespace_bytes=2**31,
    max_result_bytes=2**31,
    max_nodes=10_000_000,
    max_depth=256,
    max_map_items=100_000_000,
    max_array_items=100_000_000,
)
