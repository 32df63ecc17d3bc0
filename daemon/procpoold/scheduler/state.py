"""The state the parts of :class:`procpoold.scheduler.Scheduler` share.

The scheduler is split by responsibility into mixins over this state, as the pool executor is
(:mod:`procpoold.pool.state`): submission (:mod:`.submission`), attempts (:mod:`.attempts`),
persistence (:mod:`.persistence`), recovery (:mod:`.recovery`), retention and queries
(:mod:`.queries`); :mod:`.scheduler` applies a job's state changes (the engine room) and composes
them. Everything runs in the daemon, on its event-loop thread. The methods one part calls on
another are declared here (abstract), so each module type-checks on its own.
"""

from __future__ import annotations

import abc
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import DEFAULT_LIMITS, Limits, shorten
from procpoold import journal
from procpoold.core import namespace
from procpoold.core.gates import Gates
from procpoold.core.jobs import DEFAULT_MAX_INTERRUPTIONS, Effects, FinishedJob, Job
from procpoold.core.queue import ReadyQueue
from procpoold.core.quota import TaskQuota
from procpoold.engines.registry import Engines
from procpoold.identity import Authority
from procpoold.loop import EventLoop, Timer
from procpoold.metrics import TaskMetrics
from procpoold.store.protocol import Store, StoredJob

log = logging.getLogger("procpoold.scheduler")
task_log = logging.getLogger("procpoold.task")

Ref = tuple[str, int]  # (job id, task index)
Listener = Callable[[str], None]

#: A job's task log is compacted into a snapshot once it would hold more than
#: 2 x (its number of tasks) + LOG_SLACK entries (see Scheduler.flush).
LOG_SLACK = 64
_RETRIED = journal.MessageId.TASK_RETRIED
#: Finished jobs kept in memory for the next request (just finished, or read back from the store;
#: see Scheduler._job): at most this many, and beyond the newest one at most LOADED_TASKS tasks in all.
LOADED_CACHE = 4
LOADED_TASKS = 100_000
#: A command's pid reaches the store with the next commit, or at most this many seconds after
#: its start (see Scheduler._touch_pid).
PID_FLUSH_DELAY = 1.0
#: What a flush writes for a changed task (see Scheduler._dirty and Job.entry).
_STARTED, _CHANGED, _FULL = 0, 1, 2


def not_found(what: str) -> ProcpoolError:
    hint = "list jobs with 'procctl status'"
    return ProcpoolError(ErrorCode.NOT_FOUND, f"no job or task {shorten(what)}", hint)


