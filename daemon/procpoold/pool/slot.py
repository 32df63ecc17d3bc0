"""The daemon's view of one worker: settings, the worker state machine, and death sentences.

Runs in the **daemon**, on its event-loop thread (no I/O here beyond creating the worker's segment
and eventfds and reading ``/proc`` for memory figures).

Worker states and their transitions (all made by :mod:`procpoold.pool.pool`)::

    STARTING --spawned--> IDLE --dispatch--> BUSY --last attempt done--> IDLE
        |                  |                  |
        +------------------+------------------+--retire / kill--> STOPPING --exit reported--> DEAD
    (any state) --exit reported--> DEAD

A *slot* is a stable position in the pool (``pool/3``); a *worker* is the process currently
serving it. A worker runs as one identity (``user``; None: the daemon's own user) for its whole
life, and holds attempts of one job at a time (``job``): it is handed another job's attempt only
when idle, and restores ``sys.path`` and ``sys.modules`` first, unless it said it cannot
(``unclean``: then only its job's attempts go to it, and it is retired when the slot is needed).
A retired or killed worker leaves its slot at once (the slot is refilled) and lives on
as STOPPING until the zygote reports its exit.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from procpoold.engines import AttemptSpec, StopReason
from procpoold.identity import Identity
from procpoold.loop import Timer
from procpoold.pool import shm
from procpoold.pool.ring import Segment

_PAGE = os.sysconf("SC_PAGE_SIZE")



@dataclass
class PoolSettings:
    """How the pool runs. Sizes in bytes, times in seconds; None disables a limit."""

    #: Worker processes (slots).
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: ``async def`` attempts one worker runs at once.
    async_per_worker: int = 8
    #: Recycle a worker after this many attempts.
    max_tasks_per_worker: int | None = None
    #: Kill a worker (failing its attempt) when its RSS exceeds this while it runs a task;
    #: recycle an idle worker above it.
    max_memory_per_worker: int | None = None
    #: Recycle a worker older than this (when idle).
    max_worker_age: float | None = None
    #: Between the interrupt of a stopped attempt and SIGKILL of its worker.
    kill_grace: float = 5.0
    #: A busy worker silent for this long is considered hung, killed and replaced.
    heartbeat_timeout: float = 30.0
    #: Data bytes of each ring (a power of two); messages over half of it spill to shm objects.
    #: 4 MiB: a 1 MiB argument or result (with its envelope) goes through the ring, not through
    #: a spill object (a file created, faulted in, read and removed per message). The segment's
    #: pages are shared by the daemon and the worker (not in the worker's USS) and are touched
    #: only as far as the rings have been filled: at most 8 MiB of shared memory per worker.
    ring_capacity: int = 1 << 22
    #: After a dispatch, spin this long on the result ring before blocking (0: never spin).
    spin_us: float = 50.0
    #: A worker spins this long for its next request before it sleeps on the futex (a fixed
    #: budget: the ring's adaptive one shrinks to nothing when the daemon's turn takes longer
    #: than the budget, and then every dispatch pays a futex wakeup).
    worker_spin_us: float = 60.0
    #: A client's submit wakes one idle worker before the daemon has read the job
    #: (``expect_work``), and the worker leaves its last job's imports (restore) while the daemon
    #: reads and commits the job, instead of after the attempt reached it. ``prewake_spin_us``:
    #: then spin this long for the attempt (bounded; stops early when the worker does not get the
    #: CPU) instead of going back to sleep. 0 by default: on a loaded 2-vCPU VM, spinning
    #: 300-1000 us doubled W2's p50 and its CPU per job (docs/pool.md, Figures).
    prewake: bool = True
    prewake_spin_us: float = 0.0
    #: Prefetch: sync attempts of a *short* function (mean run time under ``prefetch_below`` s)
    #: are queued on a worker that is already busy with short attempts, so that it never waits for
    #: the daemon between two of them. At most ``prefetch`` per worker, and about
    #: ``prefetch_budget`` s of work (at least 2). ``prefetch = 1`` turns it off. (64 rather than
    #: 16: a worker done with its queue sleeps, and each refill's wakeup costs the daemon more
    #: than the refill itself; W1 +15 %, daemon CPU -12 %. A budget of 20 ms rather than 2: 5 ms
    #: calls queue 4 deep, so a worker can push results without waking the daemon, see
    #: ``worker.QUIET_LEAD``; an idle worker takes the tail of a long queue, see
    #: ``Dispatch._rebalance``.)
    prefetch: int = 64
    prefetch_below: float = 0.05
    prefetch_budget: float = 0.02
    #: Longest delay before refilling a slot when workers keep dying (the delay doubles per death
    #: while 3 or more died in the last 10 s).
    respawn_backoff_max: float = 10.0
    #: Largest result a task may return (its msgpack encoding); larger fails the attempt. Any
    #: other message from a worker may be this large too (plus ``MESSAGE_ENVELOPE``).
    max_result_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.async_per_worker < 1:
            raise ValueError("async_per_worker must be >= 1")
        if self.prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if self.kill_grace < 0 or self.heartbeat_timeout <= 0:
            raise ValueError("kill_grace must be >= 0 and heartbeat_timeout > 0")
        if self.max_result_bytes < 1:
            raise ValueError("max_result_bytes must be >= 1")

    @property
    def tick(self) -> float:
        """Heartbeat period of a busy worker."""
        return min(0.25, self.heartbeat_timeout / 4)

    @property
    def check_interval(self) -> float:
        """Period of the daemon's heartbeat and memory check (armed only while a worker is busy)."""
        return min(1.0, self.heartbeat_timeout / 4)


