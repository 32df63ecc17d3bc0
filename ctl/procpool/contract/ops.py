"""The closed set of operations and the arguments each one takes.

Both sides use this table: the client builds requests from it and the daemon
validates every request against it before a handler sees the arguments, so a
handler can trust the types it receives. ``docs/protocol.md`` documents each
operation's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from procpool.contract.codec import RequestError
from procpool.contract.errors import ErrorCode

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "a map",
    list: "a list",
}


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its accepted types and whether it must be present."""

    types: tuple[type, ...]
    required: bool = False
    nullable: bool = False

    def describe(self) -> str:
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)
        return names + (" or nil" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        # bool is a subclass of int; never let True pass as an integer or number.
        if isinstance(value, bool) and bool not in self.types:
            return False
        if float in self.types and isinstance(value, int):
            return True
        return isinstance(value, self.types)


@dataclass(frozen=True, slots=True)
class Op:
    """An operation: its name, what it does, and its arguments."""

    name: str
    summary: str
    args: dict[str, Arg]
    #: True for operations that change state (later issues authorize them separately).
    mutating: bool = False


def _op(name: str, summary: str, mutating: bool = False, **args: Arg) -> Op:
    return Op(name, summary, dict(args), mutating)


_STR = (str,)
_NUM = (float,)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        _op("ping", "Answer with the daemon's version and protocol version."),
        _op(
            "status",
            "Daemon summary, a list of jobs, or one job in detail: a page of its tasks from index "
            "'tasks_from' (default 0), at most 'tasks_limit' and the daemon's status_page_size.",
            job=Arg(_STR),
            state=Arg(_STR),
            since=Arg(_NUM),
            limit=Arg((int,)),
            tasks_from=Arg((int,)),
            tasks_limit=Arg((int,)),
        ),
        _op("shutdown", "Stop the daemon gracefully.", mutating=True),
        _op(
            "submit",
            "Accept a job tree; returns its id (an existing id for a known idempotency key). With "
            "'wait' (seconds) the reply comes when the job has finished, or when the wait runs out.",
            mutating=True,
            job=Arg((dict,), required=True),
            after=Arg((list,)),
            wait=Arg(_NUM),
        ),
        _op(
            "wait",
            "Block until a job or task has finished or 'timeout' seconds passed.",
            id=Arg(_STR, required=True),
            timeout=Arg(_NUM),
        ),
        _op("cancel", "Cancel a job or a single task.", mutating=True, id=Arg(_STR, required=True)),
        _op("pool", "The worker pool: one entry per worker (pid, state, current task, tasks done, memory)."),
        _op(
            "pool_resize",
            "Change the number of workers at run time.",
            mutating=True,
            workers=Arg((int,), required=True),
        ),
        _op(
            "logs",
            "Where to read a job's or task's log, or the daemon's own tail of its recent lines.",
            id=Arg(_STR, required=True),
            attempt=Arg((int,)),
            lines=Arg((int,)),
            after=Arg((int,)),
            source=Arg(_STR),
        ),
        _op(
            "resume",
            "Release a job held after a restart (on_interrupt: hold).",
            mutating=True,
            id=Arg(_STR, required=True),
        ),
        _op(
            "clean",
            "Remove finished jobs from the history.",
            mutating=True,
            state=Arg(_STR),
            before=Arg(_NUM),
        ),
    )
}


def check_args(op_name: str, args: dict[str, Any], request_id: Any = None) -> Op:
    """Validate ``args`` for ``op_name``; raise :class:`RequestError` naming the first problem."""
    op = OPS.get(op_name)
    if op is None:
        known = ", ".join(sorted(OPS))
        raise RequestError(
            ErrorCode.UNKNOWN_OPERATION,
            f"unknown operation {op_name!r}",
            request_id,
            hint=f"known operations: {known}",
        )
    for key, value in args.items():
        spec = op.args.get(key)
        if spec is None:
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{op_name}: unknown argument {key!r}", request_id)
        if not spec.accepts(value):
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                f"{op_name}: argument {key!r} must be {spec.describe()}, got {type(value).__name__}",
                request_id,
            )
    for key, spec in op.args.items():
        if spec.required and key not in args:
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{op_name}: missing argument {key!r}", request_id)
    return op
