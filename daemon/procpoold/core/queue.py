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
from typing import Any, Generic, TypeVar

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
        #: [key, seq, items, next position]: ordered by (key, seq), seq is unique
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._live: dict[T, int] = {}

    def push(self, item: T, priority: str, now: float) -> None:
        self.push_many([item], priority, now)

    def push_many(self, items: list[T], priority: str, now: float) -> None:
        """Queue ``items`` in this order, all with ``priority`` (the list is kept: do not change it)."""
        if not items:
            return
        seq = next(self._seq)
        self._live.update(dict.fromkeys(items, seq))
        heapq.heappush(self._heap, [now + RANK[priority] * self.aging, seq, items, 0])

    def discard(self, item: T) -> None:
        self._live.pop(item, None)

    def pop(self) -> T | None:
        heap, live = self._heap, self._live
        while heap:
            entry = heap[0]
            _, seq, items, pos = entry
            end = len(items)
            while pos < end:
                item: T = items[pos]
                pos += 1
                if live.get(item) == seq:
                    del live[item]
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
