"""The job-tree format: one definition, used by ``procctl`` (local validation) and the daemon.

A job file is a JSON object (see ``docs/job-trees.md`` and ``jobtree.schema.json``,
which is generated from the field tables below)::

    {"name": "nightly", "repeat": 3, "on_failure": "stop",
     "root": {"sequential": [
         {"name": "fetch", "cmd": ["curl", "-o", "data.csv", "https://..."], "retries": 2},
         {"concurrent": [{"call": "etl.steps:clean", "args": ["data.csv"]},
                         {"call": "etl.steps:index", "depends_on": ["fetch"]}]}]}}

:func:`parse_job` checks a decoded document and returns a :class:`JobSpec`
whose tasks carry their inherited defaults; every error names the JSON path of
the bad node (``root.sequential[2].concurrent[0]: unknown field "retrys" (did
you mean "retries"?)``). :func:`compile_job` adds the ordering: the
predecessor edges implied by ``sequential`` groups and ``depends_on``, checked
for unknown names and cycles.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from procpool.contract.codec import pack
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import (
    DEFAULT_LIMITS,
    ECHO_MAX,
    LOCK_NAME_MAX,
    LOCK_NAME_RE,
    MAX_PARALLEL_MAX,
    REPEAT_MAX,
    RETRIES_MAX,
    SECONDS_MAX,
    Limits,
    finite_number,
    shorten,
)
from procpool.contract.logfields import FieldError, tree_fields, tree_level
from procpool.contract.nsschema import FIELD_RE, MAX_TYPE_CHARS, SchemaError, check_values, parse_schema
from procpool.contract.nsschema import Record as NamespaceSchema
from procpool.contract.schedule import CRON_MAX_CHARS, MISSED_POLICIES, ScheduleError, check_cron, zone

PRIORITIES: tuple[str, ...] = ("critical", "high", "normal", "low", "batch")
ON_FAILURE: tuple[str, ...] = ("stop", "continue")
ON_INTERRUPT: tuple[str, ...] = ("retry", "fail", "hold")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}$")
#: A login name as useradd takes it (plus the trailing $ of machine accounts), at most 256 bytes.
USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}\$?$")
#: Longest retry delay after doubling, in seconds.
RETRY_DELAY_CAP = 300.0
MAX_NODES = DEFAULT_LIMITS.max_nodes
MAX_DEPTH = DEFAULT_LIMITS.max_depth
#: Lock names ("locks"; the daemon's config [locks] gives their limits), and the bounds of the fields
#: of limits and locks.
LOCK_UNITS_MAX = 1_000_000
LOCKS_MAX = 16
#: The engine name that means "this daemon's own engine for the task's kind" (the first the daemon
#: registered that runs it: its pool for call tasks, its commands engine for cmd tasks), whatever
#: engine the daemon runs such tasks on by default.
LOCAL_ENGINE = "local"


class TreeError(ProcpoolError):
    """An invalid job tree; ``path`` is the JSON path of the bad node."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__(ErrorCode.INVALID_TREE, f"{path}: {message}" if path else message, hint)
        self.path = path


# -- the field tables: the single definition behind validation and the JSON Schema -------------


@dataclass(frozen=True)
class FieldSpec:
    kind: str  # see _check_value
    description: str
    inheritable: bool = False  # groups (and the job) may set it as a default for the tasks inside


TASK_FIELDS: dict[str, FieldSpec] = {
    "name": FieldSpec("name", "Unique name in the job; default derived from the path in the tree."),
    "call": FieldSpec("callable", 'Python callable "pkg.module:function" (sync or async def).'),
    "args": FieldSpec("list", "Positional arguments of the callable (msgpack-able values)."),
    "kwargs": FieldSpec("map", "Keyword arguments of the callable (msgpack-able values)."),
    "cmd": FieldSpec("cmd", "Command as an argv list, or a string together with shell: true."),
    "shell": FieldSpec("bool", "Run the cmd string with /bin/sh -c."),
    "timeout": FieldSpec("positive", "Seconds one attempt may run before it is stopped.", True),
    "retries": FieldSpec("count", "How many times a failed attempt is retried.", True),
    "retry_delay": FieldSpec("nonnegative", "Seconds before the first retry; doubles, with jitter.", True),
    "priority": FieldSpec("priority", "critical, high, normal, low or batch.", True),
    "depends_on": FieldSpec("names", "Names of tasks (or groups) of this job that must complete first."),
    "env": FieldSpec("env", "Environment variables added for the task.", True),
    "cwd": FieldSpec("string", "Working directory of the task.", True),
    "tags": FieldSpec("names", "Free-form labels shown by status.", True),
    "engine": FieldSpec(
        "name", 'The engine that runs the task: "local" (the daemon\'s own engine for its kind, "pool" '
        'for call tasks and "commands" for cmd tasks), or another engine of the daemon such as "dask" '
        "(default: the job's engine, else the daemon's default for its kind)."
    ),
    # log context (docs/logging.md, Log context)
    "log_fields": FieldSpec(
        "log_fields", "Journal fields PROCPOOL_X_<NAME> on the task's records (names: letters, digits, _; "
        "inherited, an inner value wins).", True),
    "log_level": FieldSpec(
        "log_level", "The least severe level of the task's own logging records that is kept: debug, info, "
        "warning, error or critical (default: the daemon's log_level).", True),
    "kill_grace": FieldSpec(
        "nonnegative", "Seconds between the signal that stops an attempt (a timeout, a cancel) and "
        "SIGKILL (default: the job's kill_grace, else the daemon's).",
    ),
    # limits and locks (docs/job-trees.md, Limits, queues and locks)
    "locks": FieldSpec(
        "locks", 'Named locks the task holds while an attempt runs: "db" (one unit of "db") or "gpu:2" '
        "(two units); each name's limit is in the daemon's config [locks] (default 1: a mutex). A group's "
        "or the job's locks are held by each of its tasks.",
    ),
    "queue": FieldSpec(
        "queue", 'The named queue the task runs in ("io"): at most the queue\'s parallelism of its tasks '
        "run at once, across every job (the daemon's config [queues], or procctl queue set). A group's or "
        "the job's queue is that of each task inside that names none.",
    ),
    # resource hint (docs/pool.md, I/O-bound and CPU-bound tasks)
    "io": FieldSpec(
        "bool", "An I/O-bound async def task: it shares a pool worker's event loop with other such "
        "attempts of its job (up to the daemon's async_per_worker); false (default): the attempt holds "
        "its worker alone. call tasks only (inherited).", True),
}
#: "repeat" and "every" of a group or a task: the node cycles on its own clock (docs/job-trees.md,
#: Schedules); neither is inherited
NODE_CYCLE_FIELDS: dict[str, FieldSpec] = {
    "repeat": FieldSpec(
        "repeat", 'Run this node this many cycles (a positive integer or "forever"), each cycle once '
        "every task inside it completed, without waiting for its siblings; it counts as complete after "
        "its last cycle."),
    "every": FieldSpec(
        "positive", "Seconds from the end of one cycle of this node to the start of the next (repeat "
        'defaults to "forever").'),
}
TASK_FIELDS.update(NODE_CYCLE_FIELDS)
#: "max_parallel" of a group or the job: at most this many of its tasks run at once
MAX_PARALLEL_FIELD = FieldSpec(
    "max_parallel", "At most this many of the tasks inside run at once (nested limits all apply).")
