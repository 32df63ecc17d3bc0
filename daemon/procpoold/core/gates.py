"""Limits, queues and locks: whether a ready task may start now (``max_parallel``, ``queue`` and
``locks`` in a tree).

A job or group with ``max_parallel: N`` runs at most N of its tasks at once; nested limits all
apply. A task holding ``locks`` (its own, its groups' and its job's) starts only when it can take
every unit of every lock at once (all or none), and gives them back when its attempt ends, however
it ends. Each lock name's limit comes from the daemon's config ``[locks]`` (default 1: a mutex).

The scheduler's pump asks :meth:`Gates.admit` for each popped task of a job that has any of these
(the common job has none and costs nothing here). A refused task is *parked*: it leaves the ready
queue and waits in a FIFO of the gate that refused it (a group's, or a lock's), until that gate has
room again; then the gate *wakes* it (puts it back in its ready queue through ``requeue``).

A named queue (``"queue": "io"``) lets at most its *parallelism* of its tasks run at once, across
every job; the config's ``[queues]`` sets it and ``procctl queue set`` changes it at run time. A
queue may be paused (nothing new of it starts). Its waiters are served by priority with aging, as
the ready queue is (core.queue): a waiter keeps the key it had in the ready queue (the time it
became ready plus its priority's rank times the aging), and a woken one goes back to the ready
queue with that key, so the time it waited counts, and a low-priority task behind a steady stream
of high-priority ones still gets its turn.

No starvation at a lock: a lock with waiters lets no newcomer take it; the units given back go to
its waiters in order (promised to the one woken until it is dispatched, so a later task cannot
take them in between). A task with several locks waits for each in turn. Nothing here is stored:
after a restart of the daemon no attempt is running, so no lock is held.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from procpool.contract.tree import JobSpec, TreeError

Ref = tuple[str, int]  # (job id, task index)
#: a group's key: (job id, group index; JOB for the job itself)
GroupKey = tuple[str, int]
JOB = -1


@dataclass(frozen=True, slots=True)
class TaskGates:
    """What one task must get before it starts."""

    #: the groups (their index, JOB for the job) with a max_parallel, and that limit, innermost first
    groups: tuple[tuple[int, int], ...]
    #: (lock name, units), sorted by name
    locks: tuple[tuple[str, int], ...]
    #: the named queue it runs in (None: none)
    queue: str | None = None


def task_gates(spec: JobSpec) -> list[TaskGates | None]:
    """Each task's gates (None for a task that has none); O(tasks x depth), one object per group
    for the tasks that name no locks of their own (a big group's tasks share it)."""
    groups, own, own_queue = spec.groups, spec.task_locks, spec.task_queues
    out: list[TaskGates | None] = []
    shared: dict[int | None, TaskGates | None] = {}  # parent group -> the gates of its plain tasks
    for t in spec.tasks:
        plain = t.index not in own and t.index not in own_queue
        if plain and t.parent in shared:
            out.append(shared[t.parent])
            continue
        limits: list[tuple[int, int]] = []
        locks: dict[str, int] = {}
        for name, units in own.get(t.index, ()):
            locks[name] = units
        queue = own_queue.get(t.index)
        g = t.parent
        while g is not None:
            gs = groups[g]
            if gs.max_parallel is not None:
                limits.append((g, gs.max_parallel))
            for name, units in gs.locks:
                locks.setdefault(name, units)  # an inner node's units win
            if queue is None:
                queue = gs.queue  # (the innermost queue named wins)
            g = gs.parent
        if spec.max_parallel is not None:
            limits.append((JOB, spec.max_parallel))
        for name, units in spec.locks:
            locks.setdefault(name, units)
        if queue is None:
            queue = spec.queue
        gates = (TaskGates(tuple(limits), tuple(sorted(locks.items())), queue)
                 if limits or locks or queue is not None else None)
        if plain:
            shared[t.parent] = gates
        out.append(gates)
    return out


def check_gates(spec: JobSpec, limits: dict[str, int], queues: Collection[str]) -> None:
    """Refuse a job that names more units of a lock than its limit, or a queue the daemon does not
    have (either could never start)."""
    named = [(spec.tasks[i].path, q) for i, q in spec.task_queues.items()]
    named += [(g.path, g.queue) for g in spec.groups if g.queue is not None]
    if spec.queue is not None:
        named.append(("", spec.queue))
    for path, queue in named:
        if queue not in queues:
            known = ", ".join(sorted(queues)[:20]) or "none"
            raise TreeError(f"{path}.queue" if path else "queue", f'there is no queue "{queue}" '
                            f"(the daemon's queues: {known})",
                            f"an administrator adds it: procctl queue set {queue} --parallel N "
                            "(or the config's [queues])")
    nodes = [(spec.tasks[i].path, locks) for i, locks in spec.task_locks.items()]
    nodes += [(g.path, g.locks) for g in spec.groups]
    nodes.append(("", spec.locks))
    for path, locks in nodes:
        for i, (name, units) in enumerate(locks):
            limit = limits.get(name, 1)
            if units > limit:
                where = f"{path}.locks[{i}]" if path else f"locks[{i}]"
                raise TreeError(where, f'needs {units} units of lock "{name}", whose limit is {limit}',
                                "the daemon's config [locks] sets each lock's limit (default 1)")


@dataclass(slots=True)
class Waiting:
    """Why a parked task waits (``procctl explain``)."""

    #: "lock", "max_parallel" or "queue"
    kind: str
    #: the lock's or queue's name, or the group's index (JOB: the job)
    what: str | int
    #: the lock's or group's limit, the queue's parallelism
    limit: int
    #: the number of this parking (an entry of an older one in a FIFO is stale)
    token: int


@dataclass(slots=True)
class _Held:
    job_id: str
    gates: TaskGates


@dataclass
class Gates:
    """The state of every max_parallel and lock (loop thread)."""

    #: puts a woken task back in its ready queue, with the key it had there
    requeue: Callable[[Ref, float], None]
    #: whether a task is still ready (its job unfinished): a parked entry of one that is not is dropped
    ready: Callable[[Ref], bool]
    #: lock name -> its limit (the config's [locks]; a name not there has 1)
    limits: dict[str, int] = field(default_factory=dict)
    #: job id -> each task's gates, for the unfinished jobs that have any (see task_gates)
    jobs: dict[str, list[TaskGates | None]] = field(default_factory=dict)
    #: tasks running per group with a max_parallel
    running: dict[GroupKey, int] = field(default_factory=dict)
    #: lock name -> units held
    held: dict[str, int] = field(default_factory=dict)
    #: lock name -> attempt id -> units (who holds it, for explain)
    holders: dict[str, dict[str, int]] = field(default_factory=dict)
    #: lock name -> units promised to woken waiters not dispatched yet
    promised: dict[str, int] = field(default_factory=dict)
    #: the FIFOs of parked tasks: per lock (ref, units, token, key), per group (ref, token, key);
    #: ``key`` is the task's key in the ready queue, which it goes back to with it when woken
    lock_waiters: dict[str, deque[tuple[Ref, int, int, float]]] = field(default_factory=dict)
    group_waiters: dict[GroupKey, deque[tuple[Ref, int, float]]] = field(default_factory=dict)
    #: queue name -> its parallelism (the config's [queues], procctl queue set; an unknown name has 1)
    queues: dict[str, int] = field(default_factory=dict)
    #: queue name -> its pause ({"by", "uid", "at", "stop"}), while paused
    queue_paused: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: tasks running per queue
    queue_running: dict[str, int] = field(default_factory=dict)
    #: queue name -> places promised to woken waiters not dispatched yet
    queue_promised: dict[str, int] = field(default_factory=dict)
    #: queue name -> a heap of its parked tasks (key, seq, ref, token): the best key first
    queue_waiters: dict[str, list[tuple[float, int, Ref, int]]] = field(default_factory=dict)
    #: tasks woken by a queue not dispatched yet: the queue
    queue_woken: dict[Ref, str] = field(default_factory=dict)
    #: parked tasks: why they wait
    parked: dict[Ref, Waiting] = field(default_factory=dict)
    #: woken tasks not dispatched yet: the lock whose units they were promised, and how many
    woken: dict[Ref, tuple[str, int]] = field(default_factory=dict)
    #: tasks woken by a group not dispatched yet
    group_woken: dict[Ref, GroupKey] = field(default_factory=dict)
    #: attempt id -> what it holds
    by_attempt: dict[str, _Held] = field(default_factory=dict)
    _tokens: int = 0
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def add_job(self, job_id: str, spec: JobSpec) -> None:
        if job_id not in self.jobs:
            self.jobs[job_id] = task_gates(spec)

    def forget_job(self, job_id: str) -> None:
        """The job finished (its parked entries are stale, and dropped as they are met)."""
        self.jobs.pop(job_id, None)

    # -- dispatch ------------------------------------------------------------------------------

    def admit(self, ref: Ref, gates: TaskGates, key: float) -> bool:
        """Take what ``gates`` asks for, all or none; False: the task is parked instead. ``key`` is
        the task's key in the ready queue it was popped from (kept while it is parked)."""
        job_id = ref[0]
        woke = self.woken.pop(ref, None) if self.woken else None
        if woke is not None:
            self._unpromise(woke)
        if self.group_woken:
            self.group_woken.pop(ref, None)
        qwoke = self.queue_woken.pop(ref, None) if self.queue_woken else None
        if qwoke is not None:
            _less(self.queue_promised, qwoke, 1)
        running = self.running
        for index, most in gates.groups:
            if running.get((job_id, index), 0) >= most:
                self._park_group(ref, (job_id, index), most, key)
                self._rewake(woke, qwoke)
                return False
        queue = gates.queue
        if queue is not None:
            limit = self.queues.get(queue, 1)
            waiters = self.queue_waiters.get(queue)
            if waiters and qwoke != queue:
                self._prune_queue(waiters)
            if (
                queue in self.queue_paused
                or self.queue_running.get(queue, 0) + self.queue_promised.get(queue, 0) >= limit
                or (waiters and qwoke != queue)
            ):
                self._park_queue(ref, queue, limit, key)
                self._rewake(woke, qwoke)
                return False
        held, promised, waiters_of = self.held, self.promised, self.lock_waiters
        for name, units in gates.locks:
            limit = self.limits.get(name, 1)
            fifo = waiters_of.get(name)
            if fifo and (woke is None or woke[0] != name):
                self._prune(fifo)
            if held.get(name, 0) + promised.get(name, 0) + units > limit or (
                fifo and (woke is None or woke[0] != name)
            ):
                self._park_lock(ref, name, units, limit, key)
                self._rewake(woke, qwoke)
                return False
        for index, _ in gates.groups:
            k = (job_id, index)
            running[k] = running.get(k, 0) + 1
        if queue is not None:
            self.queue_running[queue] = self.queue_running.get(queue, 0) + 1
        for name, units in gates.locks:
            held[name] = held.get(name, 0) + units
        self.parked.pop(ref, None)
        return True

    def hold(self, attempt_id: str, job_id: str, gates: TaskGates) -> None:
        """The admitted task's attempt: what it took is given back by :meth:`release`."""
        self.by_attempt[attempt_id] = _Held(job_id, gates)
        for name, units in gates.locks:
            self.holders.setdefault(name, {})[attempt_id] = units

    def release(self, attempt_id: str) -> None:
        """The attempt ended (however): give back what it took and wake who waits for it."""
        h = self.by_attempt.pop(attempt_id, None)
        if h is None:
            return
        for index, _ in h.gates.groups:
            key = (h.job_id, index)
            _less(self.running, key, 1)
            self._wake_group(key)
        queue = h.gates.queue
        if queue is not None:
            _less(self.queue_running, queue, 1)
            self._wake_queue(queue)
        for name, units in h.gates.locks:
            _less(self.held, name, units)
            holders = self.holders.get(name)
            if holders is not None:
                holders.pop(attempt_id, None)
                if not holders:
                    del self.holders[name]
            self._wake_lock(name)

    def dropped(self, ref: Ref) -> None:
        """The task left the ready queue without being dispatched (cancelled): a promise made to
        it goes to the next waiter."""
        woke = self.woken.pop(ref, None)
        if woke is not None:
            self._unpromise(woke)
            self._wake_lock(woke[0])
        key = self.group_woken.pop(ref, None)
        if key is not None:
            self._wake_group(key)
        queue = self.queue_woken.pop(ref, None)
        if queue is not None:
            _less(self.queue_promised, queue, 1)
            self._wake_queue(queue)
        self.parked.pop(ref, None)

    def set_limits(self, limits: dict[str, int]) -> None:
        """New limits (a config reload): a lock that grew wakes its waiters."""
        self.limits = dict(limits)
        for name in list(self.lock_waiters):
            self._wake_lock(name)

    def set_queue(self, name: str, parallel: int) -> None:
        """A queue's parallelism (new, or changed at run time): if it grew, its waiters start."""
        self.queues[name] = parallel
        self._wake_queue(name)

    def set_queues(self, queues: dict[str, int]) -> None:
        """Every queue's parallelism (at start, at a config reload)."""
        self.queues = dict(queues)
        for name in list(self.queue_waiters):
            self._wake_queue(name)

    def pause_queue(self, name: str, record: dict[str, Any]) -> None:
        """Nothing new of the queue starts until :meth:`resume_queue` (its running tasks go on)."""
        self.queue_paused.setdefault(name, record)

    def resume_queue(self, name: str) -> bool:
        """End a queue's pause; False if it was not paused."""
        if self.queue_paused.pop(name, None) is None:
            return False
        self._wake_queue(name)
        return True

    def queue_waiting(self) -> dict[str, int]:
        """How many tasks wait for a place in each queue (O(parked); for status and pool)."""
        out: dict[str, int] = {}
        for ref, w in self.parked.items():
            if w.kind == "queue" and self.ready(ref):
                out[str(w.what)] = out.get(str(w.what), 0) + 1
        return out

    def queue_ahead(self, ref: Ref) -> int:
        """How many tasks wait in the same queue before ``ref`` (explain)."""
        w = self.parked.get(ref)
        if w is None or w.kind != "queue":
            return 0
        heap = self.queue_waiters.get(str(w.what), [])
        mine = next((e for e in heap if e[2] == ref and e[3] == w.token), None)
        if mine is None:
            return 0
        return sum(1 for e in heap if e < mine and self._live(e[2], e[3]))

    # -- parking and waking ----------------------------------------------------------------------

    def _token(self) -> int:
        self._tokens += 1
        return self._tokens

    def _park_group(self, ref: Ref, group: GroupKey, most: int, key: float) -> None:
        token = self._token()
        self.parked[ref] = Waiting("max_parallel", group[1], most, token)
        self.group_waiters.setdefault(group, deque()).append((ref, token, key))

    def _park_lock(self, ref: Ref, name: str, units: int, limit: int, key: float) -> None:
        token = self._token()
        self.parked[ref] = Waiting("lock", name, limit, token)
        self.lock_waiters.setdefault(name, deque()).append((ref, units, token, key))

    def _park_queue(self, ref: Ref, name: str, limit: int, key: float) -> None:
        token = self._token()
        self.parked[ref] = Waiting("queue", name, limit, token)
        heapq.heappush(self.queue_waiters.setdefault(name, []), (key, next(self._seq), ref, token))

    def _live(self, ref: Ref, token: int) -> bool:
        w = self.parked.get(ref)
        return w is not None and w.token == token and self.ready(ref)

    def _prune(self, queue: deque[tuple[Ref, int, int, float]]) -> None:
        while queue and not self._live(queue[0][0], queue[0][2]):
            queue.popleft()

    def _prune_queue(self, heap: list[tuple[float, int, Ref, int]]) -> None:
        while heap and not self._live(heap[0][2], heap[0][3]):
            heapq.heappop(heap)

    def _unpromise(self, woke: tuple[str, int]) -> None:
        _less(self.promised, *woke)

    def _rewake(self, woke: tuple[str, int] | None, queue: str | None = None) -> None:
        """A woken task was parked again elsewhere: the units or the place promised to it go to
        the next one."""
        if woke is not None:
            self._wake_lock(woke[0])
        if queue is not None:
            self._wake_queue(queue)

    def _wake_lock(self, name: str) -> None:
        """Wake the lock's first waiters while its free units suffice for the first."""
        queue = self.lock_waiters.get(name)
        if not queue:
            return
        limit = self.limits.get(name, 1)
        while True:
            self._prune(queue)
            if not queue:
                del self.lock_waiters[name]
                return
            ref, units, _, key = queue[0]
            if self.held.get(name, 0) + self.promised.get(name, 0) + units > limit:
                return
            queue.popleft()
            self.parked.pop(ref, None)
            self.promised[name] = self.promised.get(name, 0) + units
            self.woken[ref] = (name, units)
            self.requeue(ref, key)

    def _wake_group(self, key: GroupKey) -> None:
        queue = self.group_waiters.get(key)
        while queue:
            ref, token, at = queue.popleft()
            if self._live(ref, token):
                self.parked.pop(ref, None)
                self.group_woken[ref] = key
                self.requeue(ref, at)
                break
        if not queue:
            self.group_waiters.pop(key, None)

    def _wake_queue(self, name: str) -> None:
        """Wake the queue's best waiters (by their ready-queue key) while it has free places."""
        heap = self.queue_waiters.get(name)
        if not heap or name in self.queue_paused:
            return
        limit = self.queues.get(name, 1)
        running, promised = self.queue_running, self.queue_promised
        while heap:
            key, _, ref, token = heap[0]
            if not self._live(ref, token):
                heapq.heappop(heap)
                continue
            if running.get(name, 0) + promised.get(name, 0) >= limit:
                return
            heapq.heappop(heap)
            self.parked.pop(ref, None)
            promised[name] = promised.get(name, 0) + 1
            self.queue_woken[ref] = name
            self.requeue(ref, key)
        del self.queue_waiters[name]


K = TypeVar("K")


def _less(counts: dict[K, int], key: K, n: int) -> None:
    """Take ``n`` from a count, dropping it at 0 (a running, held, promised or queue count)."""
    left = counts.get(key, 0) - n
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
