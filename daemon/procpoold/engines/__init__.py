"""The executor interface: where attempts run.

The scheduler decides *what* runs *when*; an executor decides *where* and
*how*. The scheduler talks to executors only through :class:`Executor`, and
executors report back only through :class:`ExecutorEvents`, so a local
process pool, the daemon's own command runner and (later) a distributed
engine are interchangeable. Nothing here assumes a local process: starting,
stopping and learning the outcome of an attempt are all asynchronous, and
everything a task does to its job's namespace or log arrives as a message.

All methods are called on the daemon's event-loop thread, and executors call
:class:`ExecutorEvents` on that thread too (from the callbacks they register
with the loop).

Engines are registered by name in the composition root (``procpoold.app``) as
an :class:`~procpoold.engines.registry.Engines`; the scheduler routes each
attempt by engine name (see :meth:`Engines.route`) and nothing outside this
package and the composition root names a concrete engine. Adding one is one
module implementing :class:`Executor` plus its registration: see
``docs/engines.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from procpoold.identity import Identity
from procpoold.loop import EventLoop

#: How an attempt ended. ``interrupted`` is used when the executor itself lost
#: the attempt (a worker died, the daemon stopped) rather than the task failing.
OutcomeStatus = Literal["completed", "failed", "timeout", "cancelled", "interrupted"]
#: Why the scheduler asks an executor to stop an attempt.
StopReason = Literal["timeout", "cancelled", "shutdown"]
Stream = Literal["log", "stdout", "stderr"]

#: The outcome status of an attempt an engine stopped, for each reason it was asked to.
STOP_STATUS: dict[StopReason, OutcomeStatus] = {
    "timeout": "timeout",
    "cancelled": "cancelled",
    "shutdown": "interrupted",
}

#: ``TaskError.type`` of an outcome whose attempt never began executing (it was still queued
#: when it was stopped); the scheduler does not count such an attempt.
NOT_STARTED = "NotStarted"


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets every field through
# object.__setattr__, about three times the cost, and these are made once per attempt.


@dataclass(slots=True, eq=False)
class AttemptSpec:
    """Everything needed to run one attempt of one task (all fields msgpack-able); read-only."""

    attempt_id: str  # "<task_id>#<attempt>", unique in the daemon's lifetime
    job_id: str
    job_name: str
    task_id: str
    task_name: str
    attempt: int  # 1 for the first attempt
    kind: Literal["call", "cmd"]
    call: str | None = None  # "pkg.module:function"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    cmd: list[str] | str | None = None  # argv list, or a string with shell=True
    shell: bool = False
    env: dict[str, str] = field(default_factory=dict)  # merged job + task env (added to the daemon's)
    cwd: str | None = None
    python_path: list[str] = field(default_factory=list)
    timeout: float | None = None  # informational: the scheduler enforces it via stop_attempt()
    run: int = 1  # the job's run number (repeat)
    priority: str = "normal"  # the task's priority (an engine with a queue of its own maps it)
    #: who the attempt runs as: an executor drops to this uid, gid and groups before any task code
    #: runs; None means the daemon's own user (a daemon that cannot switch users, or a job of its own)
    user: Identity | None = None
    #: the least severe ``logging`` level of the task's own records that is kept: the task's
    #: ``log_level`` from the tree, else the daemon's ``log_level`` when the attempt was made
    log_level: int | None = None
    #: seconds between the signal that stops the attempt and SIGKILL: the task's ``kill_grace``,
    #: else its job's; None: the engine's own (the daemon's ``kill_grace``)
    kill_grace: float | None = None
    #: resource hint (the task's ``io``, inherited in the tree): an I/O-bound ``async def``
    #: attempt that may share a worker's event loop with others of its job; False: it holds its
    #: worker alone. Engines without such workers ignore it.
    io: bool = False

    def identity_env(self) -> dict[str, str]:
        """The variables that tell a task's process which attempt it is (``PROCPOOL_JOB_ID`` ...)."""
        return {
            "PROCPOOL_JOB_ID": self.job_id,
            "PROCPOOL_JOB_NAME": self.job_name,
            "PROCPOOL_TASK_ID": self.task_id,
            "PROCPOOL_TASK_NAME": self.task_name,
            "PROCPOOL_ATTEMPT": str(self.attempt),
        }

    def context(self) -> dict[str, Any]:
        """The fields task code sees through ``procpool.task.context()``."""
        return {
            "job_id": self.job_id,
            "job_name": self.job_name,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "attempt": self.attempt,
            "run": self.run,
        }


