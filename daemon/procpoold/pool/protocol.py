"""Messages between the daemon and its pool workers (one definition for both sides).

Each message is one msgpack **array** whose first element is its kind: an array decodes in about
a third of the time of the equivalent map (no key strings to build), and this is paid once per
message on the per-task path. Fields are positional; an absent optional field is ``nil``.

Request ring, daemon -> worker:

* ``[CALL, id, fn, ctx, args, kwargs, env, cwd, python_path]``: run attempt ``id`` of ``fn``
  (``"pkg.mod:func"``); ``ctx`` is ``[job_id, job_name, task_id, task_name, attempt, run]``.
* ``[CANCEL, id]``: stop attempt ``id`` (followed by ``SIGUSR1`` for a sync attempt).
* ``[REPLY, rid, ok, value_or_error]``: the answer to a ``REQUEST``.
* ``[EXIT]``: finish and exit 0 (retirement, shutdown).

Result ring, worker -> daemon:

* ``[DONE, id, ok, result_or_error, flags, took]``: the attempt ended; ``flags`` has
  ``F_ASYNC`` (it was ``async def``), ``F_STOPPED`` (it ended because it was stopped) and
  ``F_UNCLEAN`` (the worker can no longer be restored for another job);
  ``took`` is the run time of a sync call in seconds (the daemon prefetches short functions).
  An error is ``{type, message, traceback}``.
* ``[LOG, id, stream, level, message, fields]``: a log record or an output line.
* ``[PROGRESS, id, report]``: a progress report.
* ``[REQUEST, id, rid, op, args]``: a blocking request (``op`` ``"ns"``: a namespace operation).
* ``[HEARTBEAT]``: a busy worker is alive (pushed without a wakeup).
"""

from __future__ import annotations

from typing import Any

import msgpack

# request ring
CALL = 0
CANCEL = 1
REPLY = 2
EXIT = 3

# result ring
DONE = 0
LOG = 1
PROGRESS = 2
REQUEST = 3
HEARTBEAT = 4

#: Length of each kind of result message (the daemon refuses any other shape).
RESULT_SIZES = {DONE: 6, LOG: 6, PROGRESS: 3, REQUEST: 5, HEARTBEAT: 1}

# DONE flags
F_ASYNC = 1
F_STOPPED = 2
#: The worker loaded what it cannot unload (a C extension from a job's path): it can no longer
#: be restored for another job (the daemon gives it only its job's attempts, then retires it).
F_UNCLEAN = 4

#: Keys of the ``ctx`` array, in order (the fields of ``procpool.task.TaskContext``).
CTX_KEYS = ("job_id", "job_name", "task_id", "task_name", "attempt", "run")

EXIT_MESSAGE: bytes = msgpack.packb([EXIT])
HEARTBEAT_MESSAGE: bytes = msgpack.packb([HEARTBEAT])


def context_fields(ctx: list[Any]) -> dict[str, Any]:
    """A ``CALL``'s ``ctx`` array as the fields of ``procpool.task.TaskContext``."""
    return dict(zip(CTX_KEYS, ctx, strict=True))


def stopped_before_start(attempt_id: str) -> bytes:
    """The ``DONE`` of a queued call that was cancelled before it started."""
    error = {"type": "NotStarted", "message": "stopped before it started", "traceback": ""}
    data: bytes = msgpack.packb([DONE, attempt_id, False, error, F_STOPPED, None], use_bin_type=True)
    return data
