"""Nodes that cycle on their own clock: a group or task with its own ``repeat`` / ``every``.

A *cycle* of such a node ends when every task inside it completed. If the node has cycles left
(and the job is not cancelled, not stopped, and not stopping after a failure), its tasks go back to
``pending`` and its next cycle starts: at once (from the scheduler's loop, right after the
completion is recorded), or ``every`` seconds after the cycle ended. The node *waits* meanwhile:
its tasks stay ``completed`` with the last cycle's results, and the scheduler's loop timer calls
:meth:`CyclingJob.cycle_due`. Its siblings are neither waited for
nor touched. The node counts as complete (for what depends on it, the sequential order, its parent
group) only after its last cycle; with ``repeat: "forever"`` never. A task that fails (after its
retries), times out or is cancelled ends the cycling of every node it is in: the node never
completes, and the failure propagates as it does in any job.

Nested nodes: an inner node cycles within each cycle of an outer one; when the outer node starts a
new cycle, the inner node's counter starts again at 1. A job-level run (the job's ``repeat``) starts
every node at cycle 1.

Only a job whose tree has such a node is a :class:`CyclingJob` (``Job(...)`` makes one: see
``Job.__new__``); every other job runs the plain :class:`~procpoold.core.jobs.Job` code, which
knows nothing of cycles and pays nothing for them.

The invariants of :class:`~procpoold.core.jobs.Job` this keeps: a task leaves a final state within a
run only when its node starts a new cycle, and then ``_scan`` is moved back to it; the node's
groups' ``_group_left`` and its tasks' ``waiting`` are set again as at the start of a run; what a
cycle makes ready is in :attr:`Effects.ready`, and every task a cycle reset, in
:attr:`Effects.cycled` (not None whenever a node began to wait: the scheduler writes the tasks and
the job's row, and arms the timers of waiting nodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from procpoold.core.jobs import _KEPT, _REASONS, Effects, Job, Node, RetryRefused
from procpoold.core.states import TaskState

#: Cycling nodes an explain of a job lists (each on a line).
NODES_EXPLAINED = 10
#: How a node is named in the stored state: "t" task, "g" group.
_KIND_CODES = {"task": "t", "group": "g"}
_CODE_KINDS = {"t": "task", "g": "group"}


class CyclingJob(Job):
    """A job with at least one node that cycles on its own clock (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.spec
        #: node -> (repeat (None: forever), every (None: at once))
        self.cycling: dict[Node, tuple[int | None, float | None]] = dict(spec.cycles)
        #: node -> its current cycle (1 for the first); kept at the last cycle once it completed
        self.cycle: dict[Node, int] = dict.fromkeys(self.cycling, 1)
        #: node -> when its next cycle starts (wall clock), while it waits for it (``every``)
        self.waits: dict[Node, float] = {}
        #: the cycling nodes in tree order (core.status sorts them at its first status of the job)
        self.ordered: list[Node] | None = None
        #: node -> the tasks inside it, in index order
        self.members: dict[Node, list[int]] = {}
        #: node -> every node inside it (tasks and groups), itself excluded
        self.inside: dict[Node, set[Node]] = {}
        #: node -> the groups inside it, itself included when a group (their counters reset)
        self.inner_groups: dict[Node, list[int]] = {}
        groups = spec.groups
        for node in self.cycling:
            if node[0] == "task":
                self.members[node], self.inside[node], self.inner_groups[node] = [node[1]], set(), []
                continue
            members: list[int] = []
            inside: set[Node] = set()
            inner: list[int] = [node[1]]
            stack = list(groups[node[1]].children)
            while stack:
                child = stack.pop()
                inside.add(child)
                if child[0] == "task":
                    members.append(child[1])
                else:
                    inner.append(child[1])
                    stack.extend(groups[child[1]].children)
            members.sort()
            self.members[node], self.inside[node], self.inner_groups[node] = members, inside, inner
        #: node -> the cycling nodes inside it (their counters start again with each of its cycles);
        #: found up from each node through its groups: O(nodes x depth), not O(nodes^2)
        self.inner_cycling: dict[Node, list[Node]] = {node: [] for node in self.cycling}
        for node in self.cycling:
            g = self._parent(node)
            while g is not None:
                outer = self.inner_cycling.get(("group", g))
                if outer is not None:
                    outer.append(node)
                g = groups[g].parent

    def cycle_stamp(self, index: int) -> str:
        """The cycles task ``index`` is in, outermost first (``"3.1"``), or "" for a task in no
        cycling node: with the run, it makes each attempt id unique across cycles (an engine may
        key its work by it: Dask does), and it survives a restart (the cycles are stored)."""
        node: Node = ("task", index)
        stamp: list[int] = []
        if node in self.cycling:
            stamp.append(self.cycle[node])
        g = self.spec.tasks[index].parent
        groups = self.spec.groups
        while g is not None:
            n = self.cycle.get(("group", g))
            if n is not None:
                stamp.append(n)
            g = groups[g].parent
        return ".".join(map(str, reversed(stamp)))

    # -- names --------------------------------------------------------------------------------

    def node_name(self, node: Node) -> str:
        spec = self.spec.tasks[node[1]] if node[0] == "task" else self.spec.groups[node[1]]
        return spec.name

    def node_words(self, node: Node) -> str:
        """``group "fast"``, ``task "poll"``."""
        return f'{node[0]} "{self.node_name(node)}"'

    def _parent(self, node: Node) -> int | None:
        if node[0] == "task":
            return self.spec.tasks[node[1]].parent
        return self.spec.groups[node[1]].parent

    # -- the run ------------------------------------------------------------------------------

    def complete(
        self,
        index: int,
        now: float,
        result: Any = None,
        exit_code: int | None = None,
        into: Effects | None = None,
    ) -> Effects:
        t = self.tasks[index]
        t.move("completed")
        t.finished_at = now
        t.result, t.exit_code, t.error = result, exit_code, None
        if into is None:
            effects = Effects(finished_tasks=[index])
        else:
            effects = into
            effects.finished_tasks.append(index)
        self._ended(("task", index), now, effects, cycles=True)
        self._check_run_finished(effects)
        return effects

    def _ended(self, node: Node, now: float, effects: Effects, cycles: bool) -> None:
        """Every task inside ``node`` completed: start its next cycle (or wait for it) if it has
        one (``cycles``), else it is complete: release what waits on it, and go up to its parent
        group, which may be complete (or end a cycle) in turn."""
        cycling = self.cycling
        left = self._group_left
        while True:
            if cycles and node in cycling and self._next_cycle(node, now, effects):
                return
            cycles = True
            self._node_complete(node, effects)
            parent = self._parent(node)
            if parent is None:
                return
            left[parent] -= 1
            if left[parent] > 0:
                return
            node = ("group", parent)

    def _more_cycles(self, node: Node) -> bool:
        """Whether ``node`` may start another cycle now: cycles left, and the job not cancelled,
        not stopped (``procctl stop``) and not stopping after a failure (``on_failure: stop``)."""
        repeat = self.cycling[node][0]
        if repeat is not None and self.cycle[node] >= repeat:
            return False
        if self.cancel_requested or self.stop_requested:
            return False
        counts = self._counts
        return not (self.spec.on_failure == "stop" and (counts["failed"] or counts["timeout"]))

    def _next_cycle(self, node: Node, now: float, effects: Effects) -> bool:
        """A cycle of ``node`` ended: it waits for its next (True), or that was its last (False:
        the node is complete). The wait is ``every`` seconds, else none: the next cycle starts
        from the scheduler's loop (its timer), never inside this completion, so the completion is
        recorded as such first."""
        if not self._more_cycles(node):
            return False
        self.waits[node] = now + (self.cycling[node][1] or 0.0)
        if effects.cycled is None:
            effects.cycled = []
        return True

    def _restart(self, node: Node, effects: Effects) -> None:
        """Start the next cycle of ``node``: its tasks pending again (as at the start of a run),
        those with nothing left to wait for inside it ready; the cycling nodes inside it start at
        cycle 1."""
        self.cycle[node] += 1
        for n in self.inner_cycling[node]:
            self.cycle[n] = 1
            self.waits.pop(n, None)
        groups = self.spec.groups
        left = self._group_left
        for g in self.inner_groups[node]:
            left[g] = len(groups[g].children)
        reasons = _REASONS.get(self)
        kept = _KEPT.get(self)
        tasks, blockers, inside = self.tasks, self._blockers, self.inside[node]
        members = self.members[node]
        for i in members:
            t = tasks[i]
            t.reset()
            if reasons is not None:
                reasons.note(i, 0)
            if kept:
                kept.pop(i, None)
            # Its blockers outside the node completed before this cycle began (else it could not
            # have run), and nothing outside completes again without restarting this node too.
            t.waiting = sum(1 for b in blockers[i] if b in inside)
        for i in members:
            t = tasks[i]
            if t.waiting == 0:
                t.move("ready")
                effects.ready.append(i)
        self._scan = min(self._scan, members[0])
        assert effects.cycled is not None
        effects.cycled += members

    def cycle_due(self, node: Node, now: float) -> Effects | None:
        """The wait of ``node`` for its next cycle ran out (the scheduler's timer): start it, or
        (stopped, cancelled, or stopping after a failure meanwhile) complete the node. None: it
        does not wait, or not until later (a clock set back)."""
        when = self.waits.get(node)
        if when is None or now < when:
            return None
        del self.waits[node]
        effects = Effects(cycled=[])
        if self._more_cycles(node):
            self._restart(node, effects)
        else:
            self._ended(node, now, effects, cycles=False)
        self._check_run_finished(effects)
        return effects

    def stop_cycles(self, now: float) -> Effects:
        """``procctl stop``: every node waiting for its next cycle is complete now (its last cycle
        ended); the nodes in a cycle end with it (see :meth:`_more_cycles`)."""
        effects = Effects(cycled=[])
        for node in list(self.waits):
            if node in self.waits:  # (an outer node's completion may not touch it, but be sure)
                del self.waits[node]
                self._ended(node, now, effects, cycles=False)
        self._check_run_finished(effects)
        return effects

    def _check_run_finished(self, effects: Effects) -> None:
        if self.waits:  # a node waits for its next cycle: the run goes on
            return
        super()._check_run_finished(effects)

    def cancel(
        self, now: float, indices: list[int] | None = None, reason: str = "cancelled by request"
    ) -> Effects:
        if indices is None and self.waits:  # no next cycle: the waiting nodes end where they are
            self.waits.clear()
        return super().cancel(now, indices, reason)

    def end_unsuccessfully(
        self,
        index: int,
        state: TaskState,
        now: float,
        error: dict[str, str] | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> Effects:
        if self.waits and self.spec.on_failure == "stop" and state != "cancelled":
            # The job stops: a waiting node starts no next cycle; what waits on it is cancelled.
            self.waits.clear()
        return super().end_unsuccessfully(index, state, now, error, exit_code, reason)

    def start_run(self, now: float) -> Effects:
        for node in self.cycle:
            self.cycle[node] = 1
        self.waits.clear()
        effects = super().start_run(now)
        effects.cycled = []  # (the job's row holds the cycles: written with the run's start)
        return effects

    def _rebuild(self) -> None:
        """As :meth:`Job._rebuild`, but a node waiting for its next cycle is not complete."""
        held = self.waits
        self._scan = 0
        complete: set[Node] = {
            ("task", t.spec.index) for t in self.tasks
            if t.state == "completed" and ("task", t.spec.index) not in held
        }
        self._complete = complete
        self._group_left = [len(g.children) for g in self.spec.groups]
        for g in reversed(self.spec.groups):
            left = sum(1 for child in g.children if child not in complete)
            self._group_left[g.index] = left
            if left == 0 and ("group", g.index) not in held:
                complete.add(("group", g.index))
        for t in self.tasks:
            t.waiting = sum(1 for b in self._blockers[t.spec.index] if b not in complete)

    def retry_plan(self, chosen: list[int] | None = None) -> list[int]:
        if self.waits:  # (a finished job waits for nothing; kept for a job read back oddly)
            raise RetryRefused(f"job {self.id} waits for a cycle: it has not finished")
        return super().retry_plan(chosen)

    # -- persistence --------------------------------------------------------------------------

    def cycles_dump(self) -> list[list[Any]]:
        """``[kind, index, cycle, next cycle at or None]`` per node past its first cycle or waiting."""
        waits = self.waits
        return [
            [_KIND_CODES[node[0]], node[1], cycle, waits.get(node)]
            for node, cycle in self.cycle.items()
            if cycle > 1 or node in waits
        ]

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        cycles = self.cycles_dump()
        if cycles:
            out["cycles"] = cycles
        return out

    def load(self, data: dict[str, Any], entries: list[Any]) -> None:
        super().load(data, entries)
        for item in data.get("cycles") or ():
            if not (isinstance(item, list) and len(item) == 4 and item[0] in _CODE_KINDS
                    and type(item[1]) is int and type(item[2]) is int and item[2] >= 1):
                raise ValueError(f"node cycle {str(item)[:64]} is not [kind, index, cycle, time]")
            node: Node = (_CODE_KINDS[item[0]], item[1])
            if node not in self.cycling:
                raise ValueError(f"node cycle {str(item)[:64]}: no such repeating node in the job")
            repeat = self.cycling[node][0]
            if repeat is not None and item[2] > repeat:
                raise ValueError(f"node cycle {str(item)[:64]}: more than its repeat ({repeat})")
            when = item[3]
            if when is not None and not (type(when) in (int, float) and math.isfinite(when)):
                raise ValueError(f"next cycle time {str(when)[:64]} is not a time")
            self.cycle[node] = item[2]
            if when is not None:
                self.waits[node] = float(when)

    # -- status -------------------------------------------------------------------------------

    # -- explain ------------------------------------------------------------------------------

    def cycle_words(self, node: Node, clock: Callable[[float], str]) -> str:
        """``cycle 2 of 5`` (``cycle 7`` for ever), and ``, waits for cycle 3 at 14:03:07`` while it waits."""
        repeat = self.cycling[node][0]
        cycle = self.cycle[node]
        words = f"cycle {cycle}" + ("" if repeat is None else f" of {repeat}")
        when = self.waits.get(node)
        if when is not None:
            words += f", waits for cycle {cycle + 1} at {clock(when)}"
        return words

    def explain_lines(self, index: int | None, clock: Callable[[float], str]) -> list[str]:
        """For explain: of a task (``index``), the next cycle it waits for (the innermost waiting
        node around it); of the job (None), a line per cycling node."""
        if index is None:
            lines = [f"{self.node_words(node)}: {self.cycle_words(node, clock)}"
                     for node in list(self.cycling)[:NODES_EXPLAINED]]
            if len(self.cycling) > NODES_EXPLAINED:
                lines.append(f"and {len(self.cycling) - NODES_EXPLAINED} more groups or tasks with their "
                             "own repeat or every (procctl status lists each)")
            return lines
        found: Node | None = None
        for node in self.waits:
            if index in self.members[node] and (
                found is None or len(self.members[node]) < len(self.members[found])
            ):
                found = node
        if found is None:
            return []
        return [f"waits for the next cycle of {self.node_words(found)} at {clock(self.waits[found])} "
                f"(cycle {self.cycle[found] + 1}"
                + ("" if self.cycling[found][0] is None else f" of {self.cycling[found][0]}") + ")"]
