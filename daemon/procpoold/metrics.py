"""Task accounting for ``procctl metrics``, the health verdict and the Prometheus export.

Runs on the daemon's loop thread. Every structure here is bounded, whatever the number of tasks:

- :class:`Durations`: a count, a sum and a histogram of fixed buckets (four per doubling, from
  1 ms to about 37 hours), from which the mean and the p95 are read; the p95 is interpolated in
  its bucket, so it is within one bucket's width (19 %) of the exact value, and never beyond the
  largest duration seen;
- per task name (a trailing number replaced by ``*``: :func:`name_key`), at most :data:`MAX_NAMES`
  names have their own :class:`Durations`; the tasks of every later name are folded into
  :data:`OTHER`;
- :class:`Throughput`: tasks ended per second over the last :data:`THROUGHPUT_SECONDS` seconds,
  one bucket per second in a ring;
- :class:`Window`: whether each of the last N tasks succeeded (the positions of the failures
  among them), for the health verdict's success rate.

The scheduler reports a batch of completions of one job at once (:meth:`TaskMetrics.completed`,
one call per drain of the pool's results) and every other end one task at a time
(:meth:`TaskMetrics.ended`): a completion costs a name lookup, a subtraction and a ``bisect``.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procpoold.core.jobs import TaskRun

log = logging.getLogger("procpoold")

#: Upper bounds (seconds) of the duration buckets: 1 ms * 2 ** (i / 4), up to 2 ** 27 ms (37 h);
#: one more bucket takes everything longer.
BOUNDS: tuple[float, ...] = tuple(0.001 * 2 ** (i / 4) for i in range(4 * 27 + 1))
#: Task names with a histogram of their own; the tasks of later names are counted under OTHER.
MAX_NAMES = 100
OTHER = "(other)"
#: Seconds of per-second throughput kept.
THROUGHPUT_SECONDS = 60
#: The final states a task is counted in (``processed`` is all of them but ``skipped``).
OUTCOMES = ("completed", "failed", "timeout", "cancelled", "skipped")


_DIGITS = "0123456789"


def name_key(name: str) -> str:
    """The name a task's durations are counted under: its own, with a trailing number replaced by
    ``*`` (the tasks of a group, ``root.0`` to ``root.19999``, or ``shard-07``, share one line)."""
    key = name.rstrip(_DIGITS)
    return key + "*" if key != name else name


class Durations:
    """How long the tasks of one name ran: count, sum, largest, and a bounded histogram."""

    __slots__ = ("buckets", "count", "largest", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.largest = 0.0
        self.buckets = [0] * (len(BOUNDS) + 1)

    def add(self, seconds: float) -> None:
        if seconds < 0.0:  # (the wall clock went back between start and end)
            seconds = 0.0
        self.count += 1
        self.total += seconds
        if seconds > self.largest:
            self.largest = seconds
        self.buckets[bisect_right(BOUNDS, seconds)] += 1

    def merge(self, count: int, total: float, largest: float) -> None:
        """Add the count, sum and largest of durations whose buckets were counted already."""
        self.count += count
        self.total += total
        if largest > self.largest:
            self.largest = largest

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1), interpolated in its bucket; None without samples."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                low = BOUNDS[i - 1] if i > 0 else 0.0
                high = BOUNDS[i] if i < len(BOUNDS) else self.largest
                value = low + (high - low) * ((rank - seen) / n)
                return min(value, self.largest)
            seen += n
        return self.largest  # pragma: no cover - rank <= count always finds a bucket

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, tasks at most that long) for each bucket up to the last one used, then
        (inf, count): the buckets of a Prometheus histogram."""
        out: list[tuple[float, int]] = []
        last = max((i for i, n in enumerate(self.buckets) if n), default=-1)
        seen = 0
        for i in range(min(last + 1, len(BOUNDS))):
            seen += self.buckets[i]
            out.append((BOUNDS[i], seen))
        out.append((float("inf"), self.count))
        return out

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean(), "p95": self.quantile(0.95), "max": self.largest,
                "total": self.total}


