"""The ready queue: priority first, first in first out within a priority, no starvation.

Each entry's key is ``enqueued_at + rank * aging``, where ``rank`` is 0 for
``critical`` up to 4 for ``batch``. Among tasks that became ready at about the
same time, the higher priority goes first, and within one priority the order
of arrival is kept. A lower-priority task is overtaken only by higher-priority
tasks that arrived less than ``(rank difference) * aging`` seconds after it, so
however steady a stream of high-priority work is, a ``batch`` task waits at
most ``4 * aging`` seconds for its turn at a free slot.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from procpool.contract.tree import PRIORITIES

RANK = {name: i for i, name in enumerate(PRIORITIES)}
T = TypeVar("T", bound=Hashable)


class ReadyQueue(Generic[T]):
    """A priority queue with aging; removal is lazy (entries are skipped when popped).

    Items pushed together (:meth:`push_many`: the tasks a completion made ready, or a whole big
    group at the start of a run) share one heap entry and keep their order in it, so a job of
    20,000 tasks costs one heap push, not 20,000. Each item remembers the entry it is live in;
    an item pushed again (a retry) or discarded is skipped where it was before.
    """

    def __init__(self, aging: float = 30.0) -> None:
        self.aging = aging
        #: [key, seq, items, next position, rank]: ordered by (key, seq), seq is unique
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._live: dict[T, int] = {}
        #: the key of the entry :meth:`pop` last returned an item of (core.gates parks a task with
        #: it, and puts it back with it: see :meth:`push_at`)
        self.last_key = 0.0

    def push(self, item: T, priority: str, now: float) -> None:
        self.push_many([item], priority, now)

    def push_many(self, items: list[T], priority: str, now: float) -> None:
        """Queue ``items`` in this order, all with ``priority`` (the list is kept: do not change it)."""
        if not items:
            return
        seq = next(self._seq)
        self._live.update(dict.fromkeys(items, seq))
        rank = RANK[priority]
        heapq.heappush(self._heap, [now + rank * self.aging, seq, items, 0, rank])

    def push_at(self, item: T, key: float, rank: int) -> None:
        """Queue ``item`` again with the ``key`` it had (a task that waited for a limit, a queue or
        a lock keeps its place in the order: the time it waited counts for its aging)."""
        seq = next(self._seq)
        self._live[item] = seq
        heapq.heappush(self._heap, [key, seq, [item], 0, rank])

    def discard(self, item: T) -> None:
        self._live.pop(item, None)

    def pop(self) -> T | None:
        heap, live = self._heap, self._live
        while heap:
            entry = heap[0]
            _, seq, items, pos, _ = entry
            end = len(items)
            while pos < end:
                item: T = items[pos]
                pos += 1
                if live.get(item) == seq:
                    del live[item]
                    self.last_key = entry[0]
                    if pos == end:
                        heapq.heappop(heap)
                    else:
                        entry[3] = pos  # (not part of the ordering key)
                    return item
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[T]:
        """The items queued, in no particular order (``procctl metrics`` counts them by priority)."""
        return iter(self._live)

    def __contains__(self, item: object) -> bool:
        return item in self._live

    def where(self, targets: set[T]) -> dict[T, Place]:
        """Where each of ``targets`` that is queued stands: what :meth:`pop` would return before
        it, by priority rank, and when it was queued (see :class:`Place`).

        For ``procctl explain``, not for the scheduler's own use: it walks the queue in pop order
        (the heap's entries sorted, and their live items) up to the last target, O(entries log
        entries + items before it). Changes nothing.
        """
        found: dict[T, Place] = {}
        wanted = {t for t in targets if t in self._live}
        if not wanted:
            return found
        live = self._live
        ahead = [0] * len(RANK)
        position = 0
        for key, seq, items, pos, rank in sorted(self._heap, key=lambda e: (e[0], e[1])):
            for item in itertools.islice(items, pos, None):
                if live.get(item) != seq:
                    continue
                if item in wanted:
                    found[item] = Place(position, tuple(ahead), rank, key - rank * self.aging)
                    if len(found) == len(wanted):
                        return found
                ahead[rank] += 1
                position += 1
        return found


class Place(NamedTuple):
    """Where a queued item stands (:meth:`ReadyQueue.where`)."""

    #: how many queued items :meth:`ReadyQueue.pop` returns before it
    position: int
    #: of those, how many at each priority rank (0: critical ... 4: batch)
    ahead: tuple[int, ...]
    #: its own priority rank
    rank: int
    #: when it was queued (the time given to push, the scheduler's monotonic clock)
    queued_at: float
