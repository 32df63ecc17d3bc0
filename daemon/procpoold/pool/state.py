"""The state the parts of :class:`procpoold.pool.pool.PoolExecutor` share.

The executor is split by responsibility into four mixins over this state: worker lifecycle
(:mod:`.lifecycle`), dispatch (:mod:`.dispatch`), message handling (:mod:`.messages`) and
statistics (:mod:`.stats`). Everything runs in the daemon, on its event-loop thread. The methods
one part calls on another are declared here (abstract), so each module type-checks on its own.
"""

from __future__ import annotations

import abc
import time
from collections import deque
from typing import Any

from procpoold.engines import AttemptSpec, ExecutorEvents, Outcome
from procpoold.identity import Identity
from procpoold.journal import LogSink
from procpoold.loop import EventLoop
from procpoold.pool import zygote
from procpoold.pool.protocol import MESSAGE_ENVELOPE
from procpoold.pool.slot import PoolSettings, Running, WorkerSlot

#: Round trips kept for ``info()`` (the newest).
ROUND_TRIP_SAMPLES = 4096
#: First delay before refilling a slot while workers keep dying (it doubles per death).
BACKOFF_START = 0.1


class PoolState(abc.ABC):
    """Fields of the pool executor, and the methods its parts call on each other."""

    name: str

    def __init__(self, settings: PoolSettings | None = None, sink: LogSink | None = None) -> None:
        self.settings = settings or PoolSettings()
        #: The log queue: a worker's result ring is not read while it is full (policy block).
        self._sink = sink
        self._target = self.settings.workers
        self._zygote: zygote.Zygote | None = None
        self._loop: EventLoop | None = None
        self._events: ExecutorEvents | None = None
        #: Current worker of each slot (None while a slot waits for a refill).
        self._slots: dict[int, WorkerSlot | None] = {}
        #: Who the next worker of a slot runs as (absent: the daemon's own user).
        self._slot_user: dict[int, Identity | None] = {}
        #: Counts idle transitions: a worker's ``idle_since`` (least recently used first).
        self._idle_seq = 0
        #: Every worker process not yet reported dead (slotted, retiring, being killed).
        self._by_pid: dict[int, WorkerSlot] = {}
        self._all: set[WorkerSlot] = set()
        self._where: dict[str, WorkerSlot] = {}
        self._pending: deque[AttemptSpec] = deque()
        #: Attempts still queued here whose timeout ran out before they started: their timeout
        #: counts from their start instead (see :meth:`PoolExecutor.stop_attempt`).
        self._due_on_start: set[str] = set()
        #: Functions known to be ``async def`` (stopping one sends no SIGUSR1: its loop reads the
        #: cancel; whether an attempt shares a loop is its ``io`` hint's to say), and the mean run
        #: time of each sync function (moving average of ``done.d``): a worker says so, so each
        #: user's tasks speak only for that user's functions (keys: the call, or (uid, call) for an
        #: attempt of another user than the daemon's).
        self._async_calls: set[str | tuple[int, str]] = set()
        self._fn_mean: dict[str | tuple[int, str], float] = {}
        #: The last attempt dispatched was I/O-bound (``io``): free_slots() counts an idle worker
        #: as ``async_per_worker`` attempts, not one (or the prefetch depth).
        self._recent_io = False
        #: ... and of all of them.
        self._recent_mean: float | None = None
        self._gen = 0
        self._deaths: deque[float] = deque()
        self._backoff = BACKOFF_START
        self._dispatch_soon = False
        self._spin_due = False
        self._rebalance_due = False
        self._last_dispatched: WorkerSlot | None = None
        self._chain = 0
        self._chain_tick = 0.0
        self._check_timer: Any = None
        self._closing = False
        self._broken: str | None = None
        self._started_at = time.monotonic()
        self._stats = {"dispatched": 0, "completed": 0, "failed": 0, "deaths": 0, "recycled": 0,
                       "prewakes": 0, "prewakes_used": 0, "rebalanced": 0, "io_peak": 0}
        #: When wakes for an expected attempt ran out unused (the last second's).
        self._prewake_waste: deque[float] = deque()
        #: seconds from push to result of attempts sent to an otherwise empty worker (newest last),
        #: awake (spinning: the busy case) and asleep (woken by the push)
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIP_SAMPLES)
        self._woken_trips: deque[float] = deque(maxlen=ROUND_TRIP_SAMPLES)
        self._popped_at = 0.0  # perf_counter() when the result batch being handled was popped
        #: Outcomes found by the drain under way, reported together when it ends (None: no drain
        #: under way, an outcome is reported at once).
        self._batch: list[Outcome] | None = None
        #: Longest message a worker may send (a result of max_result_bytes and its envelope).
        self._max_message = self.settings.max_result_bytes + MESSAGE_ENVELOPE

    # -- provided by the parts -----------------------------------------------------------------

    @abc.abstractmethod
    def free_slots(self) -> int:
        """(pool) How many more attempts may be submitted right now."""

    @abc.abstractmethod
    def _schedule_dispatch(self) -> None:
        """(dispatch) Run a dispatch pass at the end of this loop iteration if anything is queued."""

    @abc.abstractmethod
    def _send(self, w: WorkerSlot, msgs: list[bytes]) -> None:
        """(dispatch) Push to the worker's request ring in order, queueing what does not fit yet."""

    @abc.abstractmethod
    def _head(self, w: WorkerSlot) -> Running | None:
        """(dispatch) The sync attempt the worker runs now."""

    @abc.abstractmethod
    def _arm_check(self) -> None:
        """(lifecycle) Arm the heartbeat and memory check of busy workers."""

    @abc.abstractmethod
    def _kill(self, w: WorkerSlot, reason: tuple[str, str] | None = None) -> None:
        """(lifecycle) SIGKILL the worker; its attempts are reported when its exit is."""

    @abc.abstractmethod
    def _retire(self, w: WorkerSlot) -> None:
        """(lifecycle) Take the worker out of service: now if idle, else when its attempts end."""

    @abc.abstractmethod
    def _maybe_recycle(self, w: WorkerSlot) -> None:
        """(lifecycle) Mark the worker for retirement if it is too old, too big or did enough."""

    @abc.abstractmethod
    def _on_doorbell(self, w: WorkerSlot) -> None:
        """(messages) The worker's result doorbell rang: read what waits."""

    @abc.abstractmethod
    def _drain_all(self) -> None:
        """(messages) Read every worker's result ring."""

    @abc.abstractmethod
    def _drain_worker(self, w: WorkerSlot, force: bool = False) -> None:
        """(messages) Read the worker's result ring until it is empty (or the log queue is full)."""

    @abc.abstractmethod
    def _end(self, w: WorkerSlot, aid: str, outcome: Outcome, recycle: bool = False) -> None:
        """(messages) The attempt left the worker: update its state, then report the outcome."""

    @abc.abstractmethod
    def _detach(self, w: WorkerSlot, aid: str) -> Running:
        """(messages) Take the attempt off the worker's books (not reported)."""

    @abc.abstractmethod
    def _finish(self, outcome: Outcome) -> None:
        """(messages) Report an outcome to the scheduler."""

    @abc.abstractmethod
    def _rebalance_soon(self) -> None:
        """(dispatch) A worker went idle: move queued work to it (next loop iteration)."""

    @abc.abstractmethod
    def _catch_up(self, w: WorkerSlot) -> None:
        """(messages) Read the worker's result ring now, reporting what it holds in a later callback."""

    @abc.abstractmethod
    def _timeout_from_start(self, w: WorkerSlot, run: Running) -> None:
        """(pool) The attempt started: arm its timeout if it ran out while the attempt was queued."""
