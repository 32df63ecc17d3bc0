"""A stored job whose saved state does not fit (a task state that does not exist, a running task
with no attempt) is marked failed at the start that finds it, never a crash or a job stuck
forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_store import run_scheduler

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("job_state", "entries"),
    [
        ("running", [[0, 0, {"state": "running"}]]),  # running, but no attempt
        ("running", [[0, 0, {"state": "bogus"}]]),
        ("bogus", []),
    ],
)
def test_a_stored_state_that_does_not_fit_fails_the_job(
    tmp_path: Path, job_state: str, entries: list[Any]
) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({"name": "a", "root": {"cmd": ["true"]}})
    loop.close()
    store.close()
    store = StateStore(tmp_path / "state.db")
    data = msgpack.unpackb(store.db.execute("SELECT data FROM jobs").fetchone()[0])
    store.db.execute("UPDATE jobs SET data=?", (msgpack.packb({**data, "state": job_state}),))
    store.db.execute("DELETE FROM task_log")
    store.db.execute("INSERT INTO task_log VALUES (?, 0, ?)", (int(job.id), msgpack.packb(entries)))
    loop, _executor, scheduler = run_scheduler(store)
    loop.run_once(0)
    again = scheduler._job(job.id)
    assert again is not None and again.state == "failed"
    assert "cannot be restored after a restart" in (again.reason or "")
    loop.close()
    store.close()


def test_an_unrestorable_job_keeps_its_key_and_its_submitter(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({"name": "a", "key": "k", "root": {"cmd": ["true"]}}, uid=7)
    loop.close()
    store.close()
    store = StateStore(tmp_path / "state.db")
    store.db.execute("DELETE FROM task_log")
    store.db.execute("INSERT INTO task_log VALUES (?, 0, ?)", (int(job.id), msgpack.packb([[9, 0]])))
    loop, _executor, scheduler = run_scheduler(store)
    loop.run_once(0)
    assert scheduler.finished[job.id].state == "failed"
    assert scheduler.finished[job.id].uid == 7  # its submitter may still see to it
    # A client that retries its submit finds it (a second row with the key would stop the daemon).
    again, existing = scheduler.submit({"name": "a", "key": "k", "root": {"cmd": ["true"]}}, uid=7)
    assert existing and again.id == job.id
    loop.close()
    store.close()
