"""Job state without processes: readiness, failure propagation, cancel, repeat."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.tree import parse_job
from procpoold.core.jobs import Job, replay_task_log
from procpoold.core.states import IllegalTransition


def make(root: Any, **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, now=0.0)


def names(job: Job, indices: list[int]) -> list[str]:
    return [job.tasks[i].spec.name for i in indices]


def run_ok(job: Job, name: str) -> list[str]:
    i = job.by_name[name]
    job.mark_running(i, f"{name}#1", 1.0)
    return names(job, job.complete(i, 2.0).ready)


def test_sequential_then_concurrent_then_depends_on() -> None:
    job = make(
        {
            "sequential": [
                {"name": "a", "cmd": ["x"]},
                {
                    "concurrent": [
                        {"name": "b", "cmd": ["x"]},
                        {"name": "c", "cmd": ["x"], "depends_on": ["b"]},
                    ]
                },
                {"name": "d", "cmd": ["x"]},
            ]
        }
    )
    assert names(job, job.start_run(0).ready) == ["a"]
    assert run_ok(job, "a") == ["b"]
    assert run_ok(job, "b") == ["c"]
    assert run_ok(job, "c") == ["d"]
    job.mark_running(job.by_name["d"], "d#1", 3)
    assert job.complete(job.by_name["d"], 4).run_finished
    assert job.finish_run(5) is False and job.state == "completed"


def test_failure_skips_downstream_and_stop_cancels_the_rest() -> None:
    job = make(
        {
            "concurrent": [
                {"sequential": [{"name": "fetch", "cmd": ["x"]}, {"name": "parse", "cmd": ["x"]}]},
                {"name": "other", "cmd": ["x"], "depends_on": ["later"]},
                {"name": "later", "cmd": ["x"], "depends_on": ["parse"]},
                {"name": "free", "cmd": ["x"]},
                {"name": "running", "cmd": ["x"]},
            ]
        }
    )
    assert set(names(job, job.start_run(0).ready)) == {"fetch", "free", "running"}
    job.mark_running(job.by_name["running"], "r#1", 1)
    job.mark_running(job.by_name["fetch"], "f#1", 1)
    effects = job.end_unsuccessfully(job.by_name["fetch"], "failed", 2, {"type": "E", "message": "m"})
    state = {t.spec.name: (t.state, t.reason) for t in job.tasks}
    assert state["parse"] == ("skipped", 'upstream "fetch" failed')
    assert state["later"] == ("skipped", 'upstream "fetch" failed')
    assert state["other"][0] == "skipped"
    assert state["free"] == ("cancelled", 'job stopped: task "fetch" failed')
    assert state["running"][0] == "running"  # running tasks finish
    assert not effects.run_finished
    job.complete(job.by_name["running"], 3)
    assert job.finish_run(4) is False and job.state == "failed"


def test_continue_keeps_independent_branches() -> None:
    job = make(
        {
            "concurrent": [
                {"name": "bad", "cmd": ["x"]},
                {"name": "after", "cmd": ["x"], "depends_on": ["bad"]},
                {"name": "free", "cmd": ["x"], "depends_on": ["other"]},
                {"name": "other", "cmd": ["x"]},
            ]
        },
        on_failure="continue",
    )
    job.start_run(0)
    job.mark_running(job.by_name["bad"], "b#1", 1)
    job.end_unsuccessfully(job.by_name["bad"], "failed", 2)
    assert job.tasks[job.by_name["after"]].state == "skipped"
    assert job.tasks[job.by_name["free"]].state == "pending"
    assert run_ok(job, "other") == ["free"]
    run_ok(job, "free")
    assert job.finish_run(5) is False and job.state == "failed"


def test_cancel_running_and_pending() -> None:
    job = make({"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "b", "cmd": ["x"]}]})
    job.start_run(0)
    job.mark_running(0, "a#1", 1)
    effects = job.cancel(2)
    assert effects.stop == ["a#1"]
    assert job.tasks[1].state == "cancelled"
    job.end_unsuccessfully(0, "cancelled", 3, reason="cancelled by request")
    assert job.finish_run(4) is False and job.state == "cancelled"


def test_repeat_resets_tasks_and_keeps_the_namespace() -> None:
    job = make({"name": "a", "cmd": ["x"]}, repeat=2, namespace={"n": 1})
    job.start_run(0)
    job.namespace["n"] = 2
    job.mark_running(0, "a#1", 1)
    job.complete(0, 2)
    assert job.finish_run(3) is True and job.run == 2
    assert names(job, job.start_run(4).ready) == ["a"]
    assert job.tasks[0].attempts == [] and job.namespace == {"n": 2}
    job.mark_running(0, "a#2", 5)
    job.complete(0, 6)
    assert job.finish_run(7) is False and job.state == "completed" and len(job.runs) == 2


def test_illegal_transition_names_the_task() -> None:
    job = make({"name": "a", "cmd": ["x"]})
    with pytest.raises(IllegalTransition, match=r"task 1.0 \(a\): pending -> completed"):
        job.complete(0, 1)


def test_a_crash_early_in_a_later_run_does_not_skip_tasks() -> None:
    """What the store holds after run 1, then a restart before run 2's second task ran."""
    job = make({"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "b", "cmd": ["x"]}]}, repeat=2)
    job.start_run(0)
    for i in (0, 1):
        job.mark_running(i, f"t{i}#1", 1)
        job.complete(i, 2)
    assert job.finish_run(3) is True
    job.start_run(4)  # run 2: "b" is pending again
    saved_job, saved_tasks = job.dump(), [job.full_entry(i) for i in range(2)]
    fresh = make({"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "b", "cmd": ["x"]}]}, repeat=2)
    fresh.load(saved_job, saved_tasks)
    effects, _ = fresh.recover(now=5)
    assert fresh.run == 2 and [t.state for t in fresh.tasks] == ["ready", "pending"]
    assert effects.ready == [0]


def test_the_task_log_replays_starts_and_full_states_in_order() -> None:
    tree = {"concurrent": [{"name": n, "cmd": ["x"], "retries": 1} for n in "abc"]}
    job = make(tree, on_failure="continue")
    job.start_run(0)
    log: list[Any] = []
    job.mark_running(0, "a#1", 1)
    job.mark_running(1, "b#1", 1)
    log += [job.start_entry(0), job.start_entry(1)]
    job.complete(0, 2, result={"x": 1})
    log.append(job.full_entry(0))
    job.end_unsuccessfully(1, "failed", 2, {"type": "E", "message": "m", "traceback": ""})
    log.append(job.full_entry(1))
    job.mark_running(2, "c#1", 3)
    log.append(job.start_entry(2))
    tasks = replay_task_log(log)
    assert tasks[0] == job.dump_task(0) and tasks[1] == job.dump_task(1)
    assert tasks[2] == job.dump_task(2)  # the start entry alone rebuilds the running task
    fresh = make(tree, on_failure="continue")
    fresh.load(job.dump(), log)
    effects, interrupted = fresh.recover(now=9)
    assert [t.state for t in fresh.tasks] == ["completed", "failed", "ready"]
    assert [a.attempt_id for a in interrupted] == ["c#1"] and effects.ready == [2]
    assert fresh.tasks[0].result == {"x": 1} and len(fresh.tasks[2].attempts) == 1
    with pytest.raises(ValueError, match="unknown task log entry"):
        replay_task_log([[7, 0]])


def test_a_done_entry_replays_to_the_full_state_of_a_completed_task() -> None:
    tree = {"concurrent": [{"name": n, "call": "m:f", "retries": 1} for n in "ab"]}
    job = make(tree)
    job.start_run(0)
    log: list[Any] = []
    # a: fails once (full entry, with its error), then completes (a DONE entry clears the error)
    job.mark_running(0, "a#1", 1)
    log.append(job.start_entry(0))
    job.tasks[0].error = {"type": "E", "message": "m", "traceback": ""}
    job.retry_later(0, 2)
    log.append(job.full_entry(0))
    job.retry_due(0)
    attempt = job.mark_running(0, "a#2", 3)
    attempt.pid, attempt.worker = 42, "w1"
    log.append(job.start_entry(0))
    attempt.finished_at, attempt.status = 4, "completed"  # as the scheduler sets them
    job.complete(0, 4, result=[1, 2])
    done = job.entry(0)
    assert done[0] == 2 and len(done) == 7
    log.append(done)
    # b: completed with output kept: the full entry
    job.mark_running(1, "b#1", 1)
    log.append(job.start_entry(1))
    job.tasks[1].remember("a line")
    job.complete(1, 5, result=None)
    assert job.entry(1)[0] == 0
    log.append(job.entry(1))
    tasks = replay_task_log(log)
    assert tasks[0] == job.dump_task(0) and tasks[1] == job.dump_task(1)
    assert tasks[0]["attempts"][-1] == [2, "a#2", 3, 4, "completed", 42, "w1"] and "error" not in tasks[0]
    with pytest.raises(ValueError, match="completed without an attempt"):
        replay_task_log([done])


def test_counts_follow_every_move_and_a_load() -> None:
    tree = {"sequential": [{"name": "a", "call": "m:f"}, {"concurrent": [{"call": "m:f"}] * 3}]}

    def counted(job: Job) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in job.tasks:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    job = make(tree, repeat=2)
    assert job.counts() == counted(job) == {"pending": 4}
    job.start_run(0)
    assert job.counts() == counted(job) == {"ready": 1, "pending": 3}
    run_ok(job, "a")
    assert job.counts() == counted(job) == {"completed": 1, "ready": 3}
    job.mark_running(1, "x#1", 3)
    job.end_unsuccessfully(1, "failed", 4, {"type": "E", "message": "m", "traceback": ""})
    assert job.counts() == counted(job)
    fresh = make(tree, repeat=2)
    fresh.load(job.dump(), [job.full_entry(i) for i in range(len(job.tasks))])
    assert fresh.counts() == counted(fresh) == job.counts()
    job.cancel(5)
    assert job.counts() == counted(job)
    job.start_run(6)  # a new run resets every task
    assert job.counts() == counted(job) == {"ready": 1, "pending": 3}


def _restart(job: Job, tree: Any, now: float, max_interruptions: int = 3, **extra: Any) -> Job:
    """What a new daemon makes of ``job`` as stored while its attempts ran."""
    fresh = make(tree, **extra)
    fresh.load(job.dump(), [job.full_entry(i) for i in range(len(job.tasks))])
    fresh.recover(now, max_interruptions)
    return fresh


def test_daemon_restarts_use_no_retry_up_to_max_interruptions() -> None:
    tree = {"name": "a", "cmd": ["x"]}  # retries: 0
    job = make(tree)
    job.start_run(0)
    for n in range(1, 4):  # three restarts while the attempt runs: each runs it again
        job.mark_running(0, f"a#{n}", n)
        job = _restart(job, tree, now=n + 0.5, max_interruptions=3)
        assert job.tasks[0].state == "ready", n
        assert job.tasks[0].interruptions == n and job.tasks[0].failures == 0
    job.mark_running(0, "a#4", 5)
    job = _restart(job, tree, now=6, max_interruptions=3)  # the fourth is one too many
    t = job.tasks[0]
    assert t.state == "failed" and job.state == "running"
    assert t.error is not None
    assert t.error["message"] == "interrupted 4 times by daemon restarts; max_interruptions = 3"
    assert [a.status for a in t.attempts] == ["interrupted"] * 4


def test_an_interrupted_task_that_then_completes() -> None:
    tree = {"name": "a", "cmd": ["x"]}
    job = make(tree)
    job.start_run(0)
    job.mark_running(0, "a#1", 1)
    job = _restart(job, tree, now=2, max_interruptions=0)  # max 0: the first interruption fails it
    assert job.tasks[0].state == "failed"
    job = make(tree)
    job.start_run(0)
    job.mark_running(0, "a#1", 1)
    job = _restart(job, tree, now=2)
    job.mark_running(0, "a#2", 3)
    assert job.complete(0, 4).run_finished


def test_the_daemon_losing_a_worker_uses_no_retry() -> None:
    job = make({"name": "a", "cmd": ["x"]})
    job.start_run(0)
    lost = {"type": "WorkerDied", "message": "gone", "traceback": ""}
    for n in range(1, 3):
        job.mark_running(0, f"a#{n}", n)
        effects = job.interrupt(0, n + 0.5, lost, max_interruptions=2)
        assert effects.ready == [0] and job.tasks[0].state == "ready"
    job.mark_running(0, "a#3", 3)
    effects = job.interrupt(0, 4, lost, max_interruptions=2)
    assert job.tasks[0].state == "failed" and effects.run_finished
    assert job.tasks[0].error is not None
    assert job.tasks[0].error["message"].startswith("interrupted 3 times by the daemon")
    assert job.tasks[0].error["message"].endswith("; max_interruptions = 2 (last: gone)")
    assert job.tasks[0].failures == 0  # none of them counted against retries


def test_on_interrupt_fail_fails_an_interrupted_attempt_at_once() -> None:
    job = make({"name": "a", "cmd": ["x"], "retries": 3}, on_interrupt="fail")
    job.start_run(0)
    job.mark_running(0, "a#1", 1)
    assert job.interrupt(0, 2, None).run_finished and job.tasks[0].state == "failed"


def test_a_job_is_freed_as_soon_as_it_is_dropped_without_the_cyclic_collector() -> None:
    # Nothing of a job refers to itself (a recursive closure in Job and the spec <-> plan pair did):
    # the daemon runs with a high collector threshold, and such garbage piled up into a pause of
    # tens of milliseconds every few thousand jobs.
    import gc
    import weakref

    spec = parse_job({"name": "j", "root": {"sequential": [
        {"concurrent": [{"name": "a", "cmd": ["x"]}, {"concurrent": [{"name": "b", "cmd": ["x"]}]}]},
        {"name": "c", "cmd": ["x"]},
    ]}})
    enabled = gc.isenabled()
    gc.disable()
    try:
        job = Job("1", spec, {}, now=0.0)
        gone = weakref.ref(job.plan)
        del job, spec
        assert gone() is None
    finally:
        if enabled:
            gc.enable()


def test_a_job_whose_only_task_was_cancelled_ends_cancelled() -> None:
    job = make({"name": "only", "cmd": ["x"]})
    job.start_run(0)
    job.mark_running(0, "only#1", 1)
    effects = job.cancel(2, [0], "cancelled by alice (uid 1000)")
    assert effects.stop == ["only#1"] and job.tasks[0].reason == "cancelled by alice (uid 1000)"
    job.end_unsuccessfully(0, "cancelled", 3, reason=job.tasks[0].reason)
    assert job.finish_run(4) is False and job.state == "cancelled"


def test_a_job_whose_unfinished_tasks_were_cancelled_ends_cancelled_unless_one_failed() -> None:
    tree = {"concurrent": [
        {"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "after_a", "cmd": ["x"]}]},
        {"name": "b", "cmd": ["x"]},
        {"name": "c", "cmd": ["x"]},
    ]}
    job = make(tree, on_failure="continue")
    job.start_run(0)
    run_ok(job, "b")
    for name in ("a", "c"):  # one by one: the skipped task after "a" does not count as a failure
        job.cancel(1, [job.by_name[name]])
    assert job.tasks[job.by_name["after_a"]].state == "skipped"
    assert job.finish_run(2) is False and job.state == "cancelled"
    job = make(tree, on_failure="continue")
    job.start_run(0)
    job.cancel(1, [job.by_name["a"]])
    job.mark_running(job.by_name["b"], "b#1", 1)
    job.end_unsuccessfully(job.by_name["b"], "failed", 2, {"type": "E", "message": "m", "traceback": ""})
    job.cancel(3, [job.by_name["c"]])
    assert job.finish_run(4) is False and job.state == "failed"
