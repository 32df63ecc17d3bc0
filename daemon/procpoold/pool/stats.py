"""Statistics of the pool: ``info()`` for ``procctl status``, ``workers_info()`` for ``procctl pool``.

Part of :class:`procpoold.pool.pool.PoolExecutor` (a mixin: its methods run on the executor's
state, in the daemon's event-loop thread). Round trip: for each attempt pushed to a worker that
held nothing else, the time from its push to the arrival of its result is kept (the last
:data:`ROUND_TRIP_SAMPLES`), apart for workers that were awake (spinning after their last attempt:
the busy case) and asleep (the push woke them); ``info()`` reports the p50 and p99 of each.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from procpoold.identity import user_name
from procpoold.pool.lifecycle import DEATH_BURST, DEATH_WINDOW
from procpoold.pool.slot import memory_info, read_peak_rss
from procpoold.pool.state import PoolState


class Statistics(PoolState):
    """What the pool reports about itself; reads the executor's state, changes nothing."""

    def info(self) -> dict[str, Any]:
        """Summary for ``procctl status``."""
        states: dict[str, int] = {}
        for w in self._slots.values():
            key = w.state.value if w is not None else "refilling"
            states[key] = states.get(key, 0) + 1
        return {
            "executor": self.name,
            "workers": self._target,
            "states": states,
            "running": len(self._where),
            "queued": len(self._pending),
            "free_slots": self.free_slots(),
            "broken": self._broken,
            # worker deaths in the last DEATH_WINDOW s: as many as DEATH_BURST is a crash loop
            "recent_deaths": sum(1 for t in self._deaths if t >= time.monotonic() - DEATH_WINDOW),
            "crash_loop_deaths": DEATH_BURST,
            **self._stats,
            "round_trip": _percentiles(self._round_trips),
            "round_trip_woken": _percentiles(self._woken_trips),
        }

    def workers_info(self) -> list[dict[str, Any]]:
        """One map per worker process (slotted or leaving): slot, pid, state, attempts, memory, age."""
        now = time.monotonic()
        out = []
        for w in sorted(self._all, key=lambda w: (w.slot, w.gen)):
            uid = os.geteuid() if w.user is None else w.user.uid
            out.append({
                "slot": w.slot,
                "pid": w.pid,
                "uid": uid,
                "user": user_name(uid) if w.user is None else w.user.name,
                "job_id": w.job,
                "state": w.state.value,
                "attempts": [{"attempt_id": aid, "task_name": r.spec.task_name}
                             for aid, r in w.running.items()],
                "tasks_done": w.tasks_done,
                "busy_time": w.busy_time,
                "peak_rss": read_peak_rss(w.pid) if w.pid is not None else None,
                "age": now - w.spawned_at,
                "retiring": w.retire or self._slots.get(w.slot) is not w,
                "log_paused": w.log_paused,
                **memory_info(w.pid),
            })
        return out


def _percentiles(seconds: deque[float]) -> dict[str, float | int | None]:
    samples = sorted(seconds)
    n = len(samples)
    if not n:
        return {"samples": 0, "p50_us": None, "p99_us": None}
    return {
        "samples": n,
        "p50_us": round(samples[n // 2] * 1e6, 1),
        "p99_us": round(samples[min(n - 1, n * 99 // 100)] * 1e6, 1),
    }