class SchedulerState(abc.ABC):
    """Fields of the scheduler, and the methods its parts call on each other."""

    def __init__(
        self,
        loop: EventLoop,
        engines: Engines,
        aging: float = 30.0,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        retention_age: float | None = None,
        retention_count: int | None = None,
        max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS,
        authority: Authority | None = None,
        sink: journal.LogSink | None = None,
    ) -> None:
        self.loop = loop
        #: where task output and attempt events go (None: through ``logging``, as in tests)
        self.journal = sink
        if sink is not None and store is not None:
            sink.on_events = store.log_events  # each iteration's events go into its durable entry
        #: interruptions of a task by the daemon (restarts, lost workers) that use none of its retries
        self.max_interruptions = max_interruptions
        #: who may name another user in a job ("user"); see job_user()
        self.authority = authority or Authority()
        self.store = store
        self.retention_age = retention_age
        self.retention_count = retention_count
        #: every finished job, in the order they finished: its small index entry (with a store, the
        #: Job itself is dropped once its final state is committed and read back on demand)
        self.finished: dict[str, FinishedJob] = {}
        #: finished jobs per state (by_state is asked for at every status refresh)
        self._finished_states: dict[str, int] = {}
        #: the same per submitter uid, for retention_count (applied per user)
        self._finished_by_uid: dict[int | None, dict[str, None]] = {}
        #: finished jobs whose Job object goes once the commit in progress holds their final state
        self._retiring: list[str] = []
        #: finished jobs read back from the store lately (a client that polls one does not make
        #: each request read it again); a few at most, so memory does not follow history
        self._loaded: OrderedDict[str, Job] = OrderedDict()
        #: changed since the last flush: job id -> {task index: _STARTED when the task's only
        #: change is an attempt starting, _CHANGED, or _FULL for a full entry}; jobs whose own
        #: fields changed
        self._dirty: dict[str, dict[int, int]] = {}
        self._dirty_jobs: set[str] = set()
        #: the job fields last written per job, to skip rewriting a job row that did not change
        self._job_rows: dict[str, tuple[Any, ...]] = {}
        self._flush_scheduled = False
        #: callbacks to run once the commit scheduled in this iteration is written (when_durable)
        self._after_flush: list[Callable[[], None]] = []
        self._pid_timer: Timer | None = None
        #: None: a command's pid is written only with another commit (tests of crash recovery).
        self.pid_flush_delay: float | None = PID_FLUSH_DELAY
        #: the engines by name, and the routing of tasks to them
        self.engines = engines
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, str] = {}
        self._next_id = 1
        #: ready tasks per engine name
        self.queues: dict[str, ReadyQueue[Ref]] = {name: ReadyQueue(aging) for name in engines.by_name}
        #: engine name -> since when (clock) the pump has found it without a free slot while tasks
        #: waited in its queue; a pass that leaves its queue empty or a slot free ends it (explain)
        self.stalls: dict[str, float] = {}
        self.attempts: dict[str, Ref] = {}
        #: attempts handed to an engine whose processes outlive the daemon, not reported started yet
        #: (their pid is committed soon after the start: see Executor.recover)
        self._outliving: set[str] = set()
        #: lifecycle event code -> the journal's site id of the code that sends it
        self._sites: dict[int, int] = {}
        self._timeouts: dict[str, Timer] = {}
        self._retry_timers: dict[Ref, Timer] = {}
        #: job id -> the timer of its next run, while it is ``scheduled`` (see .timing)
        self._schedule_timers: dict[str, Timer] = {}
        #: (job id, node) -> the timer of the node's next cycle, while it waits (see .cycles)
        self._cycle_timers: dict[tuple[str, tuple[str, int]], Timer] = {}
        self._pump_scheduled = False
        self.accepting = True
        #: the daemon's pause (``procctl pause --all``): who paused it and when; None: not paused.
        #: The pump dispatches nothing while it is set (see scheduler.pausing).
        self.paused: dict[str, Any] | None = None
        #: attempts that ``pause --stop`` stopped: their tasks run again, using no retry
        self._pause_stopped: set[str] = set()
        #: called with a job or task id whenever that job or task reaches a final state
        self.listeners: list[Listener] = []
        self._after: dict[str, list[str]] = {}  # prerequisite id -> job ids waiting on it
        self.counters = {"submitted": 0, "attempts": 0, "completed": 0, "failed": 0}
        #: ended tasks by outcome and name, throughput, recent success (``procctl metrics``)
        self.metrics = TaskMetrics()
        #: the size limits new jobs are checked against (the daemon's config sets them)
        self.limits: Limits = DEFAULT_LIMITS
        self._ns_sizes: weakref.WeakKeyDictionary[Job, namespace.Sizes] = weakref.WeakKeyDictionary()
        #: tasks of unfinished jobs against max_queued_tasks and max_user_tasks (set by the daemon)
        self.quota = TaskQuota()
        #: tasks in one page of a job's full status (see core.status.full_page)
        self.status_page_size = 1_000
        #: max_parallel and locks (core.gates): the lock limits are the config's [locks]. (Its
        #: callbacks reach the scheduler through a weak reference: no cycle keeps a dropped
        #: scheduler, and every job it held, alive until a garbage collection.)
        me = weakref.ref(self)

        def requeue(ref: Ref, key: float) -> None:
            scheduler = me()
            if scheduler is not None:
                scheduler._requeue_parked(ref, key)

        def ready(ref: Ref) -> bool:
            scheduler = me()
            return scheduler is not None and scheduler._still_ready(ref)

        self.gates = Gates(requeue=requeue, ready=ready)

    # -- provided by the parts -----------------------------------------------------------------

    @abc.abstractmethod
    def _apply(self, job: Job, effects: Effects) -> None:
        """(scheduler) Carry out a job's state changes: queue, stop, record, notify, pump."""

    @abc.abstractmethod
    def _apply_completion(self, job: Job, effects: Effects) -> None:
        """(scheduler) :meth:`_apply` for running tasks that completed (``Job.complete``)."""

    @abc.abstractmethod
    def _record(self, level: int, message: str, fields: dict[str, str]) -> None:
        """(scheduler) A job's record (submitted, finished) with its journal fields."""

    @abc.abstractmethod
    def _name_job(self, sink: journal.LogSink, job: Job) -> int:
        """(scheduler) Send the job's names to the journal (once); returns the job's number."""

    def _disarm(self, job_id: str) -> None:
        """Cancel the timer of a job's next run, if it has one (see .timing)."""
        cancel(self._schedule_timers, job_id)

    def _event_keys(self, sink: journal.LogSink, job: Job, code: int) -> tuple[int, int]:
        """What an event of ``job`` needs from the journal: the job's number (its names are sent
        the first time) and the code site of events ``code`` (the caller's location, found once
        per code)."""
        number = sink.named.get(job.id)
        if number is None:
            number = self._name_job(sink, job)
        site = self._sites.get(code)
        if site is None:
            site = self._sites[code] = sink.caller_site(2)
        return number, site

    @abc.abstractmethod
    def _fields(self, job: Job, index: int) -> dict[str, str]:
        """(scheduler) The journal fields of a task's records."""

    @abc.abstractmethod
    def _job_ended(self, job: Job, now: float) -> None:
        """(scheduler) A job reached its final state: record, index, release its quota, notify."""

    @abc.abstractmethod
    def _begin_first_run(self, job: Job) -> None:
        """(timing) Start a job's first run, or wait for the first time of its schedule."""

    @abc.abstractmethod
    def _end_scheduled(self, job: Job, reason: str, cancelled: bool) -> Effects:
        """(timing) End a ``scheduled`` job (cancelled, or stopped) without another run."""

    @abc.abstractmethod
    def _recover_scheduled(self, job: Job, cause: str = "while the daemon was down") -> None:
        """(timing) A ``scheduled`` job read back at start: its ``missed`` policy, its timer."""

    @abc.abstractmethod
    def _cycled(self, job: Job, reset: list[int]) -> None:
        """(cycles) A node's cycle ended or began: write it, arm the timers of waiting nodes."""

    @abc.abstractmethod
    def _recover_cycles(self, job: Job) -> None:
        """(cycles) A job read back at start: arm the timers of its nodes waiting for a cycle."""

    @abc.abstractmethod
    def _stop_cycles(self, job: Job) -> Effects | None:
        """(cycles) ``procctl stop``: end the job's cycling nodes (None: it has none)."""

    @abc.abstractmethod
    def _start_when_prerequisites_allow(self, job: Job) -> None:
        """(submission) Start the job's run, fail it, or wait for its unfinished prerequisites."""

    @abc.abstractmethod
    def _forget_queued(self, ref: Ref) -> None:
        """(attempts) Take the task out of the ready queues and cancel its retry timer."""

    @abc.abstractmethod
    def _requeue_parked(self, ref: Ref, key: float) -> None:
        """(attempts) A task parked by a limit, queue or lock may try again: back into its ready
        queue, with its key there."""

    @abc.abstractmethod
    def _still_ready(self, ref: Ref) -> bool:
        """(attempts) Whether the task of ``ref`` is ready in an unfinished job."""

    @abc.abstractmethod
    def _schedule_pump(self) -> None:
        """(attempts) Schedule a pump pass (at most one per loop iteration)."""

    @abc.abstractmethod
    def unpause(self, job: Job) -> dict[str, Any]:
        """(pausing) Release a paused job: its ready tasks are queued."""

    @abc.abstractmethod
    def _pump(self) -> None:
        """(attempts) Hand ready tasks to executors while they have room, best first."""

    @abc.abstractmethod
    def _touch(self, job: Job, indices: list[int]) -> None:
        """(persistence) Remember what changed (no indices: the job's own fields)."""

    @abc.abstractmethod
    def _starts_of(self, job: Job) -> dict[int, int] | None:
        """(persistence) Where the job's attempts starting before the next flush are noted."""

    @abc.abstractmethod
    def _touch_pid(self, job: Job, index: int) -> None:
        """(persistence) A command's pid: written with the next commit, or a little later."""

    @abc.abstractmethod
    def flush(self) -> None:
        """(persistence) Group commit: everything changed since the last flush."""

    @abc.abstractmethod
    def _restore(self, stored: StoredJob) -> Job:
        """(recovery) A Job as the store holds it."""

    @abc.abstractmethod
    def _read_back_unrestorable(self, stored: StoredJob) -> Job:
        """(recovery) A finished job whose document cannot be parsed, read back for status."""

    @abc.abstractmethod
    def _job(self, job_id: str) -> Job | None:
        """(queries) A job by id, read back from the store if finished (None: unknown)."""

    @abc.abstractmethod
    def _remember_loaded(self, job: Job) -> None:
        """(queries) Keep a finished Job among the few most recently read."""

    @abc.abstractmethod
    def _state_of(self, ref: str) -> str:
        """(queries) The state of a job or task (a finished job's without reading it back)."""

    @abc.abstractmethod
    def resolve(self, ref: str) -> tuple[Job, int | None]:
        """(queries) A job id, a task id or ``job/taskname``: the job and task index."""

    @abc.abstractmethod
    def _index_finished(self, entry: FinishedJob) -> None:
        """(queries) Add a finished job to the index."""

    @abc.abstractmethod
    def _unindex_finished(self, job_id: str) -> FinishedJob:
        """(queries) Take a finished job out of the index (it runs again, or is removed)."""

    @abc.abstractmethod
    def _prune(self, now: float, users: list[int | None] | None = None) -> None:
        """(queries) Drop finished jobs beyond the retention limits."""


K = TypeVar("K")


def cancel(timers: dict[K, Timer], key: K) -> None:
    """Cancel the timer of ``key`` among ``timers`` (a retry delay, a next run, a node's next
    cycle), if it has one, and forget it."""
    timer = timers.pop(key, None)
    if timer is not None:
        timer.cancel()


def _user_fields(job: Job) -> dict[str, str]:
    """``PROCPOOL_USER`` and ``PROCPOOL_UID`` of the job's submitter (none when it is unknown)."""
    if job.submitter_uid is None:
        return {}
    uid = str(job.submitter_uid)
    return {"PROCPOOL_USER": job.submitter_name or uid, "PROCPOOL_UID": uid}


def _job_row(job: Job) -> tuple[Any, ...]:
    """The job fields that change without an explicit touch (the namespace always has one)."""
    return (
        job.state,
        job.run,
        len(job.runs),
        job.started_at,
        job.finished_at,
        job.reason,
        job.cancel_requested,
    )
