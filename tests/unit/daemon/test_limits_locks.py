"""max_parallel and locks (core.gates) through the scheduler, with a recording executor (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from procpool.contract.tree import TreeError, parse_job
from procpoold.config import ConfigError, load
from procpoold.core.gates import task_gates
from procpoold.engines import Outcome, TaskError
from procpoold.scheduler import Scheduler
from tests.unit.daemon.test_scheduler import RecordingExecutor, make


def sleepers(n: int, **group: Any) -> dict[str, Any]:
    return {"concurrent": [{"name": f"t{i}", "cmd": ["sleep", "1"]} for i in range(n)], **group}


def running(executor: RecordingExecutor, job_id: str | None = None) -> list[str]:
    return sorted(a for a in executor.running if job_id is None or a.split(".")[0] == job_id)


def finish(
    scheduler: Scheduler, executor: RecordingExecutor, attempt_id: str, status: str = "completed"
) -> None:
    executor.running.discard(attempt_id)
    error = None if status == "completed" else TaskError("E", status)
    scheduler.attempt_finished(Outcome(attempt_id, status, error=error))  # type: ignore[arg-type]


def drain(
    scheduler: Scheduler, executor: RecordingExecutor, loop: Any, most: int, job_id: str | None = None
) -> int:
    """Complete attempts one at a time until none runs; checks that at most ``most`` ever ran."""
    done = 0
    loop.run_once(0)
    while running(executor, job_id):
        assert len(running(executor, job_id)) <= most
        finish(scheduler, executor, running(executor, job_id)[0])
        done += 1
        loop.run_once(0)
    return done


def test_max_parallel_of_a_group_holds_the_others_back() -> None:
    loop, executor, scheduler = make(slots=10)
    job, _ = scheduler.submit({"name": "j", "root": sleepers(10, max_parallel=2)})
    loop.run_once(0)
    assert len(executor.running) == 2
    assert [t.state for t in job.tasks].count("ready") == 8  # the others stay ready
    assert drain(scheduler, executor, loop, 2) == 10
    assert job.state == "completed"
    assert not scheduler.gates.jobs and not scheduler.gates.running and not scheduler.gates.parked
    loop.close()


def test_nested_limits_compose() -> None:
    loop, executor, scheduler = make(slots=10)
    root = {"concurrent": [sleepers(4, name="a", max_parallel=2), sleepers(4, name="b", max_parallel=2)]}
    # names of the inner tasks must be unique: rename b's
    for i, t in enumerate(root["concurrent"][1]["concurrent"]):
        t["name"] = f"b{i}"
    job, _ = scheduler.submit({"name": "j", "max_parallel": 3, "root": root})
    loop.run_once(0)
    assert len(executor.running) == 3
    specs = {s.attempt_id: s.task_name for s in executor.submitted}
    names = [specs[a] for a in executor.running]
    assert sum(n.startswith("t") for n in names) <= 2 and sum(n.startswith("b") for n in names) <= 2
    assert drain(scheduler, executor, loop, 3) == 8
    assert job.state == "completed"
    loop.close()


def test_a_mutex_shared_by_two_jobs_serializes_them() -> None:
    loop, executor, scheduler = make(slots=4)
    a, _ = scheduler.submit({"name": "a", "locks": ["db"], "root": sleepers(2)})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["true"], "locks": ["db"]}})
    c, _ = scheduler.submit({"name": "c", "root": {"cmd": ["true"]}})  # no lock: runs at once
    loop.run_once(0)
    assert len(running(executor, a.id)) + len(running(executor, b.id)) == 1
    assert len(running(executor, c.id)) == 1
    finish(scheduler, executor, running(executor, c.id)[0])
    loop.run_once(0)
    assert drain(scheduler, executor, loop, 1) == 3
    assert (a.state, b.state) == ("completed", "completed")
    assert not scheduler.gates.held and not scheduler.gates.holders and not scheduler.gates.promised
    loop.close()


def test_a_semaphore_of_two() -> None:
    loop, executor, scheduler = make(slots=8)
    scheduler.gates.set_limits({"gpu": 2})
    gpu = {"cmd": ["x"], "locks": ["gpu"]}
    jobs = [scheduler.submit({"name": f"j{i}", "root": gpu})[0] for i in range(5)]
    loop.run_once(0)
    assert len(executor.running) == 2
    assert drain(scheduler, executor, loop, 2) == 5
    assert all(j.state == "completed" for j in jobs)
    loop.close()


@pytest.mark.parametrize("status", ["failed", "timeout", "cancelled", "interrupted"])
def test_a_lock_is_released_however_the_attempt_ends(status: str) -> None:
    loop, executor, scheduler = make(slots=2)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["x"], "locks": ["db"]}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["x"], "locks": ["db"]}})
    loop.run_once(0)
    [first] = running(executor)
    assert first.startswith(f"{a.id}.")
    finish(scheduler, executor, first, status)
    loop.run_once(0)
    # (an interrupted task runs again, but after b: b waited for the lock first)
    assert [x.split(".")[0] for x in running(executor)] == [b.id]
    loop.close()


def test_cancelling_a_parked_or_a_woken_task_passes_the_lock_on() -> None:
    loop, executor, scheduler = make(slots=4)
    scheduler.submit({"name": "a", "root": {"cmd": ["x"], "locks": ["db"]}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["x"], "locks": ["db"]}})
    c, _ = scheduler.submit({"name": "c", "root": {"cmd": ["x"], "locks": ["db"]}})
    d, _ = scheduler.submit({"name": "d", "root": {"cmd": ["x"], "locks": ["db"]}})
    loop.run_once(0)
    assert (b.id, 0) in scheduler.gates.parked and (c.id, 0) in scheduler.gates.parked
    scheduler.cancel(b.id)  # parked: its place in the FIFO goes
    [held] = running(executor)
    # a's attempt ends: c is woken (promised the lock), then cancelled before the pump runs
    executor.running.discard(held)
    scheduler.attempt_finished(Outcome(held, "completed"))
    assert (c.id, 0) in scheduler.gates.woken
    scheduler.cancel(c.id)
    loop.run_once(0)
    assert [x.split(".")[0] for x in running(executor)] == [d.id]
    assert scheduler.gates.promised == {}
    loop.close()


def test_a_saturated_lock_does_not_starve_an_earlier_waiter() -> None:
    """A task needing both units of a semaphore of 2 waits behind one-unit holders; the one-unit
    tasks that come after it do not overtake it, however many keep coming."""
    loop, executor, scheduler = make(slots=8)
    scheduler.gates.set_limits({"gpu": 2})
    one = {"cmd": ["x"], "locks": ["gpu"]}
    small = [scheduler.submit({"name": f"s{i}", "root": one})[0] for i in range(2)]
    big, _ = scheduler.submit({"name": "big", "root": {"cmd": ["x"], "locks": ["gpu:2"]}})
    loop.run_once(0)
    assert len(executor.running) == 2 and (big.id, 0) in scheduler.gates.parked
    for i in range(2, 6):  # later one-unit tasks keep arriving while the holders finish
        scheduler.submit({"name": f"s{i}", "root": {"cmd": ["x"], "locks": ["gpu"]}})
        loop.run_once(0)
        if running(executor, small[0].id):
            finish(scheduler, executor, running(executor, small[0].id)[0])
            loop.run_once(0)
    assert len(running(executor)) == 1  # one unit free, kept for the big task (first come)
    finish(scheduler, executor, running(executor, small[1].id)[0])
    loop.run_once(0)
    assert running(executor) == running(executor, big.id) != []
    loop.close()


def test_explain_names_the_lock_and_its_holder_and_the_group_limit() -> None:
    loop, _, scheduler = make(slots=4)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["x"], "locks": ["db"], "name": "holder"}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["x"], "locks": ["db"]}})
    g, _ = scheduler.submit({"name": "g", "root": sleepers(3, name="grp", max_parallel=1)})
    loop.run_once(0)
    out = scheduler.explain(f"{b.id}.0")
    assert out["reason"] == "lock"
    assert out["lock"]["name"] == "db" and out["lock"]["holders"] == [f"{a.id}.0"]
    assert any('waits for lock "db"' in line and f"task {a.id}.0" in line for line in out["text"])
    out = scheduler.explain(f"{g.id}/t2")
    assert out["reason"] == "max_parallel"
    assert out["limit"] == {"group": "grp", "max_parallel": 1, "running": 1}
    assert any('group "grp": max_parallel 1' in line for line in out["text"])
    assert scheduler.explain(g.id)["unfinished"] == {"running": 1, "max_parallel": 2}
    loop.close()


def test_units_beyond_a_locks_limit_are_refused_with_the_path() -> None:
    loop, _, scheduler = make(slots=1)
    scheduler.gates.set_limits({"gpu": 2})
    with pytest.raises(TreeError, match=r'root.concurrent\[1\].locks\[0\]: needs 3 units of lock "gpu"'):
        root = {"concurrent": [{"cmd": ["x"]}, {"cmd": ["y"], "locks": ["gpu:3"]}]}
        scheduler.submit({"name": "j", "root": root})
    with pytest.raises(TreeError, match=r"^locks\[0\]: needs 2 units of lock \"db\", whose limit is 1"):
        scheduler.submit({"name": "j", "locks": ["db:2"], "root": {"cmd": ["x"]}})
    loop.close()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"max_parallel": 0, "root": {"cmd": ["x"]}}, "max_parallel: must be a positive integer, got 0"),
        ({"root": {"concurrent": [{"cmd": ["x"]}], "max_parallel": "2"}}, "root.max_parallel: must be a pos"),
        ({"root": {"cmd": ["x"], "max_parallel": 2}}, 'root: unknown field "max_parallel"'),
        ({"root": {"cmd": ["x"], "locks": ["a b"]}}, r'root.locks\[0\]: invalid lock "a b"'),
        ({"root": {"cmd": ["x"], "locks": ["db", "db:2"]}}, r'root.locks\[1\]: lock "db" is named twice'),
        ({"root": {"cmd": ["x"], "locks": ["gpu:0"]}}, r"root.locks\[0\]: invalid lock"),
        ({"locks": "db", "root": {"cmd": ["x"]}}, "locks: must be an array of lock names"),
    ],
)
def test_bad_limits_and_locks_name_their_path(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(TreeError, match=message):
        parse_job(doc)


def test_a_tasks_gates_gather_its_groups_and_job() -> None:
    spec = parse_job({"max_parallel": 4, "locks": ["db"], "root": {
        "sequential": [{"concurrent": [{"cmd": ["x"], "locks": ["gpu:2", "db:1"]}, {"cmd": ["y"]}],
                        "max_parallel": 1, "locks": ["net"]}, {"cmd": ["z"]}]}})
    assert spec.gated
    gates = task_gates(spec)
    assert gates[0] is not None and gates[0].groups == ((1, 1), (-1, 4))
    assert gates[0].locks == (("db", 1), ("gpu", 2), ("net", 1))
    assert gates[1] is not None and gates[1].groups == ((1, 1), (-1, 4))
    assert gates[1].locks == (("db", 1), ("net", 1))  # (its group's and job's, not its sibling's)
    assert gates[2] is not None and gates[2].groups == ((-1, 4),) and gates[2].locks == (("db", 1),)
    assert not parse_job({"root": {"concurrent": [{"cmd": ["x"]}]}}).gated


def test_config_locks_block(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text("[procpoold]\nworkers = 2\n[locks]\ngpu = 2\ndb = 1\n")
    assert load(cfg, {}).locks == {"gpu": 2, "db": 1}
    cfg.write_text("[procpoold.locks]\ngpu = 3\n")
    assert load(cfg, {}).locks == {"gpu": 3}
    for text, fragment in (("[locks]\ngpu = 0\n", "gpu must be an integer from 1"),
                           ('[locks]\n"a b" = 1\n', "is not a lock name"),
                           ("locks = 3\n", "locks must be a table")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            load(cfg, {})


def test_a_paused_jobs_waiting_task_gives_its_turn_to_the_next_and_waits_again_at_resume() -> None:
    loop, executor, scheduler = make(slots=4)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["x"], "locks": ["db"]}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["x"], "locks": ["db"]}})
    c, _ = scheduler.submit({"name": "c", "root": {"cmd": ["x"], "locks": ["db"]}})
    loop.run_once(0)
    assert (b.id, 0) in scheduler.gates.parked
    scheduler.pause(b.id)
    assert (b.id, 0) not in scheduler.gates.parked
    finish(scheduler, executor, running(executor)[0])
    loop.run_once(0)
    assert [x.split(".")[0] for x in running(executor)] == [c.id]  # b's turn went to c
    scheduler.unpause(b)
    loop.run_once(0)
    assert (b.id, 0) in scheduler.gates.parked  # it waits again, behind c
    assert drain(scheduler, executor, loop, 1) == 2
    assert (a.state, b.state, c.state) == ("completed", "completed", "completed")
    loop.close()
