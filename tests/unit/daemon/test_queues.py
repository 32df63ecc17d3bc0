"""Named queues (core.gates) through the scheduler, with a recording executor (no processes):
parallelism across jobs, run-time changes, pauses, priority aging among a queue's waiters, and
the queues' settings file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.tree import TreeError, parse_job
from procpoold import pausefile
from procpoold.config import ConfigError, load
from procpoold.core.gates import task_gates
from procpoold.scheduler import attempts as attempts_module
from tests.unit.daemon.test_limits_locks import drain, finish, running
from tests.unit.daemon.test_scheduler import make


def in_queue(n: int, queue: str = "io", **group: Any) -> dict[str, Any]:
    return {"concurrent": [{"name": f"t{i}", "cmd": ["x"]} for i in range(n)], "queue": queue, **group}


def test_a_queues_parallelism_holds_across_jobs() -> None:
    loop, executor, scheduler = make(slots=10)
    scheduler.gates.set_queues({"io": 2})
    a, _ = scheduler.submit({"name": "a", "root": in_queue(3)})
    b, _ = scheduler.submit({"name": "b", "root": in_queue(3)})
    free, _ = scheduler.submit({"name": "free", "root": {"cmd": ["x"]}})  # in no queue
    loop.run_once(0)
    assert len(running(executor, free.id)) == 1
    assert len(running(executor, a.id)) + len(running(executor, b.id)) == 2
    assert scheduler.gates.queue_waiting() == {"io": 4}
    finish(scheduler, executor, running(executor, free.id)[0])
    assert drain(scheduler, executor, loop, 2) == 6
    assert (a.state, b.state) == ("completed", "completed")
    gates = scheduler.gates
    assert not gates.queue_running and not gates.queue_promised and not gates.parked and not gates.queue_woken
    loop.close()


def test_a_raised_parallelism_starts_waiters_at_once() -> None:
    loop, executor, scheduler = make(slots=10)
    scheduler.gates.set_queues({"io": 1})
    job, _ = scheduler.submit({"name": "j", "root": in_queue(5)})
    loop.run_once(0)
    assert len(executor.running) == 1
    scheduler.gates.set_queue("io", 3)
    loop.run_once(0)
    assert len(executor.running) == 3
    scheduler.gates.set_queue("io", 1)  # lowered: what runs goes on, nothing new starts
    finish(scheduler, executor, running(executor)[0])
    loop.run_once(0)
    assert len(executor.running) == 2
    assert drain(scheduler, executor, loop, 2) == 4 and job.state == "completed"
    loop.close()


def test_the_innermost_queue_named_wins() -> None:
    spec = parse_job({"queue": "outer", "root": {"sequential": [
        {"name": "a", "cmd": ["x"]},
        {"name": "g", "queue": "mid", "concurrent": [{"name": "b", "cmd": ["x"]},
                                                     {"name": "c", "cmd": ["x"], "queue": "own"}]},
    ]}})
    gates = task_gates(spec)
    assert [g.queue if g else None for g in gates] == ["outer", "mid", "own"]
    assert spec.gated


def test_an_unknown_queue_is_refused_with_its_path() -> None:
    loop, _, scheduler = make(slots=1)
    scheduler.gates.set_queues({"io": 1})
    with pytest.raises(TreeError) as info:
        scheduler.submit({"name": "j", "root": {"concurrent": [{"cmd": ["x"], "queue": "gpu"}]}})
    assert info.value.path == "root.concurrent[0].queue"
    assert 'there is no queue "gpu"' in info.value.message and "io" in info.value.message
    assert info.value.hint is not None and "procctl queue set gpu" in info.value.hint
    with pytest.raises(TreeError) as bad:
        parse_job({"queue": "no spaces", "root": {"cmd": ["x"]}})
    assert bad.value.path == "queue"
    assert not scheduler.jobs
    loop.close()


def test_a_paused_queue_starts_nothing_until_its_resume() -> None:
    loop, executor, scheduler = make(slots=4)
    scheduler.gates.set_queues({"io": 2})
    scheduler.pause_queue("io", by=0)
    job, _ = scheduler.submit({"name": "j", "root": in_queue(3)})
    other, _ = scheduler.submit({"name": "other", "root": {"cmd": ["x"]}})
    loop.run_once(0)
    assert running(executor) == running(executor, other.id) != []
    out = scheduler.explain(f"{job.id}.0")
    assert out["reason"] == "queue_paused" and "procctl resume --queue io" in " ".join(out["text"])
    assert scheduler.resume_queue("io") and not scheduler.resume_queue("io")
    loop.run_once(0)
    assert len(running(executor, job.id)) == 2
    loop.close()


def test_pause_stop_of_a_queue_stops_its_attempts_and_reruns_them_without_a_retry() -> None:
    loop, executor, scheduler = make(slots=4)
    scheduler.gates.set_queues({"io": 2})
    job, _ = scheduler.submit({"name": "j", "root": in_queue(2)})
    other, _ = scheduler.submit({"name": "other", "root": {"cmd": ["x"]}})
    loop.run_once(0)
    assert len(executor.running) == 3
    reply = scheduler.pause_queue("io", by=0, stop=True)
    assert reply["stopping"] == 2
    for aid in running(executor, job.id):
        finish(scheduler, executor, aid, "interrupted")
    loop.run_once(0)
    assert running(executor) == running(executor, other.id)
    assert [t.state for t in job.tasks] == ["ready", "ready"]
    scheduler.resume_queue("io")
    loop.run_once(0)
    assert len(running(executor, job.id)) == 2
    assert drain(scheduler, executor, loop, 3) == 3 and job.state == "completed"
    assert [[a.status for a in t.attempts] for t in job.tasks] == [["paused", "completed"]] * 2
    assert all(t.failures == 1 and t.interruptions == 0 for t in job.tasks)  # (no retry used)
    loop.close()


def test_pause_of_an_unknown_queue_is_not_found() -> None:
    loop, _, scheduler = make(slots=1)
    with pytest.raises(Exception, match='there is no queue "io"'):
        scheduler.pause_queue("io", by=0)
    loop.close()


class _Clock:
    """The scheduler's monotonic clock, moved by the test (the ready queue's keys come from it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _stream(monkeypatch: pytest.MonkeyPatch, aging: float, rounds: int) -> tuple[list[str], Any]:
    """A queue of 1 saturated by a steady stream of high-priority jobs, one arriving every 4 s (a
    clock of the test's own), and a batch job that became ready at the start, under ``aging``.
    The job names in the order they started, and the batch job."""
    clock = _Clock()
    monkeypatch.setattr(attempts_module, "time", clock)
    loop, executor, scheduler = make(slots=4)
    for q in scheduler.queues.values():
        q.aging = aging
    scheduler.gates.set_queues({"q": 1})
    scheduler.submit({"name": "h0", "priority": "high", "root": {"cmd": ["x"], "queue": "q"}})
    loop.run_once(0)
    batch, _ = scheduler.submit({"name": "batch", "priority": "batch", "root": {"cmd": ["x"], "queue": "q"}})
    loop.run_once(0)
    for i in range(1, rounds):
        clock.now += 4
        scheduler.submit({"name": f"h{i}", "priority": "high", "root": {"cmd": ["x"], "queue": "q"}})
        loop.run_once(0)
        [aid] = running(executor)
        finish(scheduler, executor, aid)
        loop.run_once(0)
    loop.close()
    return [s.job_name for s in executor.submitted], batch


