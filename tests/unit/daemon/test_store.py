"""The SQLite store: the task log, its snapshots, the v1 -> v2 migration, and the scheduler's use of it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest

from procpoold.core.jobs import DONE_ENTRY, FULL_ENTRY, START_ENTRY
from procpoold.engines import Outcome
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import LOG_SLACK, Scheduler
from procpoold.store.sqlite import LARGE_VALUE, MIGRATIONS, SCHEMA_VERSION, StateStore, StoreFailure
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = pytest.mark.unit


def new_job(store: StateStore, job_id: str) -> None:
    store.add_job(job_id, None, "j", "running", 1.0, {"root": {}}, {"state": "running"})
    store.flush()


def test_appends_become_rows_in_order_and_reload_with_their_sequence(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    new_job(store, "1")
    store.append_tasks("1", [[START_ENTRY, 0, 1, "a#1", 2.0]])
    store.append_tasks("1", [[START_ENTRY, 1, 1, "b#1", 2.0]])  # same commit: same row
    store.flush()
    store.append_tasks("1", [[FULL_ENTRY, 0, {"state": "completed"}]])
    store.flush()
    store.settle()  # the compactor has applied both records to the tables
    rows = store.db.execute("SELECT seq FROM task_log WHERE job_id=1 ORDER BY seq").fetchall()
    assert rows == [(0,), (1,)] and store.log_entries["1"] == 3
    store.close()

    again = StateStore(path)
    [(job_id, _, _, data, entries, _)] = list(again.load_jobs())
    assert (job_id, data["state"]) == ("1", "running")
    assert [e[:2] for e in entries] == [[START_ENTRY, 0], [START_ENTRY, 1], [FULL_ENTRY, 0]]
    again.append_tasks("1", [[FULL_ENTRY, 1, {"state": "completed"}]])
    again.flush()  # continues the sequence instead of colliding with row 1
    again.settle()
    assert again.db.execute("SELECT max(seq) FROM task_log").fetchone()[0] == 2
    again.close()


def test_a_snapshot_replaces_the_jobs_rows_and_delete_removes_them(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    new_job(store, "1")
    new_job(store, "2")
    for n in range(5):
        store.append_tasks("1", [[FULL_ENTRY, 0, {"n": n}]])
        store.append_tasks("2", [[FULL_ENTRY, 0, {"n": n}]])
        store.flush()
    store.append_tasks("1", [[FULL_ENTRY, 0, {"n": 5}]])
    store.snapshot_tasks("1", [[FULL_ENTRY, 0, {"n": 6}], [FULL_ENTRY, 1, {"n": 6}]])
    store.flush()
    store.settle()
    count = "SELECT count(*) FROM task_log WHERE job_id=?"
    assert store.db.execute(count, (1,)).fetchone()[0] == 1
    assert store.db.execute(count, (2,)).fetchone()[0] == 5
    assert store.log_entries == {"1": 2, "2": 5}
    logs = {job.id: job.entries for job in store.load_jobs()}
    assert logs["1"] == [[FULL_ENTRY, 0, {"n": 6}], [FULL_ENTRY, 1, {"n": 6}]]
    store.delete_jobs(["2"])
    store.settle()
    assert store.db.execute(count, (2,)).fetchone()[0] == 0
    store.close()


def test_a_version_1_file_is_migrated_with_its_task_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    step = MIGRATIONS[0]
    assert isinstance(step, str)
    db.executescript(step)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute(
        "INSERT INTO jobs VALUES (7, NULL, 'old', 'running', 1.0, NULL, ?, ?)",
        (msgpack.packb({"root": {}}), msgpack.packb({"state": "running"})),
    )
    for idx in (1, 0):
        attempt = {"number": 1, "id": f"{idx}#1", "started_at": 2.0, "finished_at": 3.0}
        attempt |= {"status": "completed", "pid": None, "worker": "w0"}
        v1_task = {"state": "completed", "attempts": [attempt], "started_at": 2.0, "result": idx}
        db.execute("INSERT INTO tasks VALUES (7, ?, 'completed', ?)", (idx, msgpack.packb(v1_task)))
    db.commit()
    db.close()

    store = StateStore(path)
    assert store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "tasks" not in tables and "task_log" in tables
    indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert not indexes & {"jobs_state", "jobs_finished"}  # version 3 dropped them
    [(job_id, _, _, _, entries, _)] = list(store.load_jobs())
    assert job_id == "7" and [e[:2] for e in entries] == [[FULL_ENTRY, 0], [FULL_ENTRY, 1]]
    assert entries[1][2] == {
        "state": "completed",
        "attempts": [[1, "1#1", 2.0, 3.0, "completed", None, "w0"]],
        "started_at": 2.0,
        "result": 1,
    }
    store.close()


def run_scheduler(store: StateStore) -> tuple[EventLoop, RecordingExecutor, Scheduler]:
    loop = EventLoop()
    executor = RecordingExecutor(slots=100)
    scheduler = Scheduler(loop, Engines([executor]), store=store)
    scheduler.recover()
    return loop, executor, scheduler


def finish_all(loop: EventLoop, executor: RecordingExecutor, scheduler: Scheduler) -> None:
    for spec in list(executor.submitted):
        if spec.attempt_id in executor.running:
            executor.running.discard(spec.attempt_id)
            scheduler.attempt_finished(Outcome(spec.attempt_id, "completed", result=spec.task_name))
    loop.run_once(0)


def stored_log(store: StateStore, job_id: str) -> list[Any]:
    return {j.id: j.entries for j in store.load_jobs()}[job_id]


def test_starts_are_small_entries_and_a_restart_finds_them_running(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    tasks = [{"cmd": ["true"], "retries": 1}, {"cmd": ["true"], "retries": 1}]
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": tasks}})
    loop.run_once(0)  # both dispatched: written ahead as start entries
    assert [e[0] for e in stored_log(store, job.id)] == [START_ENTRY, START_ENTRY]
    first = executor.submitted[0]
    executor.running.discard(first.attempt_id)
    scheduler.attempt_finished(Outcome(first.attempt_id, "completed", result=1))
    loop.run_once(0)
    assert stored_log(store, job.id)[-1][:2] == [DONE_ENTRY, 0]  # a completion alone: small
    loop.close()
    store.close()  # as after a crash: the second attempt never reported

    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    again = scheduler.jobs[job.id]
    assert again.tasks[0].state == "completed" and again.tasks[0].result == 1
    assert again.tasks[1].attempts[0].status == "interrupted"
    loop.run_once(0)
    assert [s.attempt for s in executor.submitted] == [2]  # the retry counts the interrupted one
    loop.close()
    store.close()


def test_a_repeat_jobs_log_stays_bounded_and_replays_to_the_same_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    tree = {"name": "r", "repeat": 200, "root": {"sequential": [{"cmd": ["true"]}, {"cmd": ["true"]}]}}
    job, _ = scheduler.submit(tree)
    peak = 0
    for _ in range(1000):
        loop.run_once(0)
        finish_all(loop, executor, scheduler)
        peak = max(peak, store.log_entries.get(job.id, 0))
        if job.finished:
            break
    assert job.state == "completed" and job.run == 200
    assert peak <= 2 * len(job.tasks) + LOG_SLACK
    before = [job.dump_task(i) for i in range(len(job.tasks))]
    loop.close()
    store.close()

    store = StateStore(tmp_path / "state.db")
    loop, _, scheduler = run_scheduler(store)
    assert job.id not in scheduler.jobs  # finished: read back from the store when asked for
    again, _ = scheduler.resolve(job.id)
    assert again.state == "completed" and again.run == 200
    assert [again.dump_task(i) for i in range(len(again.tasks))] == before
    loop.close()
    store.close()


def test_large_values_live_in_files_that_follow_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    big = b"x" * LARGE_VALUE
    store = StateStore(path)
    store.add_job("1", None, "j", "running", 1.0, {"args": [big]}, {"state": "running"})
    store.append_tasks("1", [[FULL_ENTRY, 0, {"result": big}]])
    store.flush()
    store.append_tasks("1", [[FULL_ENTRY, 0, {"result": 1}]])  # small: stays in its row
    store.flush()
    folder = tmp_path / "state-values" / "1"
    assert sorted(os.listdir(folder)) == ["doc", "log-0"]
    store.settle()
    assert store.db.execute("SELECT doc FROM jobs").fetchone()[0] == b""
    [job] = list(store.load_jobs())
    assert job.doc == {"args": [big]} and job.entries[0][2]["result"] == big and job.error is None
    store.snapshot_tasks("1", [[FULL_ENTRY, 0, {"result": 2}]])
    store.flush()
    store.settle()
    assert sorted(os.listdir(folder)) == ["doc"]  # the replaced log's file went with its rows
    (tmp_path / "state-values" / "99").mkdir()  # a job the database does not know
    store.close()

    store = StateStore(path)
    assert sorted(os.listdir(tmp_path / "state-values")) == ["1"]
    (folder / "doc").unlink()
    [job] = list(store.load_jobs())
    assert job.error is not None and "large value file" in job.error and str(folder / "doc") in job.error
    store.delete_jobs(["1"])
    store.settle()
    assert not folder.exists()
    store.close()


class FailingCommits:
    """A connection whose COMMIT fails, as on a full or broken disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def full_log(store: StateStore) -> None:
    """Point the store's open log segment at /dev/full: its next write fails with ENOSPC."""
    os.close(store.writer.fd)
    store.writer.fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)


