"""Messages between the daemon and its pool workers (one definition for both sides).

Each message is one msgpack **array** whose first element is its kind: an array decodes in about
a third of the time of the equivalent map (no key strings to build), and this is paid once per
message on the per-task path. Fields are positional; an absent optional field is ``nil``. The
layout of a ``CALL`` (the per-attempt message) is defined once, by :data:`CALL_FIELDS`: the
daemon packs it with :func:`encode_call`, and the worker reads each field by its named position
(``msg[CALL_FN]``), never by a bare number.

Request ring, daemon -> worker:

* ``[CALL, id, fn, ctx, args, kwargs, env, cwd, python_path, log_level, io]``: run attempt ``id``
  of ``fn`` (``"pkg.mod:func"``); ``ctx`` is ``[job_id, job_name, task_id, task_name, attempt, run]``;
  ``log_level`` the least severe ``logging`` level of the task's records the worker passes on
  (the task's own ``log_level``, else the daemon's, as it is when the attempt starts); ``io``
  true: the task is I/O-bound (it may share the worker's event loop), and the worker fails it
  (``TypeError``) unless ``fn`` is ``async def``.
* ``[CANCEL, id]`` or ``[CANCEL, id, signal]``: stop attempt ``id`` (followed by ``SIGUSR1`` for a
  sync attempt); ``signal`` names the stop's signal when it is not SIGTERM: ``"SIGINT"`` raises
  ``KeyboardInterrupt`` in a sync attempt, any other ``TaskInterrupted`` naming it.
* ``[REPLY, rid, ok, value_or_error]``: the answer to a ``REQUEST``.
* ``[EXIT]``: finish and exit 0 (retirement, shutdown).
* ``[WAKE, spin_us, restore]``: work is on its way (a client is submitting): an idle worker
  spins on its request ring for at most ``spin_us`` (capped at :data:`MAX_WAKE_SPIN_US`) instead
  of sleeping, and, if ``restore``, first forgets its last job's imports (as before another
  job's ``CALL``), so that the attempt finds it awake and switched.

Result ring, worker -> daemon:

* ``[DONE, id, ok, result_or_error, flags, took]``: the attempt ended; ``flags`` has
  ``F_ASYNC`` (it was ``async def``), ``F_STOPPED`` (it ended because it was stopped) and
  ``F_UNCLEAN`` (the worker can no longer be restored for another job);
  ``took`` is the run time of a sync call in seconds (the daemon prefetches short functions).
  An error is ``{type, message, traceback}``.
* ``[LOG, id, stream, level, message, fields]``: a log record or an output line; ``fields``
  only the code site's (:data:`LOG_FIELDS`) and the task's log context (``PROCPOOL_X_<NAME>``,
  :func:`procpool.contract.logfields.wire_field_ok`, at most ``MAX_FIELDS`` of them).
* ``[PROGRESS, id, report]``: a progress report.
* ``[REQUEST, id, rid, op, args]``: a blocking request (``op`` ``"ns"``: a namespace operation).
* ``[HEARTBEAT]``: a busy worker is alive (pushed without a wakeup).

The worker runs untrusted code that can write anything into its result ring, so the daemon checks
every result message with :func:`result_problem` (kind, length and the type of every field) before
it looks at it, and then that its attempt id names an attempt it gave that worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from procpool.contract.logfields import MAX_FIELDS, PREFIX, wire_field_ok

if TYPE_CHECKING:
    from procpoold.engines import AttemptSpec

# request ring
CALL = 0
CANCEL = 1
REPLY = 2
EXIT = 3
WAKE = 4

#: Longest spin a ``WAKE`` may ask of a worker (microseconds).
MAX_WAKE_SPIN_US = 5000.0

# result ring
DONE = 0
LOG = 1
PROGRESS = 2
REQUEST = 3
HEARTBEAT = 4

#: Length of each kind of result message (the daemon refuses any other shape).
RESULT_SIZES = {DONE: 6, LOG: 6, PROGRESS: 3, REQUEST: 5, HEARTBEAT: 1}
#: Names of the result kinds, for the daemon's sentences.
RESULT_NAMES = {DONE: "done", LOG: "log", PROGRESS: "progress", REQUEST: "request", HEARTBEAT: "heartbeat"}
#: Streams of a ``LOG`` message, and the only fields a ``log`` record may carry (the journal
#: fields of the attempt, ``PROCPOOL_*``, are the daemon's to set).
LOG_STREAMS = frozenset({"log", "stdout", "stderr"})
LOG_FIELDS = frozenset({"CODE_FILE", "CODE_LINE", "CODE_FUNC", "LOGGER"})
#: Keys of a ``PROGRESS`` report (``procpool.task.progress``) and the types of their values.
PROGRESS_TYPES: dict[str, tuple[type, ...]] = {
    "fraction": (float, int), "done": (int,), "total": (int,), "message": (str,)}
#: Bytes a worker's message may take beyond ``max_result_bytes`` (its kind, attempt id, flags).
MESSAGE_ENVELOPE = 1024
#: Largest ``took`` the daemon believes (seconds; anything else is a lie).
MAX_TOOK = 1e9

# DONE flags
F_ASYNC = 1
F_STOPPED = 2
#: The worker loaded what it cannot unload (a C extension from a job's path): it can no longer
#: be restored for another job (the daemon gives it only its job's attempts, then retires it).
F_UNCLEAN = 4

#: The fields of a ``CALL``, in their order on the wire (see the module docstring).
CALL_FIELDS = ("kind", "id", "fn", "ctx", "args", "kwargs", "env", "cwd", "python_path", "log_level", "io")
#: Their positions, by name: what the worker reads a ``CALL`` with.
(CALL_ID, CALL_FN, CALL_CTX, CALL_ARGS, CALL_KWARGS, CALL_ENV, CALL_CWD, CALL_PATH,
 CALL_LOG_LEVEL, CALL_IO) = range(1, len(CALL_FIELDS))
#: Keys of the ``ctx`` array, in order (the fields of ``procpool.task.TaskContext``).
CTX_KEYS = ("job_id", "job_name", "task_id", "task_name", "attempt", "run")
#: The positions of the job id and the task name in ``ctx``.
CTX_JOB_ID, CTX_TASK_NAME = CTX_KEYS.index("job_id"), CTX_KEYS.index("task_name")

_packb = msgpack.Packer(use_bin_type=True).pack


def encode_call(spec: AttemptSpec) -> bytes:
    """The ``CALL`` of attempt ``spec``, in the order of :data:`CALL_FIELDS` (and ``ctx`` in the
    order of :data:`CTX_KEYS`); empty optional fields go as ``nil``. Runs in the daemon, per attempt."""
    return _packb([  # type: ignore[no-any-return]
        CALL, spec.attempt_id, spec.call,
        [spec.job_id, spec.job_name, spec.task_id, spec.task_name, spec.attempt, spec.run],
        spec.args or None, spec.kwargs or None, spec.env or None, spec.cwd or None, spec.python_path or None,
        spec.log_level, spec.io or None,
    ])

EXIT_MESSAGE: bytes = msgpack.packb([EXIT])
HEARTBEAT_MESSAGE: bytes = msgpack.packb([HEARTBEAT])


def result_problem(msg: Any) -> str | None:
    """What is wrong with a decoded result message, or None if it is well formed.

    Checks the kind, the length and the type of every field of every kind (a few type checks
    for a ``DONE``: this runs for every result). The attempt id's owner is the caller's to check.
    """
    # The hot path, first: every attempt ends with a DONE (``is``: small ints are shared objects in
    # CPython; elsewhere the checks below take it).
    if type(msg) is list and len(msg) == 6 and msg[0] is DONE:
        _, aid, ok, value, flags, took = msg
        if (type(aid) is str and type(ok) is bool and type(flags) is int
                and (took is None or (type(took) is float and 0.0 <= took < MAX_TOOK))
                and (ok or type(value) is dict)):
            return None
        return _done_problem(msg)
    if type(msg) is not list or not msg:
        return f"not a result message: {msg!r:.80}"
    kind = msg[0]
    if type(kind) is not int or RESULT_SIZES.get(kind) != len(msg):
        return f"not a result message: {msg!r:.80}"
    if kind == DONE:
        return _done_problem(msg)
    if kind == HEARTBEAT:
        return None
    if type(msg[1]) is not str:
        return f"a {RESULT_NAMES[kind]} message whose attempt id is {type(msg[1]).__name__}, not a string"
    if kind == LOG:
        _, _, stream, level, message, fields = msg
        if type(stream) is not str or stream not in LOG_STREAMS:
            return f"a log message for stream {stream!r:.40}"
        if type(level) is not int or type(message) is not str:
            return (f"a log message with level of type {type(level).__name__} and text of type "
                    f"{type(message).__name__}")
        if fields is not None and (type(fields) is not dict or not fields.keys() <= LOG_FIELDS
                                   or any(type(v) is not str for v in fields.values())):
            return _fields_problem(fields)
        return None
    if kind == PROGRESS:
        report = msg[2]
        if type(report) is not dict or any(
                type(v) not in PROGRESS_TYPES.get(k, ()) for k, v in report.items()):
            return f"a progress message with report {report!r:.80}"
        fraction = report.get("fraction")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            return f"a progress message with fraction {fraction!r:.40}"
        return None
    # REQUEST
    _, _, rid, op, args = msg
    if type(rid) is not int or type(op) is not str or (args is not None and type(args) is not dict):
        return (f"a request message with id of type {type(rid).__name__}, operation of type "
                f"{type(op).__name__} and arguments of type {type(args).__name__}")
    return None


def _fields_problem(fields: Any) -> str | None:
    """What is wrong with the fields of a log message that are not all the code site's: a task's
    log context may add ``PROCPOOL_X_`` fields (checked one by one), nothing else."""
    if type(fields) is dict and len(fields) <= len(LOG_FIELDS) + MAX_FIELDS:
        extra = 0
        for name, value in fields.items():
            if name in LOG_FIELDS:
                if type(value) is not str:
                    break
            elif type(name) is str and name.startswith(PREFIX) and wire_field_ok(name, value):
                extra += 1
            else:
                break
        else:
            if extra <= MAX_FIELDS:
                return None
    return f"a log message with fields {fields!r:.80}"


def _done_problem(msg: list[Any]) -> str | None:
    _, aid, ok, value, flags, took = msg
    if type(aid) is not str:
        return f"a done message whose attempt id is {type(aid).__name__}, not a string"
    if type(ok) is not bool or type(flags) is not int:
        return f"a done message with ok of type {type(ok).__name__} and flags of type {type(flags).__name__}"
    if not ok and type(value) is not dict:
        return f"a done message whose error is {type(value).__name__}, not a map"
    if took is not None and (type(took) is not float or not 0.0 <= took < MAX_TOOK):
        return f"a done message with run time {took!r:.40}"
    return None


def context_fields(ctx: list[Any]) -> dict[str, Any]:
    """A ``CALL``'s ``ctx`` array as the fields of ``procpool.task.TaskContext``."""
    return dict(zip(CTX_KEYS, ctx, strict=True))


def stopped_before_start(attempt_id: str) -> bytes:
    """The ``DONE`` of a queued call that was cancelled before it started."""
    error = {"type": "NotStarted", "message": "stopped before it started", "traceback": ""}
    data: bytes = msgpack.packb([DONE, attempt_id, False, error, F_STOPPED, None], use_bin_type=True)
    return data