class Throughput:
    """Tasks ended per second over the last :data:`THROUGHPUT_SECONDS` seconds (a ring)."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.seconds = [-1] * THROUGHPUT_SECONDS
        self.counts = [0] * THROUGHPUT_SECONDS

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        slot = second % THROUGHPUT_SECONDS
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += n

    def series(self, now: float) -> list[int]:
        """Tasks ended in each of the last seconds, oldest first; the last is the current second."""
        current = int(now)
        out = []
        for second in range(current - THROUGHPUT_SECONDS + 1, current + 1):
            slot = second % THROUGHPUT_SECONDS
            out.append(self.counts[slot] if self.seconds[slot] == second else 0)
        return out


class Window:
    """Whether each of the last ``size`` tasks succeeded: the count of tasks ended, and the
    positions of the failures among the last ``size`` (a run of successes costs one addition)."""

    __slots__ = ("ended", "failures", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a window holds at least one task")
        self.size = size
        self.ended = 0
        self.failures: deque[int] = deque()

    def add(self, success: bool, n: int = 1) -> None:
        """``n`` tasks ended, all successful or none."""
        if not success:
            failures = self.failures
            failures.extend(range(max(self.ended, self.ended + n - self.size), self.ended + n))
        self.ended += n
        self._forget()

    def _forget(self) -> None:
        failures, first = self.failures, self.ended - self.size  # positions below first left
        while failures and failures[0] < first:
            failures.popleft()

    @property
    def filled(self) -> int:
        """Tasks in the window."""
        return min(self.ended, self.size)

    @property
    def ok(self) -> int:
        """Successes in the window."""
        return self.filled - len(self.failures)

    def rate(self) -> float | None:
        """Successes over the tasks in the window; None when it is empty."""
        filled = self.filled
        return (filled - len(self.failures)) / filled if filled else None

    def resize(self, size: int) -> None:
        """A new size (a reload): the window starts empty again."""
        self.__init__(size)  # type: ignore[misc]


class TaskMetrics:
    """What the scheduler counts about ended tasks (see the module docstring)."""

    def __init__(self, window: int = 100) -> None:
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.by_name: dict[str, Durations] = {}
        self.other = Durations()
        self.throughput = Throughput()
        self.recent = Window(window)
        #: called (without arguments) after each batch or single end: the daemon arms its export
        self.on_change: Callable[[], None] | None = None

    def durations(self, name: str) -> Durations:
        """The :class:`Durations` of ``name``: its own while there are fewer than MAX_NAMES."""
        found = self.by_name.get(name)
        if found is None:
            if len(self.by_name) >= MAX_NAMES:
                return self.other
            found = self.by_name[name] = Durations()
        return found

    def completed(self, tasks: Sequence[TaskRun], indices: list[int]) -> None:
        """Tasks ``indices`` of one job completed (one batch; each has its ended attempt).

        The hot path: per task a name comparison (a ``rstrip`` when it changed), one subtraction
        and, when the duration differs from the last one's (the attempts of one dispatch pass
        ended in one drain share it), a ``bisect``; the sums are kept in locals and added to the
        name's :class:`Durations` once per run of one name."""
        n = len(indices)
        if not n:
            return
        self.counts["completed"] += n
        bounds, digits = BOUNDS, _DIGITS
        last_name: str | None = None
        last_stem: str | None = None
        last_numbered = False
        durations: Durations | None = None
        buckets: list[int] = []
        first, total, largest = 0, 0.0, 0.0  # (the run of one name started at position ``first``)
        last_took, slot = -1.0, 0
        ended = 0.0
        position = 0
        try:
            for position, i in enumerate(indices):
                t = tasks[i]
                name = t.spec.name
                if name != last_name:  # (each task of a big group has a name of its own: root.1, root.2)
                    last_name = name
                    stem = name.rstrip(digits)
                    numbered = len(stem) != len(name)
                    if stem != last_stem or numbered != last_numbered:  # (name_key, without a new string)
                        if durations is not None:
                            durations.merge(position - first, total, largest)
                        last_stem, last_numbered = stem, numbered
                        durations = self.durations(stem + "*" if numbered else name)
                        buckets, first, total, largest = durations.buckets, position, 0.0, 0.0
                        last_took = -1.0
                # (a completed task's attempt has both times: None would be a TypeError, below)
                attempt = t.attempts[-1]
                ended = attempt.finished_at  # type: ignore[assignment]
                took = ended - attempt.started_at  # type: ignore[operator]
                if took != last_took:
                    last_took = took
                    if took < 0.0:  # (the wall clock went back between start and end)
                        took = last_took = 0.0
                    elif took > largest:
                        largest = took
                    slot = bisect_right(bounds, took)
                buckets[slot] += 1
                total += took
            position += 1
        except (AttributeError, IndexError, TypeError):  # pragma: no cover - not a completion
            log.exception("the durations of %d completed task(s) could not be counted", n)
        if durations is not None:
            durations.merge(position - first, total, largest)
        if ended:
            self.throughput.add(ended, n)
        self.recent.add(True, n)
        if self.on_change is not None:
            self.on_change()

    def ended(self, t: TaskRun) -> None:
        """Task ``t`` reached its final state (any: one at a time)."""
        state = t.state
        if state not in self.counts:
            return
        self.counts[state] += 1
        if state == "skipped":
            return
        attempt = t.attempts[-1] if t.attempts else None
        if attempt is not None and attempt.started_at is not None and attempt.finished_at is not None:
            self.durations(name_key(t.spec.name)).add(attempt.finished_at - attempt.started_at)
        self.throughput.add(t.finished_at or time.time())
        if state != "cancelled":
            self.recent.add(state == "completed")
        if self.on_change is not None:
            self.on_change()

    def processed(self) -> int:
        return sum(n for state, n in self.counts.items() if state != "skipped")

    def success_rate(self) -> float | None:
        """Completed over completed, failed and timed out (cancels are no verdict on the task)."""
        c = self.counts
        judged = c["completed"] + c["failed"] + c["timeout"]
        return c["completed"] / judged if judged else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """The accounting as a map (``procctl metrics``), with the throughput up to ``now``."""
        series = self.throughput.series(now)
        names = {name: d.to_wire() for name, d in self.by_name.items()}
        if self.other.count:
            names[OTHER] = self.other.to_wire()
        return {
            "tasks": {
                **self.counts,
                "processed": self.processed(),
                "succeeded": self.counts["completed"],
                "timed_out": self.counts["timeout"],
                "success_rate": self.success_rate(),
            },
            "recent": {
                "size": self.recent.size, "tasks": self.recent.filled, "success_rate": self.recent.rate(),
            },
            "durations": names,
            "throughput": {
                "seconds": len(series),
                "per_second": series,
                "last_minute": sum(series),
                "rate": sum(series) / len(series),
            },
        }