GROUP_KEYS = ("sequential", "concurrent")
GROUP_FIELDS: dict[str, FieldSpec] = {
    "name": FieldSpec("name", "Name of the group (usable in depends_on)."),
    "depends_on": TASK_FIELDS["depends_on"],
    **{k: v for k, v in TASK_FIELDS.items() if v.inheritable},
    "max_parallel": MAX_PARALLEL_FIELD,
    "locks": TASK_FIELDS["locks"],
    "queue": TASK_FIELDS["queue"],
    **NODE_CYCLE_FIELDS,
}
JOB_FIELDS: dict[str, FieldSpec] = {
    "name": FieldSpec("string", "Name of the job."),
    "root": FieldSpec("node", "The root node: a task or a group."),
    "repeat": FieldSpec("repeat", 'Run the tree this many times (a positive integer or "forever").'),
    "on_failure": FieldSpec("on_failure", '"stop" (default) or "continue".'),
    "on_interrupt": FieldSpec(
        "on_interrupt", 'What a daemon restart does to running attempts: "retry" (default), "fail" or "hold".'
    ),
    "priority": TASK_FIELDS["priority"],
    "namespace": FieldSpec("map", "Initial values of the job's shared namespace."),
    "namespace_schema": FieldSpec(
        "nsschema", 'Types of the namespace\'s keys, e.g. {"count": "int", "names": "list[str]", '
        '"best": "float?"}: checked against the initial values, and every change a task makes.'
    ),
    "env": TASK_FIELDS["env"],
    "cwd": TASK_FIELDS["cwd"],
    "python_path": FieldSpec("strings", "Extra import paths for call tasks."),
    "key": FieldSpec("string", "Idempotency key: a second submit with this key returns the first job."),
    "user": FieldSpec(
        "user", "Run the job as this user (root or the admin group only; default: the submitter)."
    ),
    "timeout": TASK_FIELDS["timeout"],
    "retries": TASK_FIELDS["retries"],
    "retry_delay": TASK_FIELDS["retry_delay"],
    "tags": TASK_FIELDS["tags"],
    "engine": FieldSpec(
        "name", 'The engine of the tasks that name none: "local" or another engine of the daemon, '
        'such as "dask" (default: the daemon\'s default for each kind).'
    ),
    "log_fields": TASK_FIELDS["log_fields"],
    "log_level": TASK_FIELDS["log_level"],
    "kill_grace": FieldSpec(
        "nonnegative", "Seconds between the signal that stops an attempt (a timeout, a cancel) and "
        "SIGKILL, for the tasks that set none (default: the daemon's kill_grace).",
    ),
    "max_parallel": MAX_PARALLEL_FIELD,
    "locks": TASK_FIELDS["locks"],
    "queue": TASK_FIELDS["queue"],
    "io": TASK_FIELDS["io"],
    # schedules (docs/job-trees.md, Schedules)
    "every": FieldSpec(
        "positive", "Seconds from the end of a run to the start of the next (repeat defaults to \"forever\")."
    ),
    "schedule": FieldSpec(
        "cron", 'Start the runs at these times: a cron expression ("*/15 * * * *", "@daily"), read in '
        '"timezone" (repeat defaults to "forever").'
    ),
    "timezone": FieldSpec("timezone", 'IANA time zone of "schedule" (default: "UTC").'),
    "missed": FieldSpec(
        "missed", 'Runs whose time passed while the daemon was down: "run_once" (default: one run at '
        'start) or "skip" (wait for the next time).'
    ),
}
INHERITABLE = tuple(k for k, v in TASK_FIELDS.items() if v.inheritable)


# -- the parsed model ---------------------------------------------------------------------------


@dataclass(slots=True)
class TaskSpec:
    """One task with its defaults resolved. ``index`` is its position in depth-first order."""

    index: int
    name: str
    path: str
    kind: Literal["call", "cmd"]
    call: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    cmd: list[str] | str | None = None
    shell: bool = False
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 1.0
    priority: str = "normal"
    depends_on: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tags: list[str] = field(default_factory=list)
    parent: int | None = None  # index into JobSpec.groups
    engine: str | None = None  # the engine named by the task; None: the daemon's default for its kind
    #: log context: journal fields (``PROCPOOL_X_<NAME>``: value) and the least severe level kept
    #: of the task's logging records (a ``logging`` number; None: the daemon's ``log_level``)
    log_fields: dict[str, str] = field(default_factory=dict)
    log_level: int | None = None
    #: seconds from the stop signal to SIGKILL (its own "kill_grace"; None: the job's, else the daemon's)
    kill_grace: float | None = None
    #: resource hint ("io", inherited): an I/O-bound async def attempt that may share a pool
    #: worker's event loop; False: it holds its worker alone (always False for a cmd task)
    io: bool = False


@dataclass
class GroupSpec:
    """A sequential or concurrent group; children are ("task", i) or ("group", i)."""

    index: int
    name: str
    path: str
    kind: Literal["sequential", "concurrent"]
    children: list[tuple[str, int]] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    parent: int | None = None
    #: at most this many of its tasks run at once ("max_parallel"; None: no limit)
    max_parallel: int | None = None
    #: the locks each of its tasks holds ("locks": (name, units) pairs)
    locks: list[tuple[str, int]] = field(default_factory=list)
    #: the named queue of the tasks inside that name none ("queue"; None: the enclosing node's)
    queue: str | None = None


