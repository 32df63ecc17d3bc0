"""Finished jobs are served from the store (memory follows unfinished work), and retention."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from procpoold.core import status
from procpoold.engines import Outcome
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_store import finish_all, run_scheduler

pytestmark = pytest.mark.unit


def submit(scheduler: Scheduler, name: str, uid: int | None = None, key: str | None = None) -> str:
    doc = {"name": name, "root": {"cmd": ["true"]}, **({"key": key} if key else {})}
    return scheduler.submit(doc, uid)[0].id


def test_a_finished_job_leaves_memory_and_is_read_back_from_the_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    done = submit(scheduler, "done", key="k1")
    loop.run_once(0)
    finish_all(loop, executor, scheduler)
    running = submit(scheduler, "running")
    loop.run_once(0)
    assert done not in scheduler.jobs and running in scheduler.jobs
    assert scheduler.finished[done].state == "completed"
    job, _ = scheduler.resolve(done)  # read back
    assert job.state == "completed" and job.tasks[0].result == "root"
    assert scheduler.is_finished(done) and scheduler.finished_status(f"{done}.0")["state"] == "completed"
    assert [j["id"] for j in scheduler.job_list()[0]] == [done, running]
    assert [j["name"] for j in scheduler.job_list(state="completed")[0]] == ["done"]
    assert scheduler.job_list(limit=1)[0][0]["id"] == running
    assert scheduler.by_state() == {"completed": 1, "running": 1}
    again, existing = scheduler.submit({"name": "done", "key": "k1", "root": {"cmd": ["true"]}})
    assert existing and again.id == done
    loop.close()
    store.close()

    store = StateStore(tmp_path / "state.db")  # a restart reads only the index of finished jobs
    loop, executor, scheduler = run_scheduler(store)
    assert list(scheduler.jobs) == [running] and list(scheduler.finished) == [done]
    assert scheduler.job_list(state="completed")[0][0]["counts"] == {"completed": 1}
    assert scheduler.clean() == ([done], 0)
    assert scheduler.job_list()[0] == [status.summary(scheduler.jobs[running])]
    loop.close()
    store.close()


def test_rows_of_finished_jobs_from_schema_3_get_their_summary_at_start(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    done = submit(scheduler, "old", uid=7)
    loop.run_once(0)
    finish_all(loop, executor, scheduler)
    loop.close()
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")  # as a file from before: no uid, no summary
    db.execute("UPDATE jobs SET uid=NULL, summary=NULL")
    db.commit()
    db.close()
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    assert scheduler.finished[done].uid == 7 and done not in scheduler.jobs
    scheduler.flush()
    store.settle()
    row = store.db.execute("SELECT uid, summary IS NOT NULL FROM jobs").fetchone()
    assert row == (7, 1)
    assert scheduler.job_list()[0][0]["name"] == "old"
    loop.close()
    store.close()


def test_retention_count_applies_per_user_and_never_to_unfinished_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    scheduler.retention_count = 3
    waiting = submit(scheduler, "waiting", uid=1)  # unfinished (its attempt never ends): never pruned
    loop.run_once(0)
    executor.running.clear()

    def finish_the_others() -> None:
        for spec in list(executor.submitted):
            if spec.job_id != waiting and spec.attempt_id not in done:
                done.add(spec.attempt_id)
                scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
        loop.run_once(0)

    done: set[str] = set()
    mine = [submit(scheduler, "other", uid=2) for _ in range(2)]
    loop.run_once(0)
    finish_the_others()
    caplog.set_level(logging.INFO, logger="procpoold.scheduler")
    theirs = []
    for _ in range(10):  # uid 1 floods: only its own history goes
        theirs.append(submit(scheduler, "flood", uid=1))
        loop.run_once(0)
        finish_the_others()
    kept = list(scheduler.finished)
    assert [j for j in kept if j in mine] == mine
    assert [j for j in kept if j in theirs] == theirs[-3:]
    assert scheduler.jobs[waiting].state == "running" and waiting not in scheduler.finished
    pruned = [r for r in caplog.records if "retention pruned" in r.getMessage()]
    assert len(pruned) == 7  # one record per prune
    assert pruned[0].getMessage().startswith(f"retention pruned 1 finished job(s), ids {theirs[0]} to")
    scheduler.retention_count = 1
    scheduler.clean(state="failed")  # nothing failed: nothing removed
    assert len(scheduler.finished) == 5
    loop.close()
    store.close()


def test_an_unfinished_job_from_schema_3_keeps_its_submitter_once_finished(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    job = submit(scheduler, "old", uid=7)
    loop.run_once(0)
    loop.close()
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")  # as a file from before: no uid column value
    db.execute("UPDATE jobs SET uid=NULL, summary=NULL")
    db.commit()
    db.close()
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    loop.run_once(0)
    finish_all(loop, executor, scheduler)
    loop.close()
    store.close()
    store = StateStore(tmp_path / "state.db")  # the next start reads the finished index
    loop, executor, scheduler = run_scheduler(store)
    assert scheduler.finished[job].uid == 7
    assert scheduler.clean(owner=7) == ([job], 0)  # its submitter may clean it
    loop.close()
    store.close()
