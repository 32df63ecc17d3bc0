"""A job is queued until its first attempt starts; the job list's filters and its count of matches;
a job's tasks in one state, filtered by the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from procpool.contract.codec import Request, RequestError
from procpool.contract.ops import check_args
from procpoold.control.handlers import build_handlers
from procpoold.core import status
from procpoold.engines import Outcome
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_scheduler import RecordingExecutor, make
from tests.unit.daemon.test_store import finish_all, run_scheduler

pytestmark = pytest.mark.unit


def submit(scheduler: Scheduler, name: str, uid: int | None = None, tags: list[str] | None = None) -> str:
    doc: dict[str, Any] = {"name": name, "root": {"cmd": ["true"], **({"tags": tags} if tags else {})}}
    return scheduler.submit(doc, uid)[0].id


def test_a_job_is_queued_until_its_first_attempt_starts() -> None:
    loop, executor, scheduler = make(slots=1)
    first = submit(scheduler, "first")
    waiting = [submit(scheduler, f"w{i}") for i in range(3)]
    loop.run_once(0)  # one slot: the first job's task starts, the others wait in the queue
    assert scheduler.jobs[first].state == "running" and scheduler.jobs[first].started_at is not None
    for job_id in waiting:
        summary = status.summary(scheduler.jobs[job_id])
        assert (summary["state"], summary["started_at"]) == ("queued", None)
    assert scheduler.by_state() == {"running": 1, "queued": 3}
    assert [j["id"] for j in scheduler.job_list(state="queued")[0]] == waiting
    spec = executor.submitted[0]
    executor.running.discard(spec.attempt_id)
    scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
    loop.run_once(0)
    assert scheduler.jobs[waiting[0]].state == "running"
    assert [scheduler.jobs[j].state for j in waiting[1:]] == ["queued", "queued"]


def test_a_queued_job_that_is_cancelled_ends_cancelled_without_a_start() -> None:
    loop, _, scheduler = make(slots=1)
    submit(scheduler, "first")
    queued = submit(scheduler, "second")
    loop.run_once(0)
    scheduler.cancel(queued)
    loop.run_once(0)
    assert scheduler.finished[queued].state == "cancelled"
    job, _ = scheduler.resolve(queued)
    assert job.started_at is None


def test_the_list_filters_by_name_user_tag_and_state_and_counts_the_matches(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    nightly = [submit(scheduler, f"nightly-{i}", uid=1000, tags=["etl"]) for i in range(3)]
    other = submit(scheduler, "adhoc", uid=1001, tags=["manual"])
    loop.run_once(0)
    finish_all(loop, executor, scheduler)
    live = submit(scheduler, "nightly-live", uid=1001, tags=["etl", "live"])

    def ids(**filters: Any) -> tuple[list[str], int]:
        jobs, matched = scheduler.job_list(**filters)
        return [j["id"] for j in jobs], matched

    assert ids() == ([*nightly, other, live], 5)
    assert ids(limit=2) == ([other, live], 5)  # the newest two, of five
    assert ids(name="nightly-*") == ([*nightly, live], 4)
    assert ids(name="nightly") == ([], 0)  # without a wildcard: the name itself
    assert ids(name="adhoc") == ([other], 1)
    assert ids(uid=1001) == ([other, live], 2)
    assert ids(tag="etl") == ([*nightly, live], 4)
    assert ids(tag="live", uid=1001) == ([live], 1)
    assert ids(tag="etl", state="completed", limit=1) == ([nightly[-1]], 3)
    assert status.summary(scheduler.jobs[live])["tags"] == ["etl", "live"]
    loop.close()
    store.close()

    # after a restart the finished jobs' names come from the index and their tags from the store
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    assert ids(tag="etl") == ([*nightly, live], 4)
    assert ids(name="nightly-?", tag="etl") == (nightly, 3)
    assert ids(tag="manual") == ([other], 1)
    loop.close()
    store.close()


def test_the_tags_of_a_job_are_those_of_its_tasks_each_once() -> None:
    loop, _, scheduler = make(slots=1)
    doc = {"name": "j", "tags": ["team"], "root": {"concurrent": [
        {"cmd": ["true"], "tags": ["a"]}, {"cmd": ["true"], "tags": ["b", "a"]}, {"cmd": ["true"]}]}}
    job, _ = scheduler.submit(doc, None)
    assert job.tag_list() == ["team", "a", "b"]
    loop.close()


def test_a_state_filter_sends_only_the_tasks_in_that_state() -> None:
    loop, executor, scheduler = make(slots=10)
    doc = {"name": "j", "on_failure": "continue",
           "root": {"concurrent": [{"name": f"t{i}", "cmd": ["true"]} for i in range(10)]}}
    job, _ = scheduler.submit(doc, None)
    loop.run_once(0)
    for n, spec in enumerate(executor.submitted):
        executor.running.discard(spec.attempt_id)
        failed = n in (2, 5, 7)
        scheduler.attempt_finished(Outcome(spec.attempt_id, "failed" if failed else "completed", exit_code=1
                                           if failed else 0))
    loop.run_once(0)
    page = status.page(job, "full", 0, 100, tasks_state="failed")
    assert [t["name"] for t in page["tasks"]] == ["t2", "t5", "t7"]  # type: ignore[typeddict-item]
    assert page["job"]["counts"] == {"completed": 7, "failed": 3}
    # paged: two per page, the next page's scan starting after the last one sent
    first = status.full_page(job, 0, 2, state="failed")
    assert [t["name"] for t in first["tasks"]] == ["t2", "t5"] and first["page"]["next"] == 7
    second = status.full_page(job, 7, 2, state="failed")
    assert [t["name"] for t in second["tasks"]] == ["t7"] and second["page"]["next"] is None
    assert status.full_page(job, 0, 100, state="running")["tasks"] == []
    loop.close()


def test_the_new_arguments_of_status_are_checked() -> None:
    check_args("status", {"name": "nightly-*", "user": "alice", "tag": "etl", "limit": 5})
    check_args("status", {"job": "1", "tasks_state": "failed"})
    with pytest.raises(RequestError, match="'tasks_state' must be a task state"):
        check_args("status", {"job": "1", "tasks_state": "queued"})  # a job state, not a task's
    with pytest.raises(RequestError, match="'name' must be at most 256 characters"):
        check_args("status", {"name": "x" * 257})
    with pytest.raises(RequestError, match="'tag' must be a string"):
        check_args("status", {"tag": ["etl"]})


class _Api:
    """The part of the daemon the status handler calls, recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def summary(self) -> dict[str, Any]:
        return {"jobs": {}}

    def job_list(self, *args: Any) -> tuple[list[dict[str, Any]], int]:
        self.asked.append(args)
        return [], 7

    def job_status(self, *args: Any) -> dict[str, Any]:
        self.asked.append(args)
        return {}