def test_aging_lets_a_batch_task_through_a_saturated_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """aging 10 s: the batch task (rank 4) counts as ready 40 s later than it was, a high one (rank
    1) 10 s later. So it goes after the high tasks that arrived within 30 s of it, and before
    every later one, however steady the stream."""
    order, batch = _stream(monkeypatch, 10.0, 14)
    assert batch.tasks[0].state in ("running", "completed")
    # high jobs h1..h7 arrived at +4..+28 s (keys 1014..1038), the batch job's key is 1040
    assert order[:9] == ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "batch"], order


def test_without_aging_the_stream_starves_the_batch_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control of the test above: the same stream with an aging of 10^9 s never lets it in."""
    order, batch = _stream(monkeypatch, 1e9, 14)
    assert "batch" not in order and batch.tasks[0].state == "ready"


def test_a_queue_and_a_lock_together() -> None:
    """A task of queue io that also needs lock db: it waits for each in turn, and a place given
    back to the queue is not kept by a task that then waits for the lock."""
    loop, executor, scheduler = make(slots=8)
    scheduler.gates.set_queues({"io": 2})
    holder, _ = scheduler.submit({"name": "holder", "root": {"cmd": ["x"], "locks": ["db"]}})
    both, _ = scheduler.submit({"name": "both", "root": {"cmd": ["x"], "queue": "io", "locks": ["db"]}})
    plain, _ = scheduler.submit({"name": "plain", "root": in_queue(2)})
    loop.run_once(0)
    assert running(executor, holder.id) and not running(executor, both.id)
    assert len(running(executor, plain.id)) == 2  # the lock's waiter holds no place of the queue
    finish(scheduler, executor, running(executor, holder.id)[0])
    loop.run_once(0)
    assert not running(executor, both.id)  # the queue is full now
    finish(scheduler, executor, running(executor, plain.id)[0])
    loop.run_once(0)
    assert running(executor, both.id)
    assert drain(scheduler, executor, loop, 2) == 2
    loop.close()


def test_config_queues_block(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[procpoold]\nworkers = 2\n\n[queues]\nio = 4\ngpu = 1\n")
    assert load(config, {}).queues == {"io": 4, "gpu": 1}
    config.write_text("[queues]\nio = 0\n")
    with pytest.raises(ConfigError, match=r"\[queues\] io must be an integer from 1"):
        load(config, {})
    config.write_text('[queues]\n"a b" = 1\n')
    with pytest.raises(ConfigError, match="is not a queue name"):
        load(config, {})


def test_queue_settings_file_round_trip_and_damage(tmp_path: Path) -> None:
    record = {"by": "root (uid 0)", "uid": 0, "at": 12.5, "stop": False}
    pausefile.save_queues(tmp_path, {"io": {"parallel": 3, "paused": None},
                                     "gpu": {"parallel": None, "paused": record}})
    assert pausefile.load_queues(tmp_path) == {"io": {"parallel": 3, "paused": None},
                                               "gpu": {"parallel": None, "paused": record}}
    pausefile.save_queues(tmp_path, {})
    assert not (tmp_path / pausefile.QUEUES).exists() and pausefile.load_queues(tmp_path) == {}
    (tmp_path / pausefile.QUEUES).write_text("{not json")
    assert pausefile.load_queues(tmp_path) == {}  # logged; the config's queues apply
    (tmp_path / pausefile.QUEUES).write_text(json.dumps({"queues": {
        "bad name": {"parallel": 2}, "io": {"parallel": 0, "paused": "yes"}, "ok": {"parallel": 5},
        "nan": {"paused": {"at": float("nan")}}}}))  # (json writes NaN, and reads it back)
    assert pausefile.load_queues(tmp_path) == {"ok": {"parallel": 5, "paused": None}}


def test_pause_stops_count_neither_as_retries_nor_toward_max_interruptions() -> None:
    """Three pause --stop of a task with retries 0, under max_interruptions 1, then one
    interruption by the daemon: the task runs again every time, and completes."""
    loop, executor, scheduler = make(slots=2)
    scheduler.max_interruptions = 1
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["x"], "retries": 0}})
    loop.run_once(0)
    for _ in range(3):
        scheduler.pause(job.id, by=0, stop=True)
        [aid] = running(executor)
        finish(scheduler, executor, aid, "interrupted")
        scheduler.resume(job.id)
        loop.run_once(0)
    [aid] = running(executor)
    finish(scheduler, executor, aid, "interrupted")  # a worker lost: the daemon's interruption
    loop.run_once(0)
    [aid] = running(executor)
    finish(scheduler, executor, aid)
    t = job.tasks[0]
    assert [a.status for a in t.attempts] == ["paused"] * 3 + ["interrupted", "completed"]
    assert job.state == "completed" and t.interruptions == 1 and t.failures == 1
    loop.close()


def test_a_config_without_a_procpoold_table_takes_queues_locks_and_blocks_together(tmp_path: Path) -> None:
    """(A file of top-level settings with [locks] or [queues] and [metrics] was refused: "[metrics]
    is given twice".)"""
    config = tmp_path / "c.toml"
    config.write_text("workers = 2\n\n[metrics]\ninterval = 1\n\n[queues]\nio = 3\n\n[locks]\ngpu = 2\n")
    loaded = load(config, {})
    assert (loaded.queues, loaded.locks, loaded.metrics_interval) == ({"io": 3}, {"gpu": 2}, 1.0)