@dataclass
class JobSpec:
    """A validated job: its tasks and groups in depth-first order."""

    name: str
    root: tuple[str, int]
    tasks: list[TaskSpec]
    groups: list[GroupSpec]
    repeat: int | None = 1  # None means forever
    on_failure: str = "stop"
    on_interrupt: str = "retry"
    priority: str = "normal"
    namespace: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    python_path: list[str] = field(default_factory=list)
    key: str | None = None
    tags: list[str] = field(default_factory=list)
    #: the user named by the job ("user"); checked and resolved by the daemon at submission
    user: str | None = None
    #: the engine named by the job ("engine"): every task that names none has it as its ``engine``
    engine: str | None = None
    #: seconds from the stop signal to SIGKILL for tasks that set none ("kill_grace"; None: the daemon's)
    kill_grace: float | None = None
    #: the ordering, set by parse_job (compiled once, used by the daemon and by validate)
    plan: Plan | None = None
    #: the parsed "namespace_schema" (None: the namespace is untyped)
    namespace_schema: NamespaceSchema | None = None
    #: at most this many of its tasks run at once ("max_parallel"; None: no limit)
    max_parallel: int | None = None
    #: the locks each of its tasks holds ("locks": (name, units) pairs)
    locks: list[tuple[str, int]] = field(default_factory=list)
    #: whether any max_parallel or locks stand in the job (the daemon's dispatch checks them only then)
    gated: bool = False
    #: task index -> its own "locks" ((name, units) pairs), for the tasks that name any (kept off
    #: TaskSpec: the parse of a task without them costs nothing more)
    task_locks: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    #: the named queue of the tasks that name none in any enclosing group ("queue"; None: no queue)
    queue: str | None = None
    #: task index -> its own "queue", for the tasks that name one (kept off TaskSpec, as task_locks)
    task_queues: dict[int, str] = field(default_factory=dict)
    #: seconds from the end of a run to the start of the next ("every"; None: at once)
    every: float | None = None
    #: cron expression of the runs' start times ("schedule") and its zone ("timezone")
    schedule: str | None = None
    timezone: str = "UTC"
    #: runs missed while the daemon was down ("missed"): "run_once" or "skip"
    missed: str = "run_once"
    #: the nodes that cycle on their own clock: ("task", i) or ("group", i) -> (repeat, every), from
    #: their "repeat" (None: forever) and "every" (None: the next cycle at once); empty for most jobs
    cycles: dict[tuple[str, int], tuple[int | None, float | None]] = field(default_factory=dict)


#: a TaskSpec without running its __init__: the parser sets every field by name (see _add_task)
_new_task = object.__new__


# -- validation ---------------------------------------------------------------------------------


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    if len(word) > 64:  # no field is that long, and difflib's cost grows with the word
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


@functools.lru_cache(maxsize=1024)  # a big job repeats the same few references
def _is_callable_ref(value: str) -> bool:
    mod, sep, fn = value.partition(":")
    return bool(sep and mod and fn and all(p.isidentifier() for p in mod.split(".") + fn.split(".")))


def _check_value(kind: str, value: Any, where: str, key: str | None = None) -> Any:
    """``value`` checked (and normalised) as a ``kind``; raise :class:`TreeError` at
    ``where.key`` (the path is only built for the error: a big job checks many fields)."""
    # Fast path: the kinds every task has, when they are right.
    vtype = type(value)
    if kind == "name":
        if vtype is str and NAME_RE.match(value):
            return value
    elif kind == "callable":
        if vtype is str and _is_callable_ref(value):
            return value
    elif kind == "list":
        if vtype is list:
            return value
    elif kind == "cmd" and vtype is list and value:
        for v in value:
            if type(v) is not str or "\0" in v or not v.isascii():
                break
        else:
            return value
    path = f"{where}.{key}" if key is not None else where

    def bad(expected: str) -> TreeError:
        return TreeError(path, f"must be {expected}, got {_type_name(value)}")

    if kind == "string":
        if not isinstance(value, str):
            raise bad("a string")
        _no_nul(value, path)
    elif kind == "name":
        if not isinstance(value, str):
            raise bad("a string")
        if not NAME_RE.match(value):
            raise TreeError(
                path, f"invalid name {_quote(value)}: use letters, digits and _ . : @ + - (max 128)"
            )
    elif kind == "callable":
        if not isinstance(value, str):
            raise bad('a string "pkg.module:function"')
        if not _is_callable_ref(value):
            raise TreeError(path, f'{_quote(value)} is not of the form "pkg.module:function"')
    elif kind == "cmd":
        if isinstance(value, str):
            if not value.strip():
                raise TreeError(path, "must not be empty")
            _no_nul(value, path)
        elif isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise TreeError(path, "must be a non-empty array of strings (or a string with shell: true)")
            for i, v in enumerate(value):
                _no_nul(v, f"{path}[{i}]")
        else:
            raise bad("an array of strings or a string")
    elif kind == "user":
        if not isinstance(value, str):
            raise bad("a user name")
        if not USER_RE.fullmatch(value):
            hint = "give the login name of an existing user"
            raise TreeError(path, f"invalid user name {value[:64]!r}", hint)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind in ("positive", "nonnegative"):
        if not finite_number(value) or value < 0 or (kind == "positive" and value == 0):
            expected = "a positive number" if kind == "positive" else "a number >= 0"
            if type(value) in (int, float):  # below the bound, NaN or an infinity: say which
                raise TreeError(path, f"must be {expected} of seconds, got {shorten(value)}")
            raise bad(expected)
        if value > SECONDS_MAX:
            raise TreeError(
                path, f"{shorten(value)} seconds is more than {SECONDS_MAX:.0f} (10 years), the most allowed"
            )
        return float(value)
    elif kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("an integer >= 0")
        if value > RETRIES_MAX:
            raise TreeError(path, f"{shorten(value)} is more than {RETRIES_MAX}, the most allowed")
    elif kind == "priority":
        if value not in PRIORITIES:
            shown = shorten(value)[1:-1] if isinstance(value, str) else _type_name(value)
            raise TreeError(
                path,
                f'unknown priority "{shown}"; use one of {", ".join(PRIORITIES)}'
                + (_suggest(value, PRIORITIES) if isinstance(value, str) else ""),
            )
    elif kind == "on_failure":
        if value not in ON_FAILURE:
            raise TreeError(path, f'must be "stop" or "continue", got {shorten(value)}')
    elif kind == "on_interrupt":
        if value not in ON_INTERRUPT:
            raise TreeError(path, f'must be "retry", "fail" or "hold", got {shorten(value)}')
    elif kind == "cron":
        if not isinstance(value, str):
            raise bad('a cron expression such as "*/15 * * * *"')
        try:
            check_cron(value)
        except ScheduleError as exc:
            raise TreeError(path, str(exc), 'see "Schedules" in docs/job-trees.md') from None
    elif kind == "timezone":
        if not isinstance(value, str):
            raise bad('an IANA time zone name such as "Europe/Paris"')
        try:
            zone(value)
        except ScheduleError as exc:
            raise TreeError(path, str(exc)) from None
    elif kind == "missed":
        if value not in MISSED_POLICIES:
            raise TreeError(path, f'must be "run_once" or "skip", got {shorten(value)}')
    elif kind == "repeat":
        if value == "forever":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TreeError(path, f'must be a positive integer or "forever", got {shorten(value)}')
        if value > REPEAT_MAX:
            raise TreeError(path, f'{value} is more than {REPEAT_MAX}, the most allowed; or use "forever"')
    elif kind == "names" or kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("an array of strings")
        for i, v in enumerate(value):
            _no_nul(v, f"{path}[{i}]")
    elif kind == "env":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad("an object of string values")
        for k, v in value.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise TreeError(path, f"invalid environment variable name {shorten(k)}")
            _no_nul(k, path)
            _no_nul(v, f"{path}.{k}" if len(k) <= 64 else path)
    elif kind == "list":
        if not isinstance(value, list):
            raise bad("an array")
    elif kind == "map":
        if not isinstance(value, dict):
            raise bad("an object")
    elif kind in ("log_fields", "log_level"):
        try:
            return tree_fields(value) if kind == "log_fields" else tree_level(value)
        except FieldError as exc:
            where = path if exc.where is None or len(exc.where) > 64 else f"{path}.{exc.where}"
            raise TreeError(where, str(exc)) from None
    elif kind == "max_parallel":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a positive integer")
        if value < 1:
            raise TreeError(path, f"must be a positive integer, got {value}")
        if value > MAX_PARALLEL_MAX:
            raise TreeError(path, f"{shorten(value)} is more than {MAX_PARALLEL_MAX}, the most allowed")
    elif kind == "locks":
        if not isinstance(value, list):
            raise bad('an array of lock names such as "db" or "gpu:2"')
        if len(value) > LOCKS_MAX:
            raise TreeError(path, f"{len(value)} locks is more than {LOCKS_MAX}, the most allowed")
        out: list[tuple[str, int]] = []
        for i, item in enumerate(value):
            parsed = parse_lock(item)
            if parsed is None:
                shown = _quote(item) if isinstance(item, str) else _type_name(item)
                raise TreeError(f"{path}[{i}]", f"invalid lock {shown}: "
                                f'use a name (letters, digits and _ . -, max {LOCK_NAME_MAX}), or name:units '
                                f'such as "gpu:2" (units 1 to {LOCK_UNITS_MAX})')
            if any(name == parsed[0] for name, _ in out):
                raise TreeError(f"{path}[{i}]", f'lock "{parsed[0]}" is named twice')
            out.append(parsed)
        return out
    elif kind == "queue":
        if not isinstance(value, str) or not LOCK_NAME_RE.fullmatch(value):
            shown = _quote(value) if isinstance(value, str) else _type_name(value)
            raise TreeError(path, f"invalid queue name {shown}: use letters, digits and _ . - "
                            f"(max {LOCK_NAME_MAX})")
    elif kind == "nsschema":
        try:
            return parse_schema(value, path)
        except SchemaError as exc:
            hint = "see \"Typed namespace\" in docs/job-trees.md"
            raise TreeError(exc.path, exc.message, hint) from None
    else:  # pragma: no cover - a table entry without a checker is a bug
        raise AssertionError(kind)
    return value