def test_the_status_handler_passes_the_filters_and_refuses_a_misplaced_state_filter() -> None:
    api = _Api()
    handler = build_handlers(api)["status"]  # type: ignore[arg-type]
    reply = handler(Request(1, "status", {"name": "n*", "user": "1000", "tag": "t", "limit": 3}), None)
    assert reply["jobs"] == {"list": [], "matched": 7}
    assert api.asked == [(None, None, 3, "n*", "1000", "t")]
    handler(Request(2, "status", {"job": "4", "tasks_state": "failed"}), None)
    assert api.asked[-1] == ("4", 0, None, None, "full", None, "failed")
    for args in ({"tasks_state": "failed"}, {"job": "4", "tasks_state": "failed", "view": "columns"}):
        with pytest.raises(RequestError, match="tasks_state"):
            handler(Request(3, "status", args), None)


def test_a_queued_job_is_still_queued_after_a_restart_and_then_runs(tmp_path: Path) -> None:
    def start() -> tuple[Any, RecordingExecutor, Scheduler, StateStore]:
        store = StateStore(tmp_path / "state.db")
        loop = EventLoop()
        executor = RecordingExecutor(slots=1)
        scheduler = Scheduler(loop, Engines([executor]), store=store)
        scheduler.recover()
        return loop, executor, scheduler, store

    loop, executor, scheduler, store = start()
    first = submit(scheduler, "first")
    second = submit(scheduler, "second")
    loop.run_once(0)
    assert (scheduler.jobs[first].state, scheduler.jobs[second].state) == ("running", "queued")
    scheduler.flush()
    loop.close()
    store.close()

    loop, executor, scheduler, store = start()  # the first job's attempt was interrupted
    loop.run_once(0)
    assert scheduler.jobs[first].state == "running"
    assert (scheduler.jobs[second].state, scheduler.jobs[second].started_at) == ("queued", None)
    finish_all(loop, executor, scheduler)
    assert scheduler.jobs[second].state == "running" and scheduler.jobs[second].started_at is not None
    loop.close()
    store.close()
