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
from collections.abc import Hashable
from typing import Generic, TypeVar

from procpool.contract.tree import PRIORITIES

RANK = {name: i for i, name in enumerate(PRIORITIES)}
T = TypeVar("T", bound=Hashable)


class ReadyQueue(Generic[T]):
    """A priority queue with aging; removal is lazy (entries are skipped when popped)."""

    def __init__(self, aging: float = 30.0) -> None:
        self.aging = aging
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._live: dict[T, int] = {}

    def push(self, item: T, priority: str, now: float) -> None:
        seq = next(self._seq)
        self._live[item] = seq
        heapq.heappush(self._heap, (now + RANK[priority] * self.aging, seq, item))

    def discard(self, item: T) -> None:
        self._live.pop(item, None)

    def pop(self) -> T | None:
        while self._heap:
            _, seq, item = heapq.heappop(self._heap)
            if self._live.get(item) == seq:
                del self._live[item]
                return item
        return None

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, item: object) -> bool:
        return item in self._live
