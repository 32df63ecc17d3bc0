"""A repeating job keeps the summaries of its latest runs only: a job repeated for ever must not
grow the daemon's memory, and the row rewritten at each run, with its history."""

from __future__ import annotations

import pytest

from procpool.contract.tree import parse_job
from procpoold.core.jobs import KEPT_RUNS, Job

pytestmark = pytest.mark.unit


def test_a_job_repeated_for_ever_keeps_only_its_latest_runs() -> None:
    job = Job("1", parse_job({"name": "r", "repeat": "forever", "root": {"cmd": ["true"]}}), {}, 0.0)
    for run in range(1, KEPT_RUNS * 3):
        effects = job.start_run(float(run))
        job.mark_running(effects.ready[0], f"1.0@{run}#1", float(run))
        assert job.complete(0, float(run)).run_finished
        assert job.finish_run(float(run)) is True
    assert len(job.runs) == KEPT_RUNS
    assert job.runs[-1]["run"] == KEPT_RUNS * 3 - 1 and job.run == KEPT_RUNS * 3
    assert len(job.dump()["runs"]) == KEPT_RUNS