class WorkerState(enum.Enum):
    """Life of a worker process; see the module docstring for the transitions."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"


@dataclass(eq=False, slots=True)
class Running:
    """One attempt dispatched to a worker."""

    spec: AttemptSpec
    #: Dispatched as I/O-bound (the attempt's ``io`` hint): an ``async def`` attempt that may share
    #: its worker's event loop. A CPU-bound attempt (sync or async def) is booked as a sync one:
    #: it holds its worker alone.
    is_async: bool
    #: Dispatched as a short sync attempt (prefetch allowed behind it).
    short: bool = False
    stop: StopReason | None = None
    kill_timer: Timer | None = None
    #: ``perf_counter()`` when it was pushed to a worker that held nothing else (0.0 otherwise):
    #: its result's arrival measures the pool's round trip (``PoolExecutor.info()``'s ``round_trip``).
    sent: float = 0.0
    #: ... and the push had to wake the worker (it slept): such a round trip includes a wakeup.
    woken: bool = False
    #: ``time.monotonic()`` when an async attempt was dispatched (it starts at once). A sync
    #: attempt's start is its worker's ``head_since`` once it is the head of the worker's queue.
    started: float = 0.0
    #: Its ``timeout`` ran out (the scheduler counts from the hand-over) before it started: it
    #: is stopped ``timeout`` after it starts instead (``timeout_timer``).
    timeout_due: bool = False
    timeout_timer: Timer | None = None
    #: Queued here and asked back (``CANCEL``) for an idle worker: it moves there once this
    #: worker says it dropped it (see ``Dispatch._rebalance``).
    moving: bool = False


class WorkerSlot:
    """A worker process as the daemon sees it, with its segment and doorbells."""

    def __init__(self, slot: int, gen: int, capacity: int, user: Identity | None = None) -> None:
        self.slot = slot
        self.gen = gen
        #: Who the worker runs as, for its whole life (None: the daemon's own user).
        self.user = user
        #: The job whose attempts it holds or last held (None: none yet).
        self.job: str | None = None
        #: It loaded what it cannot unload (a C extension of a job's): only ``job`` may use it.
        self.unclean = False
        self.segment = Segment.create(capacity)
        try:
            #: Written by the worker when the daemon armed the result ring.
            self.res_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            #: Written by the daemon when the worker's asyncio loop armed the request ring.
            self.req_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self.segment.close()
            raise
        self.req = self.segment.request
        self.res = self.segment.result
        self.req.set_doorbell(self.req_efd)
        # Spill objects: the daemon touches only its own for this worker in the request ring (the
        # worker could name another worker's there), and in the result ring only the worker's
        # (named once its pid is known: see ``spawned``).
        self.req.spill_tag = f"w{gen}"
        self.req.spill_from = f"{shm.spill_prefix(os.getpid())}w{gen}-"
        self.res.spill_from = shm.spill_prefix(0)
        if user is not None:
            # Arguments spilled for this worker must be readable by it (and nobody else).
            self.req.spill_owner = (user.uid, user.gid)
        self.state = WorkerState.STARTING
        self.pid: int | None = None
        self.running: dict[str, Running] = {}
        #: Attempts running that the daemon believes are sync (0 means async capacity is usable),
        #: including prefetched ones waiting in the worker's queue (run in dispatch order).
        self.sync_running = 0
        #: Of those, attempts not dispatched as short: nothing is prefetched behind them.
        self.unshort = 0
        #: ``time.monotonic()`` when the sync attempt at the head of its queue started, as far as
        #: the daemon knows: when it was sent to the worker with nothing ahead of it, or when the
        #: result of the one ahead of it was read (the worker starts the next call right away).
        self.head_since = 0.0
        #: Attempts queued here whose timeout is due from their start (``Running.timeout_due``).
        self.timeouts_due = 0
        self.tasks_done = 0
        #: Seconds its calls ran, as the worker measured them (``procctl metrics``: utilization).
        self.busy_time = 0.0
        self.spawned_at = time.monotonic()
        self.last_beat = self.spawned_at
        #: When it last became idle, as a sequence number (0: never used); the least recently
        #: used idle worker is retired first.
        self.idle_since = 0
        #: Leave the pool as soon as idle (resize, age, task count).
        self.retire = False
        #: Why the pool killed it, as (error type, sentence); None for deaths it did not cause.
        self.kill_reason: tuple[str, str] | None = None
        #: It broke the protocol: killed, and nothing more it sends is read.
        self.violated = False
        #: Its result ring had more than one turn's worth: a later turn of the loop reads on.
        self.drain_due = False
        #: The last attempts that left it: a late message about one of them is dropped, while a
        #: message about an attempt it was never given is a protocol violation.
        self.ended: deque[str] = deque(maxlen=256)
        #: Messages that did not fit the request ring yet (sent on the next drain).
        self.backlog: list[bytes] = []
        #: Replies sent since the worker was last seen to have read all its request ring.
        self.unread_replies = 0
        self.timers: list[Timer] = []
        self.closed = False
        #: Its result ring is not read while the log queue is full (log_policy block): the worker
        #: waits on its full ring, as a command waits on its full pipe.
        self.log_paused = False
        #: ``time.monotonic()`` when a ``WAKE`` asked it to spin for an expected attempt (0.0: none
        #: outstanding); cleared when an attempt is dispatched to it or the spin has run out.
        self.prewoken = 0.0

    @property
    def name(self) -> str:
        """The worker's name in events and status (``pool/<slot>``)."""
        return f"pool/{self.slot}"

    def describe(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"

    def serves(self, user: Identity | None) -> bool:
        """Whether the worker runs as ``user`` (identities compare by uid, gid and groups)."""
        mine = self.user
        if mine is None or user is None:
            return mine is user
        return mine.uid == user.uid and mine.gid == user.gid and mine.groups == user.groups

    def close(self) -> None:
        """Release the segment and eventfds (after the process is gone); idempotent."""
        if self.closed:
            return
        self.closed = True
        for timer in self.timers:
            timer.cancel()
        for run in self.running.values():
            if run.kill_timer is not None:
                run.kill_timer.cancel()
            if run.timeout_timer is not None:
                run.timeout_timer.cancel()
        try:
            # Unlink spill objects still referenced from either ring. The request ring's producer
            # handle takes over the consumer side (resync loads the worker's read position).
            self.req.resync()
            self.req.discard()
            self.res.discard()
        finally:
            self.segment.close()
            os.close(self.res_efd)
            os.close(self.req_efd)


def death_sentence(worker: WorkerSlot, code: int | None, sig: int | None, task_name: str,
                   oom: bool | None = None) -> str:
    """``worker 3 (pid 4711) was killed by SIGKILL while running task 'resize'; out of memory?``

    ``oom`` says whether the kernel's OOM killer sent a SIGKILL (see :mod:`procpoold.oom`): True
    names it, False rules it out, None (unknown) leaves the question.
    """
    who = worker.describe()
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL and oom:
            return (f"{who} was killed by the kernel's OOM killer (SIGKILL) while running task "
                    f"{task_name!r}: out of memory")
        hint: dict[int, str] = {
            signal.SIGKILL: "; out of memory?" if oom is None else " (not by the OOM killer)",
            signal.SIGSEGV: "; a crash in native code?",
            signal.SIGBUS: "; a crash in native code?", signal.SIGABRT: "; an abort in native code?"}
        return f"{who} was killed by {name} while running task {task_name!r}{hint.get(sig, '')}"
    return f"{who} exited with code {code} while running task {task_name!r}"


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (from ``/proc/PID/statm``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def read_peak_rss(pid: int) -> int | None:
    """The largest resident set size ``pid`` has had, in bytes (``VmHWM``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


def read_uss(pid: int) -> int | None:
    """Unshared memory of ``pid`` in bytes (private clean + dirty, ``smaps_rollup``)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read().decode()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def memory_info(pid: int | None) -> dict[str, Any]:
    """``{"rss": bytes, "uss": bytes}`` for status output (None values if unknown)."""
    if pid is None:
        return {"rss": None, "uss": None}
    return {"rss": read_rss(pid), "uss": read_uss(pid)}
