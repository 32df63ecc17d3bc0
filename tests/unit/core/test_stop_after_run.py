"""``procctl stop``: a repeating job ends after its current run, and says so after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.tree import parse_job
from procpoold.core.jobs import Job

pytestmark = pytest.mark.unit


def make(root: Any, **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, now=0.0)


def one_run(job: Job, ok: bool, at: float) -> bool:
    job.start_run(at)
    job.mark_running(0, f"a#{job.run}", at)
    if ok:
        job.complete(0, at + 1)
    else:
        job.end_unsuccessfully(0, "failed", at + 1, {"type": "E", "message": "no", "traceback": ""})
    return job.finish_run(at + 2)


def test_a_stopped_forever_job_ends_with_its_current_run() -> None:
    job = make({"name": "a", "cmd": ["x"]}, repeat="forever")
    assert one_run(job, True, 0) is True and job.run == 2
    job.stop_requested = True
    assert one_run(job, True, 10) is False
    assert job.state == "completed" and job.run == 2 and len(job.runs) == 2


def test_a_stopped_job_whose_last_run_failed_ends_failed() -> None:
    job = make({"name": "a", "cmd": ["x"]}, repeat=5)
    job.stop_requested = True
    assert one_run(job, False, 0) is False and job.state == "failed"


def test_the_stop_is_stored_with_the_job_and_only_when_set() -> None:
    job = make({"name": "a", "cmd": ["x"]}, repeat="forever")
    assert "stop_requested" not in job.dump()
    job.stop_requested = True
    data = job.dump()
    assert data["stop_requested"] is True
    again = make({"name": "a", "cmd": ["x"]}, repeat="forever")
    again.load(data, [])
    assert again.stop_requested and not make({"name": "a", "cmd": ["x"]}).stop_requested
    old = dict(data)
    del old["stop_requested"]  # a job stored before the field existed
    older = make({"name": "a", "cmd": ["x"]}, repeat="forever")
    older.load(old, [])
    assert not older.stop_requested
