"""Without a state store (``store = false``) retention still bounds the finished jobs kept (in
memory, then: there is nowhere else to keep them)."""

from __future__ import annotations

import pytest

from procpoold.engines import Outcome
from tests.unit.daemon.test_scheduler import make

pytestmark = pytest.mark.unit


def test_retention_count_applies_without_a_store() -> None:
    loop, executor, scheduler = make(slots=10)
    scheduler.retention_count = 2
    ids = []
    for _ in range(5):
        job, _ = scheduler.submit({"name": "j", "key": f"k{len(ids)}", "root": {"cmd": ["true"]}}, uid=5)
        ids.append(job.id)
        loop.run_once(0)
        spec = executor.submitted[-1]
        executor.running.discard(spec.attempt_id)
        scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
        loop.run_once(0)
    assert list(scheduler.finished) == ids[-2:]
    assert sorted(scheduler.jobs) == sorted(ids[-2:])
    assert len(scheduler.keys) == 2
    assert scheduler.by_state() == {"completed": 2}