def parse_lock(item: Any) -> tuple[str, int] | None:
    """A lock as a tree names it, ``"name"`` or ``"name:units"``: (name, units), or None if invalid."""
    if not isinstance(item, str):
        return None
    name, sep, units = item.partition(":")
    if not LOCK_NAME_RE.fullmatch(name):
        return None
    if not sep:
        return name, 1
    if not units.isdigit() or not units.isascii() or len(units) > 7 or not 1 <= int(units) <= LOCK_UNITS_MAX:
        return None
    return name, int(units)


def _quote(value: Any, limit: int = 64) -> str:
    """A string as an error shows it: in double quotes, or shortened when long or odd."""
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return f'"{value}"'
    return shorten(value, limit)


def _key(key: Any) -> str:
    """A field name as an error shows it."""
    return _quote(key)


def _no_nul(value: str, path: str) -> None:
    """A NUL byte cannot reach an argv, an environment or a path: refuse it here, by name. Nor can
    a lone surrogate (JSON may spell one, ``"\\ud800"``), which no encoding carries."""
    if "\0" in value:
        raise TreeError(path, f"must not contain a NUL byte, got {shorten(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            why = f"must be Unicode text without lone surrogates, got {shorten(value)}"
            raise TreeError(path, why) from None


class _Parser:
    def __init__(self, limits: Limits, engine: str | None = None) -> None:
        self.limits = limits
        #: the job's engine: the engine of every task that names none
        self.engine = engine
        self.tasks: list[TaskSpec] = []
        self.groups: list[GroupSpec] = []
        self.names: dict[str, str] = {}  # name -> path, for uniqueness
        #: id(defaults) -> (defaults, their resolved inheritable fields); see task()
        self._inherited: dict[int, tuple[dict[str, Any], _Inherited]] = {}
        #: callable references already found well-formed
        self._callables: set[str] = set()
        #: whether a max_parallel or locks stands in a group or task
        self.gated = False
        #: task index -> its own locks (see JobSpec.task_locks)
        self.task_locks: dict[int, list[tuple[str, int]]] = {}
        #: task index -> its own queue (see JobSpec.task_queues)
        self.task_queues: dict[int, str] = {}
        #: the nodes with a "repeat" or "every" (see JobSpec.cycles)
        self.cycles: dict[tuple[str, int], tuple[int | None, float | None]] = {}

    def cycle(self, node: tuple[str, int], values: dict[str, Any]) -> None:
        """Note a node's own "repeat" and "every" (a node with "every" and no "repeat" cycles for
        ever, as the job does). A node that runs once is no cycling node."""
        every = values.get("every")
        repeat = values.get("repeat", None if every is not None else 1)
        if repeat != 1:
            self.cycles[node] = (repeat, every)

    def claim(self, name: str, path: str) -> None:
        if name in self.names:
            raise TreeError(path, f'duplicate name "{name}" (also used at {self.names[name]})')
        self.names[name] = path

    def node(
        self, raw: Any, path: str, defaults: dict[str, Any], parent: int | None, default_name: str, depth: int
    ) -> tuple[str, int]:
        limits = self.limits
        if depth > limits.max_depth:
            most = limits.max_depth
            raise TreeError(path, f"nesting deeper than {most} levels (the limit is max_depth = {most})")
        if len(self.tasks) + len(self.groups) >= limits.max_nodes:
            raise TreeError(
                path, f"more than {limits.max_nodes} nodes (the limit is max_nodes = {limits.max_nodes})"
            )
        if not isinstance(raw, dict):
            raise TreeError(path, f"a node must be an object, got {_type_name(raw)}")
        if ("call" in raw) + ("cmd" in raw) + ("sequential" in raw) + ("concurrent" in raw) == 1 and (
            "call" in raw or "cmd" in raw
        ):
            return self.task(raw, path, defaults, parent, default_name)  # the common case
        group_keys = [k for k in GROUP_KEYS if k in raw]
        kinds = group_keys + [k for k in ("call", "cmd") if k in raw]
        if len(kinds) != 1:
            if not kinds:
                raise TreeError(
                    path,
                    'a node needs one of "call", "cmd", "sequential" or "concurrent"'
                    + _suggest_keys(raw, ("call", "cmd", *GROUP_KEYS)),
                )
            raise TreeError(
                path, f"a node has exactly one of call, cmd, sequential, concurrent; got {', '.join(kinds)}"
            )
        if group_keys:
            return self.group(raw, path, group_keys[0], defaults, parent, default_name, depth)
        return self.task(raw, path, defaults, parent, default_name)

    def _fields(
        self, raw: dict[str, Any], path: str, table: dict[str, FieldSpec], skip: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        get = table.get
        for key, value in raw.items():
            spec = get(key)
            if spec is None:
                if key in skip:
                    continue
                raise TreeError(
                    path, f"unknown field {_key(key)}{_suggest(str(key), list(table) + list(skip))}"
                )
            values[key] = _check_value(spec.kind, value, path, key)
            if key in _LIMITED_IN_NODES:
                _check_limits(self.limits, key, values[key], path)
        return values

    def group(
        self,
        raw: dict[str, Any],
        path: str,
        kind: str,
        defaults: dict[str, Any],
        parent: int | None,
        default_name: str,
        depth: int,
    ) -> tuple[str, int]:
        values = self._fields(raw, path, GROUP_FIELDS, skip=(kind,))
        children_raw = raw[kind]
        cpath = f"{path}.{kind}"
        if not isinstance(children_raw, list):
            raise TreeError(cpath, f"must be an array of nodes, got {_type_name(children_raw)}")
        if not children_raw:
            raise TreeError(cpath, "must not be empty")
        name = values.get("name", default_name)
        self.claim(name, path)
        index = len(self.groups)
        group = GroupSpec(index, name, path, kind, [], list(values.get("depends_on", [])), parent)  # type: ignore[arg-type]
        if "max_parallel" in values or values.get("locks") or "queue" in values:
            group.max_parallel = values.get("max_parallel")
            group.locks = values.get("locks", [])
            group.queue = values.get("queue")
            self.gated = True
        self.groups.append(group)
        if "repeat" in values or "every" in values:
            self.cycle(("group", index), values)
        inner = _merge_defaults(defaults, values)
        children = group.children
        tasks, groups, callables = self.tasks, self.groups, self._callables
        # The commonest child by far, a task that only names its callable (and perhaps itself),
        # takes a short cut with the same checks (depth, node count, the reference, a valid and
        # unique name).
        shallow = depth + 1 <= self.limits.max_depth
        name_ok = NAME_RE.match
        max_nodes = self.limits.max_nodes
        shared: _Inherited | None = None
        for i, child in enumerate(children_raw):
            if (
                shallow
                and type(child) is dict
                and (len(child) == 1 or (len(child) == 2 and "name" in child))
                and len(tasks) + len(groups) < max_nodes
            ):
                call = child.get("call")
                if type(call) is str and call not in callables and _is_callable_ref(call):
                    callables.add(call)
                task_name = child["name"] if len(child) == 2 else f"{name}.{i}"  # (2 keys: one is "name")
                if type(call) is str and call in callables and type(task_name) is str and name_ok(task_name):
                    if shared is None:
                        shared = self._resolved(inner)
                    task_index = self._add_task(
                        task_name, f"{cpath}[{i}]", "call", call, [], {}, None, False, [], shared, index,
                        self.engine,
                    )
                    children.append(("task", task_index))
                    continue
            children.append(self.node(child, f"{cpath}[{i}]", inner, index, f"{name}.{i}", depth + 1))
        return ("group", index)

    def _resolved(self, defaults: dict[str, Any]) -> _Inherited:
        """The inheritable fields ``defaults`` resolve to, once per defaults dict (see task())."""
        known = self._inherited.get(id(defaults))
        if known is None or known[0] is not defaults:
            known = self._inherited[id(defaults)] = (defaults, _inherited(defaults))
        return known[1]

    def _add_task(
        self,
        name: str,
        path: str,
        kind: Literal["call", "cmd"],
        call: str | None,
        args: list[Any],
        kwargs: dict[str, Any],
        cmd: list[str] | str | None,
        shell: bool,
        depends_on: list[str],
        inherited: _Inherited,
        parent: int | None,
        engine: str | None,
    ) -> int:
        """Claim the task's name and add its spec (checked already); returns its index.

        The spec's fields are set one by one by name, without ``TaskSpec.__init__``: a big job's
        parse makes one per task, and the dataclass's ``__init__`` takes 0.73 us with 18 keywords
        (0.33 us positionally, this way less); tests/unit/contract/test_tree.py checks that every
        field is set.
        """
        self.claim(name, path)
        index = len(self.tasks)
        t = _new_task(TaskSpec)
        t.index = index
        t.name = name
        t.path = path
        t.kind = kind
        t.call = call
        t.args = args
        t.kwargs = kwargs
        t.cmd = cmd
        t.shell = shell
        (t.timeout, t.retries, t.retry_delay, t.priority, t.env, t.cwd, t.tags, t.log_fields,
         t.log_level, io) = inherited
        t.io = io and kind == "call"  # (a cmd task inherits nothing of it: it has no event loop)
        t.depends_on = depends_on
        t.parent = parent
        t.engine = engine
        t.kill_grace = None  # (a task's own is set by task(): the short cut has none)
        self.tasks.append(t)
        return index

    def task(
        self, raw: dict[str, Any], path: str, defaults: dict[str, Any], parent: int | None, default_name: str
    ) -> tuple[str, int]:
        values = self._fields(raw, path, TASK_FIELDS)
        kind: Literal["call", "cmd"] = "call" if "call" in values else "cmd"
        if kind == "call":
            for bad in ("cmd", "shell"):
                if bad in values:
                    raise TreeError(path, f'"{bad}" belongs to cmd tasks, not call tasks')
        else:
            for bad in ("args", "kwargs"):
                if bad in values:
                    raise TreeError(path, f'"{bad}" belongs to call tasks; put arguments in "cmd"')
            shell = values.get("shell", False)
            if isinstance(values["cmd"], str) and not shell:
                raise TreeError(f"{path}.cmd", 'a string command needs "shell": true (or use an argv array)')
            if isinstance(values["cmd"], list) and shell:
                raise TreeError(f"{path}.shell", "shell: true takes the command as one string")
            if values.get("io"):
                raise TreeError(f"{path}.io", '"io": true is for call tasks (an async def function); '
                                "a command runs in a process of its own")
        merged = _merge_defaults(defaults, values)
        if merged is not defaults:
            if "env" in values and merged["env"] is not values["env"]:
                what = "environment with the inherited variables"
                _check_env(self.limits, merged["env"], f"{path}.env", what)
            inherited = _inherited(merged)
        else:
            # Tasks that override nothing share their group's resolved defaults (a big group's
            # tasks mostly do): resolved once per group, not once per task.
            inherited = self._resolved(defaults)
        get = values.get
        args, kwargs, depends_on = get("args"), get("kwargs"), get("depends_on")
        index = self._add_task(
            get("name", default_name),
            path,
            kind,
            get("call"),
            list(args) if args else [],
            dict(kwargs) if kwargs else {},
            get("cmd"),
            bool(get("shell", False)),
            list(depends_on) if depends_on else [],
            inherited,
            parent,
            get("engine", self.engine),
        )
        if "kill_grace" in values:
            self.tasks[index].kill_grace = values["kill_grace"]
        if values.get("locks"):
            self.task_locks[index] = values["locks"]
            self.gated = True
        if "queue" in values:
            self.task_queues[index] = values["queue"]
            self.gated = True
        if "repeat" in values or "every" in values:
            self.cycle(("task", index), values)
        return ("task", index)


#: Fields whose size is limited (see procpool.contract.limits.Limits).
_LIMITED = frozenset({"name", "key", "tags", "env", "args", "kwargs", "namespace"})
#: In tasks and groups (their names are bounded by NAME_RE).
_LIMITED_IN_NODES = frozenset({"tags", "env", "args", "kwargs"})


def _check_limits(limits: Limits, key: str, value: Any, where: str) -> None:
    """Size limits of one checked field (tasks' names are bounded by their pattern already)."""
    path = f"{where}.{key}" if where else key
    if key in ("name", "key"):
        size = _utf8_len(value)
        if size > limits.max_name_bytes:
            what = "job name" if key == "name" else "idempotency key"
            raise TreeError(path, limits.exceeded(what, size, "max_name_bytes"))
    elif key == "tags":
        if len(value) > limits.max_tags:
            raise TreeError(path, limits.exceeded("the list of tags", len(value), "max_tags", "long"))
        for i, tag in enumerate(value):
            size = _utf8_len(tag)
            if size > limits.max_name_bytes:
                raise TreeError(f"{path}[{i}]", limits.exceeded("tag", size, "max_name_bytes"))
    elif key == "env":
        _check_env(limits, value, path, "env")
    elif key in ("args", "kwargs", "namespace"):
        if not value:
            return
        try:
            size = packed_size(value)
        except (OverflowError, TypeError, ValueError) as exc:
            raise TreeError(path, f"cannot be encoded: {shorten(str(exc))}") from None
        setting = "max_namespace_bytes" if key == "namespace" else "max_args_bytes"
        if size > getattr(limits, setting):
            what = "the initial namespace" if key == "namespace" else f"{key} encoded"
            raise TreeError(path, limits.exceeded(what, size, setting))


def _header(n: int, small: int) -> int:
    """Bytes of a msgpack array or map header (``small``: the largest "fix" length)."""
    return 1 if n <= small else 3 if n < 0x10000 else 5


def packed_size(value: Any) -> int:
    """``len(pack(value))`` without a copy of its ``bytes``: arguments and namespaces are measured
    against their limits, and a large ``bytes`` value (a 1 MiB argument) would otherwise be copied
    only to be counted. The containers of the top level (the args list, the kwargs map) are walked
    here; anything else that is not ``bytes`` is packed to be measured (and to raise as ``pack``
    does when it cannot be encoded)."""
    if type(value) is list or type(value) is tuple:
        return _header(len(value), 15) + sum(_item_size(item) for item in value)
    if type(value) is dict:
        return _header(len(value), 15) + sum(_item_size(k) + _item_size(v) for k, v in value.items())
    return _item_size(value)


def _item_size(value: Any) -> int:
    if type(value) is bytes:
        n = len(value)
        if n < 0x100000000:
            return n + (2 if n < 0x100 else 3 if n < 0x10000 else 5)
    return len(pack(value))


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_env(limits: Limits, env: dict[str, str], path: str, what: str) -> None:
    if len(env) > limits.max_env_vars:
        raise TreeError(path, limits.exceeded(what, len(env), "max_env_vars", "variables"))
    size = sum(len(k) + len(v) + 2 for k, v in env.items())  # characters: a cheap lower bound first
    if size > limits.max_env_bytes // 4:
        size = sum(_utf8_len(k) + _utf8_len(v) + 2 for k, v in env.items())
        if size > limits.max_env_bytes:
            raise TreeError(path, limits.exceeded(what, size, "max_env_bytes"))


def _suggest_keys(raw: dict[str, Any], wanted: tuple[str, ...]) -> str:
    for key in raw:
        hint = _suggest(str(key), wanted)
        if hint:
            return f"; unknown field {_key(key)}{hint}"
    return ""


#: A task's inheritable fields, resolved: timeout, retries, retry_delay, priority, env, cwd, tags,
#: log_fields, log_level, io.
_Inherited = tuple[
    float | None, int, float, str, dict[str, str], str | None, list[str], dict[str, str], int | None,
    bool,
]


def _inherited(merged: dict[str, Any]) -> _Inherited:
    """The inheritable fields of a task whose defaults resolved to ``merged``.

    The env map and tags list may be shared by the tasks of a group: nothing changes a parsed
    spec (the daemon copies env before adding to it).
    """
    get = merged.get
    return (
        get("timeout"),
        int(get("retries", 0)),
        float(get("retry_delay", 1.0)),
        str(get("priority", "normal")),
        dict(get("env") or ()),
        get("cwd"),
        list(get("tags") or ()),
        dict(get("log_fields") or ()),
        get("log_level"),
        bool(get("io", False)),
    )


def _merge_defaults(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Inner values win; ``env`` maps and ``tags`` lists are combined instead.

    Returns ``defaults`` itself when ``values`` overrides nothing (callers only read it).
    """
    if values.keys().isdisjoint(INHERITABLE):
        return defaults
    merged = dict(defaults)
    for key in INHERITABLE:
        if key not in values:
            continue
        if key == "env" or key == "log_fields":
            merged[key] = {**defaults.get(key, {}), **values[key]}
        elif key == "tags":
            merged["tags"] = [
                *defaults.get("tags", []),
                *[t for t in values["tags"] if t not in defaults.get("tags", [])],
            ]
        else:
            merged[key] = values[key]
    return merged


def parse_job(raw: Any, limits: Limits = DEFAULT_LIMITS) -> JobSpec:
    """Validate a decoded job document; raise :class:`TreeError` naming the bad node's path.

    ``limits``: the size limits (the daemon passes its configured ones); numbers are checked
    against the fixed ranges of :mod:`procpool.contract.limits`.
    """
    if not isinstance(raw, dict):
        raise TreeError("", f"a job must be a JSON object, got {_type_name(raw)}")
    if "root" not in raw:
        hint = _suggest_keys(raw, ("root",))
        raise TreeError("", 'missing field "root" (the top node of the tree)' + hint)
    values = {}
    for key, value in raw.items():
        spec = JOB_FIELDS.get(key)
        if spec is None:
            raise TreeError(
                shorten(key, 64), f"unknown field {_key(key)}{_suggest(str(key), list(JOB_FIELDS))}"
            )
        if spec.kind != "node":
            values[key] = _check_value(spec.kind, value, key)
            if key in _LIMITED:
                _check_limits(limits, key, values[key], "")
    schema = values.get("namespace_schema")
    if schema is not None and "namespace" in values:
        try:
            check_values(schema, values["namespace"])
        except SchemaError as exc:
            raise TreeError(exc.path, exc.message) from None
    _check_schedule(values)
    parser = _Parser(limits, values.get("engine"))
    defaults = {k: values[k] for k in INHERITABLE if k in values}
    root = parser.node(raw["root"], "root", defaults, None, "root", 0)
    job = JobSpec(
        name=str(
            values.get("name") or (parser.groups[0].name if root[0] == "group" else parser.tasks[0].name)
        ),
        root=root,
        tasks=parser.tasks,
        groups=parser.groups,
        # (a job that runs on a clock repeats for ever unless it says otherwise)
        repeat=values.get("repeat", None if "every" in values or "schedule" in values else 1),
        on_failure=str(values.get("on_failure", "stop")),
        on_interrupt=str(values.get("on_interrupt", "retry")),
        priority=str(values.get("priority", "normal")),
        namespace=dict(values.get("namespace", {})),
        env=dict(values.get("env", {})),
        cwd=values.get("cwd"),
        python_path=list(values.get("python_path", [])),
        key=values.get("key"),
        tags=list(values.get("tags", [])),
        user=values.get("user"),
        engine=values.get("engine"),
        namespace_schema=schema,
        kill_grace=values.get("kill_grace"),
        max_parallel=values.get("max_parallel"),
        locks=values.get("locks", []),
        gated=parser.gated or "max_parallel" in values or bool(values.get("locks")) or "queue" in values,
        task_locks=parser.task_locks,
        queue=values.get("queue"),
        task_queues=parser.task_queues,
        every=values.get("every"),
        schedule=values.get("schedule"),
        timezone=str(values.get("timezone", "UTC")),
        missed=str(values.get("missed", "run_once")),
        cycles=parser.cycles,
    )
    job.plan = compile_job(job)
    if parser.cycles:
        _check_cycling(job, job.plan)
    return job


def _check_cycling(job: JobSpec, plan: Plan) -> None:
    """A node outside a cycling group may depend on the group, not on a node inside it: that node
    completes once per cycle, and only the group's last cycle completes it for the rest of the job."""
    cycling = {g for kind, g in job.cycles if kind == "group"}
    if not cycling:
        return

    def groups_of(node: tuple[str, int]) -> set[int]:  # the enclosing groups (and itself)
        out: set[int] = {node[1]} if node[0] == "group" else set()
        g = job.tasks[node[1]].parent if node[0] == "task" else job.groups[node[1]].parent
        while g is not None:
            out.add(g)
            g = job.groups[g].parent
        return out

    for node, preds in plan.preds.items():
        for pred in preds:
            inside = (groups_of(pred) - ({pred[1]} if pred[0] == "group" else set())) & cycling
            outside = inside - groups_of(node)
            if outside:
                group = job.groups[min(outside)]
                spec = job.tasks[node[1]] if node[0] == "task" else job.groups[node[1]]
                what = job.tasks[pred[1]].name if pred[0] == "task" else job.groups[pred[1]].name
                raise TreeError(
                    f"{spec.path}.depends_on",
                    f'{_quote(what)} is inside the repeating group "{group.name}", and this node is not: '
                    "it completes once per cycle",
                    f'depend on "{group.name}" (complete after its last cycle) instead',
                )


def _check_schedule(values: dict[str, Any]) -> None:
    """The schedule fields that only make sense together: one clock per job."""
    if "every" in values and "schedule" in values:
        raise TreeError("every", 'a job has "every" or "schedule", not both',
                        'use "schedule" for start times, "every" for a pause between runs')
    if "timezone" in values and "schedule" not in values:
        raise TreeError("timezone", '"timezone" applies to a "schedule", and the job has none')
    if "missed" in values and "every" not in values and "schedule" not in values:
        raise TreeError("missed", '"missed" applies to a job with "every" or "schedule"')


# -- ordering -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The ordering of a job. Node ids: ``("task", i)`` or ``("group", i)``.

    ``preds[node]`` are the nodes that must complete before ``node`` starts (from
    depends_on and from the previous sibling in a sequential group). A task may
    start when its own preds and those of every enclosing group are complete; a
    group is complete when all its children are.
    """

    preds: dict[tuple[str, int], list[tuple[str, int]]]
    #: the job's tasks and groups (not the JobSpec, which holds the plan: a job would then refer
    #: to itself, and stay in memory until Python's cyclic garbage collector ran)
    tasks: list[TaskSpec]
    groups: list[GroupSpec]
    _graph: dict[tuple[str, int, str], list[tuple[str, int, str]]] | None = None

    @property
    def graph(self) -> dict[tuple[str, int, str], list[tuple[str, int, str]]]:
        """The start/end graph used for the cycle check (built on first use; see compile_job)."""
        if self._graph is None:
            self._graph = _graph(self.tasks, self.groups, self.preds)
        return self._graph

    def start_order(self) -> list[int]:
        """Task indices in an order the scheduler could start them, wave by wave (Kahn's algorithm)."""
        indegree: dict[tuple[str, int, str], int] = {v: 0 for v in self.graph}
        for succ in self.graph.values():
            for w in succ:
                indegree[w] = indegree.get(w, 0) + 1
        wave = sorted(v for v, n in indegree.items() if n == 0)
        order: list[int] = []
        while wave:
            order.extend(v[1] for v in wave if v[0] == "task")
            nxt = []
            for v in wave:
                for w in self.graph.get(v, ()):
                    indegree[w] -= 1
                    if indegree[w] == 0:
                        nxt.append(w)
            wave = sorted(nxt)
        return order


def compile_job(job: JobSpec) -> Plan:
    """Resolve names and sequential order into edges; reject unknown names and cycles."""
    # Names are resolved only for depends_on: most jobs have none, and need no table of names.
    has_edges = any(t.depends_on for t in job.tasks) or any(g.depends_on for g in job.groups)
    by_name: dict[str, tuple[str, int]] = {}
    if has_edges:
        by_name = {t.name: ("task", t.index) for t in job.tasks}
        by_name.update({g.name: ("group", g.index) for g in job.groups})
    preds: dict[tuple[str, int], list[tuple[str, int]]] = {}

    def resolve(names: list[str], path: str, me: tuple[str, int]) -> list[tuple[str, int]]:
        out = []
        for i, name in enumerate(names):
            target = by_name.get(name)
            if target is None:
                raise TreeError(
                    f"{path}.depends_on[{i}]", f"unknown task {_quote(name)}{_suggest(name, list(by_name))}"
                )
            if target == me:
                raise TreeError(f"{path}.depends_on[{i}]", f"{_quote(name)} depends on itself")
            out.append(target)
        return out

    for t in job.tasks:  # (most tasks have no depends_on: no call for them)
        preds[("task", t.index)] = resolve(t.depends_on, t.path, ("task", t.index)) if t.depends_on else []
    for g in job.groups:
        preds[("group", g.index)] = resolve(g.depends_on, g.path, ("group", g.index))
    for g in job.groups:
        if g.kind == "sequential":
            for prev, cur in zip(g.children, g.children[1:], strict=False):
                preds[cur].append(prev)

    # Without depends_on edges the graph is the tree plus sequential chains: it cannot have a cycle.
    plan = Plan(preds, job.tasks, job.groups)
    cycle = _find_cycle(plan.graph) if has_edges else None
    if cycle:
        names: list[str] = []
        for kind, idx, _ in cycle:
            name = job.tasks[idx].name if kind == "task" else job.groups[idx].name
            if not names or names[-1] != name:
                names.append(name)
        if len(names) > 1 and names[0] == names[-1]:
            names.pop()
        first = cycle[0]
        path = job.tasks[first[1]].path if first[0] == "task" else job.groups[first[1]].path
        shown = [*names, names[0]] if len(names) <= 8 else names[:8]
        chain = " -> ".join(f'"{n}"' for n in shown)
        if len(chain) > ECHO_MAX or len(names) > 8:  # names are ASCII (NAME_RE): characters are bytes
            chain = f"{chain[:ECHO_MAX]} ... ({len(names)} tasks or groups in the cycle)"
        raise TreeError(path, f"dependency cycle: {chain}")
    return plan


def _graph(
    tasks: list[TaskSpec], groups: list[GroupSpec], preds: dict[tuple[str, int], list[tuple[str, int]]]
) -> dict[tuple[str, int, str], list[tuple[str, int, str]]]:
    """Start/end vertices: a group starts before its children and ends after them; a task's
    start and end are one vertex. An edge p -> n reads "end(p) before start(n)"."""

    def start(n: tuple[str, int]) -> tuple[str, int, str]:
        return (n[0], n[1], "s" if n[0] == "group" else "t")

    def end(n: tuple[str, int]) -> tuple[str, int, str]:
        return (n[0], n[1], "e" if n[0] == "group" else "t")

    graph: dict[tuple[str, int, str], list[tuple[str, int, str]]] = {}
    for g in groups:
        for child in g.children:
            graph.setdefault(start(("group", g.index)), []).append(start(child))
            graph.setdefault(end(child), []).append(end(("group", g.index)))
    for node, ps in preds.items():
        for p in ps:
            graph.setdefault(end(p), []).append(start(node))
    for t in tasks:  # tasks outside every group and edge still belong to the graph
        graph.setdefault(start(("task", t.index)), [])
    return graph


def _find_cycle(graph: dict[Any, list[Any]]) -> list[Any] | None:
    """One cycle of ``graph`` as a vertex list, or None (iterative DFS: trees can be deep)."""
    color: dict[Any, int] = {}
    for root in list(graph):
        if color.get(root):
            continue
        stack: list[tuple[Any, int]] = [(root, 0)]
        trail: list[Any] = [root]
        color[root] = 1
        while stack:
            v, i = stack[-1]
            succ = graph.get(v, [])
            if i < len(succ):
                stack[-1] = (v, i + 1)
                w = succ[i]
                c = color.get(w, 0)
                if c == 1:
                    return trail[trail.index(w) :]
                if c == 0:
                    color[w] = 1
                    stack.append((w, 0))
                    trail.append(w)
            else:
                color[v] = 2
                stack.pop()
                trail.pop()
    return None


# -- JSON Schema --------------------------------------------------------------------------------

_SCHEMA_KINDS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "name": {"type": "string", "pattern": NAME_RE.pattern},
    "callable": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"},
    "cmd": {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            {"type": "string", "minLength": 1},
        ]
    },
    "user": {"type": "string", "pattern": USER_RE.pattern},
    "bool": {"type": "boolean"},
    "positive": {"type": "number", "exclusiveMinimum": 0, "maximum": SECONDS_MAX},
    "nonnegative": {"type": "number", "minimum": 0, "maximum": SECONDS_MAX},
    "count": {"type": "integer", "minimum": 0, "maximum": RETRIES_MAX},
    "priority": {"enum": list(PRIORITIES)},
    "on_failure": {"enum": list(ON_FAILURE)},
    "on_interrupt": {"enum": list(ON_INTERRUPT)},
    "repeat": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": REPEAT_MAX}, {"const": "forever"}]},
    "cron": {"type": "string", "minLength": 1, "maxLength": CRON_MAX_CHARS},
    "timezone": {"type": "string", "minLength": 1, "maxLength": 64},
    "missed": {"enum": list(MISSED_POLICIES)},
    "names": {"type": "array", "items": {"type": "string"}},
    "strings": {"type": "array", "items": {"type": "string"}},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "list": {"type": "array"},
    "map": {"type": "object"},
    "log_fields": {
        "type": "object",
        "maxProperties": 32,
        "propertyNames": {"pattern": "^[A-Za-z0-9_]{1,64}$"},
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    },
    "log_level": {"enum": ["debug", "info", "warning", "error", "critical"]},
    "max_parallel": {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL_MAX},
    "locks": {
        "type": "array",
        "maxItems": LOCKS_MAX,
        "items": {"type": "string", "pattern": f"^{LOCK_NAME_RE.pattern}(:[0-9]{{1,7}})?$"},
    },
    "queue": {"type": "string", "pattern": f"^{LOCK_NAME_RE.pattern}$"},
    "node": {"$ref": "#/$defs/node"},
    "nsschema": {"$ref": "#/$defs/nsrecord"},
}


def _props(table: dict[str, FieldSpec]) -> dict[str, Any]:
    return {k: {**_SCHEMA_KINDS[v.kind], "description": v.description} for k, v in table.items()}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a job file, generated from the field tables."""
    group_props = _props(GROUP_FIELDS)
    children = {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 1}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://procpool.invalid/jobtree.schema.json",
        "title": "procpool job tree",
        "type": "object",
        "required": ["root"],
        "additionalProperties": False,
        "properties": _props(JOB_FIELDS),
        "$defs": {
            # namespace_schema (procpool.contract.nsschema): a type is a string, a record or [type]
            "nstype": {
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_CHARS},
                    {"$ref": "#/$defs/nsrecord"},
                    {"type": "array", "items": {"$ref": "#/$defs/nstype"}, "minItems": 1, "maxItems": 1},
                ]
            },
            "nsrecord": {
                "type": "object",
                "properties": {"?": {"type": "boolean"}, "*": {"$ref": "#/$defs/nstype"}},
                "propertyNames": {"pattern": f"^({FIELD_RE.pattern[1:-1]}|\\?|\\*)$"},
                "additionalProperties": {"$ref": "#/$defs/nstype"},
            },
            "node": {
                "oneOf": [
                    {"$ref": "#/$defs/task"},
                    {"$ref": "#/$defs/sequential"},
                    {"$ref": "#/$defs/concurrent"},
                ]
            },
            "task": {
                "type": "object",
                "additionalProperties": False,
                "properties": _props(TASK_FIELDS),
                "oneOf": [{"required": ["call"]}, {"required": ["cmd"]}],
            },
            "sequential": {
                "type": "object",
                "additionalProperties": False,
                "required": ["sequential"],
                "properties": {**group_props, "sequential": children},
            },
            "concurrent": {
                "type": "object",
                "additionalProperties": False,
                "required": ["concurrent"],
                "properties": {**group_props, "concurrent": children},
            },
        },
    }