@dataclass(slots=True)
class TaskError:
    """An exception raised by task code (or a failure of the executor), as data; read-only."""

    type: str
    message: str
    traceback: str = ""

    def to_wire(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(slots=True, eq=False)
class Outcome:
    """How one attempt ended; read-only."""

    attempt_id: str
    status: OutcomeStatus
    result: Any = None  # a call task's return value (msgpack-able)
    exit_code: int | None = None  # a cmd task's exit code (negative: killed by that signal)
    error: TaskError | None = None


class ExecutorEvents(Protocol):
    """What an executor reports to the daemon (implemented by the scheduler side)."""

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        """The attempt began running (``pid`` of the process running it, if local)."""

    def attempt_finished(self, outcome: Outcome) -> None:
        """The attempt ended; called exactly once per attempt, also after stop_attempt()."""

    def attempts_finished(self, outcomes: list[Outcome]) -> None:
        """Several attempts ended (as ``attempt_finished`` for each, in order): an executor that
        reads results in batches reports each batch with one call."""

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        """Task code reported progress (``{"fraction": 0.4}`` or ``{"done": 4, "total": 10}``)."""

    def attempt_log(self, attempt_id: str, stream: Stream, level: int, message: str,
                    fields: dict[str, str] | None = None) -> None:
        """One log record or one line of output of the attempt."""

    def capacity_changed(self) -> None:
        """The engine can take more attempts than it could (it came up, its cluster grew) without
        an attempt having ended: the scheduler looks at ``free_slots()`` again."""

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        """Apply a namespace operation for the attempt's job and return its result.

        Raises :class:`procpool.ProcpoolError` for a bad operation (the executor sends
        the error back to the task, where it is raised).
        """


@dataclass(slots=True)
class Health:
    """How an engine is doing, for readiness and ``procctl status``; read-only."""

    #: whether it can take attempts now (False: broken, or unreachable, with ``reason``)
    up: bool = True
    reason: str | None = None
    #: processes (workers, a connection) still starting: the daemon announces readiness at 0
    starting: int = 0
    #: attempts it runs now (what occupies its capacity)
    busy: int = 0
    #: its worker processes by state (``{"idle": 3, "busy": 1}``); empty for an engine without any
    workers: dict[str, int] = field(default_factory=dict)


class LeftAttempt(NamedTuple):
    """An attempt that a previous daemon (which crashed or was killed) left running with an engine,
    as the store recorded it: what :meth:`Executor.recover` gets."""

    job_id: str
    task_id: str
    attempt: int  # its number (1 for the first attempt)
    pid: int | None  # as the engine reported it, if that was committed before the crash
    worker: str | None


class EngineUnavailable(Exception):
    """An engine cannot work in this installation (a package it needs is missing); raised by
    :meth:`Executor.prefork` and shown as one line with :attr:`hint` (the daemon does not start)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Executor(Protocol):
    """Runs attempts. The scheduler calls these; see the module docstring for threading."""

    #: the engine's name: what the registry, a task's ``engine`` field and ``procctl`` use
    name: str
    #: the task kinds it can run (``"call"``, ``"cmd"``)
    kinds: frozenset[str]
    #: whether an attempt's processes may outlive a daemon that crashes (then its pid is worth
    #: committing, and :meth:`recover` must find them); False when they die with the daemon
    outlives_daemon: bool

    def prefork(self) -> None:
        """Called before the daemon creates any thread or ZeroMQ context (e.g. start a zygote);
        raises :class:`EngineUnavailable` if the engine cannot work here."""

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        """Register fds/timers with the loop; from now on events may be reported."""

    def free_slots(self) -> int:
        """How many more attempts may be submitted right now (0 when saturated)."""

    def submit(self, spec: AttemptSpec) -> None:
        """Start the attempt (asynchronously); must not block the loop."""

    def expect_work(self, uid: int | None) -> None:
        """A hint: a request that may bring attempts (a submit by user ``uid``, None: unknown)
        is arriving and has not been read yet. An executor may get ready for it (wake a sleeping
        worker); it must stay cheap, bounded, and never fail the request."""

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        """Stop a running attempt; its outcome is later reported with status = ``timeout``,
        ``cancelled`` or ``interrupted`` (for ``shutdown``), unless it finished first.

        ``signum`` (None: SIGTERM) is sent first, SIGKILL ``grace`` seconds later (None: the
        attempt's ``kill_grace``, else the engine's); SIGKILL ends it at once. A call task sees the
        signal as an exception (see docs/job-trees.md, Cancel). A second stop of an attempt being
        stopped sends its signal too (a SIGKILL ends the wait for the first one's grace)."""

    def shutdown(self, grace: float) -> None:
        """Stop everything: running attempts are stopped (``interrupted``), processes reaped.
        Blocks at most ``grace`` seconds plus the time to SIGKILL and reap."""

    def info(self) -> dict[str, Any]:
        """A summary for ``procctl status`` (msgpack-able)."""

    def set_daemon_id(self, daemon_id: str) -> None:
        """The id of the state this daemon serves (one per state file), set before :meth:`start`
        when the daemon has a store: an engine whose attempts outlive a crash tags them with it,
        so that :meth:`recover` of the next daemon finds its own and never another daemon's."""

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        """A previous daemon with this ``daemon_id`` stopped without ending ``attempts`` (routed to
        this engine): stop whatever of them still runs. Called once at start, after :meth:`start`
        and before anything is submitted; the scheduler has already counted them interrupted (no
        outcome is reported for them). Returns how many it found still running."""

    def resize(self, workers: int) -> bool:
        """Change the engine's capacity to ``workers`` at run time (``procctl pool resize``, a
        reload); False if it cannot be resized (its capacity is not the daemon's to set)."""

    def health(self) -> Health:
        """Up or down, starting processes, busy capacity and workers by state (cheap: asked at
        every status refresh)."""

    def workers(self) -> list[dict[str, Any]]:
        """One map per worker process for ``procctl pool`` (msgpack-able; empty if it has none)."""
