"""A retry of a finished job (Job.retry_plan, Job.retry): what runs again, what is kept, for each
group shape, depends_on, on_failure, and across a dump and load (a restart mid-retry)."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.tree import parse_job
from procpoold.core.jobs import Job, RetryRefused, kept_ranges

pytestmark = pytest.mark.unit


def make(root: Any, **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, now=0.0)


def names(job: Job, indices: list[int]) -> list[str]:
    return [job.tasks[i].spec.name for i in indices]


def t(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cmd": ["x"], **extra}


def play(job: Job, outcome: dict[str, str], now: float = 1.0) -> None:
    """Run the job's ready tasks until its run finishes: each completes with result ``name``, or
    ends as ``outcome`` says (``failed``, ``timeout``); then finish the run."""
    ready = list(job.start_run(now).ready) if job.state == "pending" else []
    play_ready(job, ready, outcome, now)


def play_ready(job: Job, ready: list[int], outcome: dict[str, str], now: float = 1.0) -> None:
    finished = False
    while ready:
        i = ready.pop(0)
        if job.tasks[i].state != "ready":
            continue
        name = job.tasks[i].spec.name
        job.mark_running(i, f"{name}@{job.run}#1", now)
        end = outcome.get(name)
        if end is None:
            effects = job.complete(i, now, result=f"{name}-{job.run}")
        else:
            effects = job.end_unsuccessfully(i, end, now, {"type": "E", "message": "x", "traceback": ""})  # type: ignore[arg-type]
        ready += effects.ready
        finished = finished or effects.run_finished
    assert finished, {x.spec.name: x.state for x in job.tasks}
    assert job.finish_run(now) is False


def states(job: Job) -> dict[str, str]:
    return {x.spec.name: x.state for x in job.tasks}


def test_sequential_failed_step_and_its_skipped_successors_run_again() -> None:
    job = make({"sequential": [t("a"), t("b"), t("c"), t("d")]})
    play(job, {"b": "failed"})
    assert states(job) == {"a": "completed", "b": "failed", "c": "skipped", "d": "skipped"}
    assert job.state == "failed"
    again = job.retry_plan()
    assert names(job, again) == ["b", "c", "d"]
    effects = job.retry(5.0, again)
    assert names(job, effects.ready) == ["b"]
    assert job.run == 2 and job.state == "running" and job.finished_at is None
    assert job.kept == {0: 1}
    assert job.tasks[0].result == "a-1" and job.tasks[0].state == "completed"
    assert states(job)["c"] == "pending" and job.tasks[1].attempts == []
    play_ready(job, effects.ready, {})
    assert job.state == "completed"
    assert [x.result for x in job.tasks] == ["a-1", "b-2", "c-2", "d-2"]
    assert job.runs[-1]["run"] == 2 and job.runs[-1]["kept"] == 1


def test_concurrent_group_runs_only_what_did_not_complete() -> None:
    job = make({"concurrent": [t("a"), t("b"), t("c")]}, on_failure="continue")
    play(job, {"b": "timeout"})
    again = job.retry_plan()
    assert names(job, again) == ["b"]
    effects = job.retry(5.0, again)
    assert names(job, effects.ready) == ["b"]
    play_ready(job, effects.ready, {})
    assert job.state == "completed" and job.kept == {0: 1, 2: 1}


def test_on_failure_stop_cancelled_tasks_run_again() -> None:
    job = make({"concurrent": [t("a"), {"sequential": [t("b"), t("c")]}, t("d")]})
    # a fails first; b, c and d never started: cancelled by the stop
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.end_unsuccessfully(0, "failed", 1.0)
    assert job.finish_run(1.0) is False
    assert states(job) == {"a": "failed", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    again = job.retry_plan()
    assert names(job, again) == ["a", "b", "c", "d"]
    effects = job.retry(2.0, again)
    assert sorted(names(job, effects.ready)) == ["a", "b", "d"]
    assert job.kept is None  # nothing had completed


def test_depends_on_a_completed_upstream_counts_as_done() -> None:
    job = make(
        {"concurrent": [t("up"), t("mid", depends_on=["up"]), t("down", depends_on=["mid", "up"])]},
    )
    play(job, {"mid": "failed"})
    assert states(job) == {"up": "completed", "mid": "failed", "down": "skipped"}
    effects = job.retry(2.0, job.retry_plan())
    assert names(job, effects.ready) == ["mid"]
    job.mark_running(job.by_name["mid"], "mid@2#1", 3.0)
    assert names(job, job.complete(job.by_name["mid"], 3.0).ready) == ["down"]


def test_depends_on_a_group_waits_for_its_retried_member() -> None:
    job = make({"concurrent": [
        {"name": "g", "concurrent": [t("x"), t("y")]},
        t("after", depends_on=["g"]),
    ]}, on_failure="continue")
    play(job, {"y": "failed"})
    assert states(job) == {"x": "completed", "y": "failed", "after": "skipped"}
    effects = job.retry(2.0, job.retry_plan())
    assert names(job, effects.ready) == ["y"]
    job.mark_running(job.by_name["y"], "y", 3.0)
    assert names(job, job.complete(job.by_name["y"], 3.0).ready) == ["after"]


def test_retries_count_anew_in_the_new_run() -> None:
    job = make({"sequential": [t("a", retries=1)]})
    job.start_run(0.0)
    job.mark_running(0, "a@1#1", 1.0)
    job.retry_later(0, 2.0)
    assert job.retry_due(0)
    job.mark_running(0, "a@1#2", 2.0)
    job.end_unsuccessfully(0, "failed", 2.0)
    job.finish_run(2.0)
    assert job.tasks[0].failures == 2
    job.retry(3.0, job.retry_plan())
    assert job.tasks[0].failures == 0 and job.tasks[0].error is None
    assert job.mark_running(0, "a@2#1", 4.0).number == 1


def test_task_narrows_to_it_and_its_unfinished_downstream() -> None:
    job = make({"concurrent": [
        {"sequential": [t("a"), t("b")]},
        {"sequential": [t("c"), t("d")]},
    ]}, on_failure="continue")
    play(job, {"a": "failed", "c": "failed"})
    assert states(job) == {"a": "failed", "b": "skipped", "c": "failed", "d": "skipped"}
    again = job.retry_plan([job.by_name["a"]])
    assert names(job, again) == ["a", "b"]
    effects = job.retry(2.0, again)
    play_ready(job, effects.ready, {})
    # c and d keep their final state: the job still failed
    assert states(job) == {"a": "completed", "b": "completed", "c": "failed", "d": "skipped"}
    assert job.state == "failed"
    # ... and a second retry runs the rest, keeping a and b from run 2
    effects = job.retry(3.0, job.retry_plan())
    play_ready(job, effects.ready, {})
    assert job.state == "completed" and job.run == 3
    assert job.kept == {0: 2, 1: 2}


def test_task_refusals() -> None:
    job = make({"sequential": [t("a"), t("b"), t("c")]})
    play(job, {"b": "failed"})
    with pytest.raises(RetryRefused, match=r'task 1\.0 "a" completed'):
        job.retry_plan([0])
    refused = r'"c" waits on task 1\.1 "b", which failed and is not retried'
    with pytest.raises(RetryRefused, match=refused) as info:
        job.retry_plan([2])
    assert info.value.hint is not None and "--task b" in info.value.hint
    assert job.state == "failed" and job.run == 1  # nothing changed


def test_a_completed_job_has_nothing_to_retry() -> None:
    job = make({"sequential": [t("a")]})
    play(job, {})
    with pytest.raises(RetryRefused, match="nothing to retry"):
        job.retry_plan()


def test_cancelled_job_is_retried_with_its_cancel_forgotten() -> None:
    job = make({"sequential": [t("a"), t("b")]})
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.complete(0, 1.0)
    effects = job.cancel(2.0, reason="cancelled by alice")
    assert effects.run_finished
    job.finish_run(2.0)
    assert job.state == "cancelled" and job.cancel_requested
    effects = job.retry(3.0, job.retry_plan())
    assert not job.cancel_requested and job.reason is None
    play_ready(job, effects.ready, {})
    assert job.state == "completed"


def test_kept_tasks_survive_a_dump_and_load_mid_retry() -> None:
    """The store's view of a retried run: a restart in its middle restores what was kept, and
    recovery carries on like any run."""
    doc = {"name": "j", "root": {"sequential": [t("a"), t("b"), t("c")]}}
    job = Job("1", parse_job(doc), doc, now=0.0)
    play(job, {"b": "failed"})
    effects = job.retry(2.0, job.retry_plan())
    job.mark_running(effects.ready[0], "b@2#1", 3.0)
    data = job.dump()
    assert data["kept"] == [[1, 0, 1]]
    entries = [job.full_entry(i) for i in range(3)]
    again = Job("1", parse_job(doc), doc, now=0.0)
    again.load(data, entries)
    assert again.run == 2 and again.kept == {0: 1}
    recovered, interrupted = again.recover(4.0)
    assert len(interrupted) == 1 and names(again, recovered.ready) == ["b"]
    play_ready(again, recovered.ready, {})
    assert again.state == "completed" and again.tasks[0].result == "a-1"


def test_kept_ranges_are_compact_and_load_checks_them() -> None:
    assert kept_ranges({0: 1, 1: 1, 2: 1, 5: 1, 6: 2}) == [[1, 0, 3], [1, 5, 1], [2, 6, 1]]
    doc = {"name": "j", "root": {"sequential": [t("a"), t("b")]}}
    job = Job("1", parse_job(doc), doc, now=0.0)
    play(job, {"b": "failed"})
    data = job.dump()
    assert "kept" not in data  # a job never retried stores nothing more
    data = {**data, "run": 2, "kept": [[1, 1, 5]]}
    with pytest.raises(ValueError, match="do not fit"):
        Job("1", parse_job(doc), doc, now=0.0).load(data, [])


def test_a_repeat_run_keeps_nothing() -> None:
    job = make({"sequential": [t("a")]}, repeat=2)
    job.start_run(0.0)
    assert job.kept is None


def test_status_views_carry_what_was_kept() -> None:
    """The full view's kept_from, the columnar view's sparse column (decoded by the client), a
    poll's changes, and the job's head; a job never retried sends none of it."""
    from procpool.contract.status import JobStatus
    from procpoold.core import status

    job = make({"sequential": [t("a"), t("b"), t("c")]})
    play(job, {"b": "failed"})
    assert status.detail(job)["kept"] == 0
    assert "kept_from" not in status.columns_page(job, 0)["sparse"]
    assert [x["kept_from"] for x in status.full(job)["tasks"]] == [None, None, None]
    cursor = status.changes_page(job, "")["cursor"]
    job.retry(2.0, job.retry_plan())
    assert status.detail(job)["kept"] == 1
    assert [x["kept_from"] for x in status.full(job)["tasks"]] == [1, None, None]
    decoded = JobStatus.decode(status.columns_page(job, 0))
    assert [decoded.task(i).kept_from for i in range(3)] == [1, None, None]
    assert JobStatus.decode(status.columns_page(job, 1)).task(1).kept_from is None  # a later page
    assert status.task_reply(job, 0)["task"]["kept_from"] == 1
    changes = status.changes_page(job, cursor)
    assert changes["changes"] is True and "kept_from" not in changes["sparse"]  # b and c changed, not a