def count_rows(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def test_a_failed_write_is_a_store_failure_and_nothing_more_is_written(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    new_job(store, "1")
    full_log(store)
    store.append_tasks("1", [[START_ENTRY, 0, 1, "a#1", 2.0]])
    with pytest.raises(StoreFailure, match=r"cannot write the state file .*: the disk is full: .*No space"):
        store.flush()
    assert store.failed is not None and store.lsn == 1
    store.append_tasks("1", [[FULL_ENTRY, 0, {"state": "completed"}]])
    store.flush()  # refused quietly: the daemon is stopping and a restart reads what was committed
    store.close()
    assert count_rows(tmp_path / "state.db", "task_log") == 0
    assert count_rows(tmp_path / "state.db", "jobs") == 1


def test_a_compactor_that_cannot_apply_stops_the_daemon_at_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    new_job(store, "1")
    store.settle()
    store.compactor.db = store.compactor._applier.db = FailingCommits(store.compactor.db)  # type: ignore
    store.append_tasks("1", [[START_ENTRY, 0, 1, "a#1", 2.0]])
    store.flush()  # durable in the log; the compactor fails to apply it
    with pytest.raises(StoreFailure, match=r"cannot write the state file .*: the disk is full"):
        store.load_job("1")  # a read waits for the compactor, and hears of its failure
    store.append_tasks("1", [[FULL_ENTRY, 0, {"state": "completed"}]])
    store.flush()  # refused quietly from now on
    store.close()  # keeps the log: its record is not applied
    again = StateStore(path)  # the next start replays it
    [job] = list(again.load_jobs())
    assert [e[0] for e in job.entries] == [START_ENTRY]
    again.close()


def test_a_failed_delete_is_a_store_failure_too(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    new_job(store, "1")
    full_log(store)
    with pytest.raises(StoreFailure, match="the disk is full"):
        store.delete_jobs(["1"])
    store.close()
    assert count_rows(tmp_path / "state.db", "jobs") == 1  # not deleted


def test_a_store_failure_during_submit_is_not_swallowed_as_an_error_reply(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, _, scheduler = run_scheduler(store)
    full_log(store)
    with pytest.raises(StoreFailure):
        scheduler.submit({"name": "j", "root": {"cmd": ["true"]}})
    assert not issubclass(StoreFailure, Exception)  # request handlers catch Exception, not this
    loop.close()
    store.close()


def test_the_daemon_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "state.db")
    daemon_id = first.daemon_id
    first.close()
    again = StateStore(tmp_path / "state.db")
    assert again.daemon_id == daemon_id and len(daemon_id) == 32
    other = StateStore(tmp_path / "other.db")
    assert other.daemon_id != daemon_id
    again.close()
    other.close()


def test_job_ids_are_not_reused_after_the_newest_jobs_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    for job_id in ("1", "2", "3"):
        new_job(store, job_id)
    next_id = "SELECT value FROM meta WHERE key='next_job_id'"
    assert store.db.execute(next_id).fetchone() is None  # a submit writes no counter
    assert store.max_job_id() == 3
    store.delete_jobs(["2", "3"])
    store.settle()
    assert store.db.execute(next_id).fetchone() == ("4",)
    store.close()

    again = StateStore(path)
    assert again.max_job_id() == 3  # 3 is gone, but was handed out
    new_job(again, "4")
    new_job(again, "5")
    again.delete_jobs(["1"])  # an older job: the counter follows the newest id handed out
    again.settle()
    assert again.db.execute(next_id).fetchone() == ("6",)
    again.close()
    assert StateStore(path).max_job_id() == 5


def test_the_scheduler_never_hands_out_a_deleted_jobs_id_again(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    ids = [scheduler.submit({"name": f"j{n}", "root": {"cmd": ["true"]}})[0].id for n in range(2)]
    finish_all(loop, executor, scheduler)
    assert scheduler.clean() == (ids, 0)
    loop.close()
    store.close()

    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({"name": "after", "root": {"cmd": ["true"]}})
    assert job.id == "3"
    loop.close()
    store.close()


def test_an_answer_about_an_end_waits_for_the_commit_that_holds_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["true"]}})
    loop.run_once(0)
    assert scheduler.durable_now()
    seen: list[list[Any]] = []
    spec = executor.submitted[0]
    executor.running.discard(spec.attempt_id)
    scheduler.attempt_finished(Outcome(spec.attempt_id, "completed", result=1))
    assert scheduler.is_finished(job.id) and not scheduler.durable_now()
    # What a waiter is told is read back from the store at the moment it is told.
    scheduler.when_durable(lambda: seen.append(stored_log(store, job.id)))
    assert seen == []  # the end is not written yet: no answer
    loop.run_once(0)
    assert len(seen) == 1 and seen[0][-1][:2] == [DONE_ENTRY, 0]
    scheduler.when_durable(lambda: seen.append([]))  # nothing pending: at once
    assert len(seen) == 2
    loop.close()
    store.close()


def test_written_values_have_their_pages_handed_back_and_still_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compactor starts the write-back of each value file, then drops its pages: the
    values stay whole, a file removed in between is skipped, and nothing is left to release."""
    from procpoold.store import values as values_module

    monkeypatch.setattr(values_module, "COOL_SECONDS", 0.0)
    values = values_module.LargeValues(tmp_path / "values", fsync=False)
    data = [os.urandom(LARGE_VALUE + i) for i in range(3)]
    for i, value in enumerate(data):
        assert values.put(str(i), "doc", value) == b""
    assert values.unreleased == 3
    values.release()  # write-back started
    assert values.unreleased == 3
    (tmp_path / "values" / "1" / "doc").unlink()  # (a job deleted meanwhile)
    values.release()  # pages dropped
    assert values.unreleased == 0
    assert values.get("0", "doc", b"") == data[0] and values.get("2", "doc", b"") == data[2]
    synced = values_module.LargeValues(tmp_path / "synced", fsync=True)
    synced.put("1", "doc", data[0])
    synced.release()  # synced: clean already, dropped at once
    assert synced.unreleased == 0 and synced.get("1", "doc", b"") == data[0]


def test_a_key_moves_to_the_newest_job_without_removing_the_old_row(tmp_path: Path) -> None:
    # (submit with "replace": the new job takes the key of the job it replaced; the key is UNIQUE)
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.add_job("1", "0:k", "j", "running", 1.0, {"root": {}}, {"state": "running"})
    store.flush()
    store.settle()
    store.add_job("2", "0:k", "j", "running", 2.0, {"root": {}}, {"state": "running"})
    store.add_job("3", "0:k", "j", "running", 3.0, {"root": {}}, {"state": "running"})  # same batch
    store.flush()
    store.settle()
    rows = store.db.execute("SELECT id, key FROM jobs ORDER BY id").fetchall()
    assert rows == [(1, None), (2, None), (3, "0:k")]
    store.close()
