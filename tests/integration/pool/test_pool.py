"""The pool executor end to end: real zygote, real workers, real rings, a recording event sink."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from procpoold.engines import Outcome
from tests.integration.pool.conftest import PoolHarness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_sync_results_and_context(pool: PoolHarness, tmp_path: Path) -> None:
    assert pool.call("add", 2, 3).result == 5
    value = {"a": [1, 2.5, None, True], "b": b"\x00bytes", "c": "text"}
    out = pool.call("echo", value)
    assert (out.status, out.result) == ("completed", value)
    ctx = pool.call("context", name="ctxtask").result
    assert ctx == {"task_name": "ctxtask", "attempt": 1, "job_id": "job1"}
    aid = pool.submit("pid")
    pid = pool.wait(aid)[0].result
    assert pool.events.started[aid] == (pid, pool.events.started[aid][1])
    assert pool.events.started[aid][1].startswith("pool/")


def test_env_and_cwd_apply_to_the_attempt_only(pool: PoolHarness, tmp_path: Path) -> None:
    inside = pool.call("env_and_cwd", "PP_TEST_VAR", env={"PP_TEST_VAR": "yes"}, cwd=str(tmp_path))
    assert inside.result == ["yes", str(tmp_path)]
    for _ in range(2):  # both workers: nothing stays behind
        after = pool.call("env_and_cwd", "PP_TEST_VAR")
        assert after.result[0] is None and after.result[1] != str(tmp_path)


def test_async_results_run_concurrently(make_pool: type) -> None:
    pool = make_pool(workers=1, async_per_worker=4)
    assert pool.call("async_echo", [1, "x"]).result == [1, "x"]  # the pool learns it is async
    assert pool.pool.free_slots() == 1
    start = time.monotonic()
    aids = [pool.submit("async_context", 0.3, name=f"async{i}") for i in range(4)]
    pool.run_until(lambda: pool.pool.free_slots() == 0 or len(pool.events.finished) > 4)
    outcomes = pool.wait(*aids)
    assert time.monotonic() - start < 1.0, "four 0.3 s async attempts on one worker ran one by one"
    assert [o.result for o in outcomes] == [f"async{i}/async{i}" for i in range(4)]
    lines = {(a, m) for a, s, _l, m, _f in pool.events.logs if s == "stdout"}
    assert lines == {(aids[i], f"async line of async{i}") for i in range(4)}


def test_exceptions_carry_type_message_traceback(pool: PoolHarness) -> None:
    out = pool.call("fail", "bad input")
    assert out.status == "failed" and out.error is not None
    assert (out.error.type, out.error.message) == ("ValueError", "bad input")
    assert 'raise ValueError(message)' in out.error.traceback
    assert "procpoold" not in out.error.traceback.splitlines()[1]
    out = pool.call("async_fail")
    assert out.error is not None and (out.error.type, out.error.message) == ("RuntimeError", "async boom")
    out = pool.call("no.such.module:fn")
    assert out.error is not None and out.error.type == "ModuleNotFoundError"
    out = pool.call("unserializable")
    assert out.error is not None and out.error.type == "ResultNotSerializable"
    assert out.error.message.startswith("return value of type object is not msgpack-able")
    spec = pool.spec("noop")
    pool.pool.submit(type(spec)(**{**{f: getattr(spec, f) for f in spec.__slots__}, "kind": "cmd"}))
    out = pool.wait(spec.attempt_id)[0]
    assert out.error is not None and out.error.type == "UnsupportedTask"
    assert pool.call("add", 1, 1).result == 2  # nobody died


def test_64_mib_argument_and_result_spill(pool: PoolHarness) -> None:
    size = 64 * 2**20
    out = pool.call("big", size)
    assert out.status == "completed" and len(out.result) == size
    assert pool.call("length", out.result).result == size
    assert not [e for e in os.listdir("/dev/shm") if e.startswith("procpool-spill-")]


def test_namespace_progress_and_output(pool: PoolHarness) -> None:
    assert pool.call("ns_incr", "n", 3).result == 3
    assert pool.events.namespace == {"n": 3}
    assert pool.call("ns_bad").result == "ProcpoolError: no access to 'forbidden'"
    aid = pool.submit("progress")
    pool.wait(aid)
    assert [p for a, p in pool.events.progress if a == aid] == [
        {"fraction": 0.5}, {"done": 3, "total": 4, "message": "three"}]
    aid = pool.submit("output", 3)
    assert pool.wait(aid)[0].result == "printed"
    logs = [(s, lvl, m, f) for a, s, lvl, m, f in pool.events.logs if a == aid]
    assert [(s, m) for s, _l, m, _f in logs if s != "log"] == [
        ("stdout", "out 0"), ("stdout", "out 1"), ("stdout", "out 2"), ("stderr", "err line"),
        ("stdout", "partial")]
    records = [(lvl, m, f) for s, lvl, m, f in logs if s == "log"]
    assert records[0][:2] == (30, "logged 3")
    assert records[0][2] is not None and records[0][2]["CODE_FUNC"] == "output"
    assert records[0][2]["LOGGER"] == "probes" and records[0][2]["CODE_FILE"].endswith("pool_probes.py")
    assert records[1][0] == 40 and "KeyError: 'k'" in records[1][1]


def test_cancel_sync_interrupts_the_task(pool: PoolHarness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    aid = pool.submit("interruptible", 30, str(marker))
    pool.run_until(lambda: aid in pool.events.started)
    pid = pool.events.started[aid][0]
    time.sleep(0.1)
    pool.pool.stop_attempt(aid, "cancelled")
    out = pool.wait(aid, timeout=5)[0]
    assert out.status == "cancelled" and out.error is not None and out.error.type.endswith("TaskInterrupted")
    assert marker.read_text() == "TaskInterrupted"
    assert pid in pool.pids(), "an interruptible task must not cost its worker"


def test_cancel_async_raises_cancelled_error(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    pool.call("async_echo", 1)
    marker = tmp_path / "count"
    aid = pool.submit("async_cancellable", 30, str(marker))
    other = pool.submit("async_sleep", 0.3)
    pool.run_until(lambda: aid in pool.events.started)
    time.sleep(0.1)
    pool.pool.stop_attempt(aid, "cancelled")
    out, done = pool.wait(aid, other, timeout=5)
    assert out.status == "cancelled" and out.error is not None and out.error.type.endswith("CancelledError")
    assert marker.read_text() == "1"
    assert done.status == "completed"


def test_timeout_kills_a_task_that_ignores_the_interrupt(pool: PoolHarness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    aid = pool.submit("stubborn", 60, str(marker))
    pool.run_until(lambda: aid in pool.events.started)
    pid = pool.events.started[aid][0]
    time.sleep(0.1)
    start = time.monotonic()
    pool.pool.stop_attempt(aid, "timeout")
    out = pool.wait(aid, timeout=5)[0]
    assert 0.4 < time.monotonic() - start < 3
    assert out.status == "timeout" and out.error is not None and out.error.type == "WorkerKilled"
    assert "did not stop within 0.5 s" in out.error.message
    assert marker.read_text() == "interrupted"
    assert pool.call("add", 1, 2).result == 3
    pool.idle_workers(2)
    assert pid not in pool.pids()
    assert pool.events.finish_count[aid] == 1


CRASHES = {
    "exit": "exited with code 3 while running task 'die'",
    "sigkill": "was killed by SIGKILL while running task 'die'; out of memory?",
    "segv": "was killed by SIGSEGV while running task 'die'",
    "runtime": "exited with code 70 while running task 'die'",
}


def kills_only_its_worker(pool: PoolHarness, fn: str, *args: Any) -> tuple[Outcome, int]:
    """Run ``fn`` beside a task on another worker: it fails with WorkerDied, the other one
    completes, the slot is refilled and the dead worker is gone. Returns the outcome and its pid."""
    other = pool.submit("sleep", 0.3)
    pool.run_until(lambda: other in pool.events.started)
    aid = pool.submit(fn, *args)
    out, survivor = pool.wait(aid, other)
    assert out.status == "failed" and out.error is not None and out.error.type == "WorkerDied"
    assert survivor.status == "completed" and survivor.result == 0.3
    pid = pool.events.started[aid][0]
    assert pool.call("add", 2, 2).result == 4  # the slot was refilled
    pool.idle_workers(2)
    assert pid not in pool.pids()
    return out, pid


@pytest.mark.parametrize("stage", ["before", "inside", "after", "encoded"])
@pytest.mark.parametrize("how", sorted(CRASHES))
def test_crash_matrix(make_pool: type, how: str, stage: str) -> None:
    out, pid = kills_only_its_worker(make_pool(workers=2, respawn_backoff_max=0.05), "die", how, stage)
    assert out.error is not None
    assert out.error.message.startswith("worker ") and f"(pid {pid}) " in out.error.message
    assert out.error.message.endswith(CRASHES[how]) or CRASHES[how] + ";" in out.error.message


MALFORMED = [{"t": "done", "id": "x"}, [], [0, "x"], "done", [99], [[0], 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("message", MALFORMED)
def test_a_malformed_result_message_kills_only_that_worker(make_pool: type, message: Any) -> None:
    out, _ = kills_only_its_worker(make_pool(workers=2), "garble", message)
    assert out.error is not None and "sent a malformed message" in out.error.message


def test_dying_workers_back_off(make_pool: type) -> None:
    pool = make_pool(workers=1, respawn_backoff_max=0.3)
    for _ in range(4):
        pool.call("exit_now", 1)
    start = time.monotonic()
    assert pool.call("add", 1, 1).result == 2
    assert time.monotonic() - start > 0.15, "the fourth death in a row did not delay the refill"


def test_resize_up_and_down_without_dropping_work(make_pool: type) -> None:
    pool = make_pool(workers=1)
    pool.idle_workers(1)
    pool.pool.resize(3)
    pool.idle_workers(3)
    aids = [pool.submit("sleep", 0.3) for _ in range(3)]
    pool.run_until(lambda: len(pool.events.started) >= 3)
    assert len({pool.events.started[a][0] for a in aids}) == 3
    pool.pool.resize(1)
    assert pool.pool.free_slots() == 0
    outcomes = pool.wait(*aids)
    assert [o.status for o in outcomes] == ["completed"] * 3
    pool.idle_workers(1)
    assert pool.pool.info()["workers"] == 1


def test_recycle_after_max_tasks(make_pool: type) -> None:
    pool = make_pool(workers=1, max_tasks_per_worker=2)
    pids = [pool.call("pid").result for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_recycle_by_age_when_idle(make_pool: type) -> None:
    pool = make_pool(workers=1, max_worker_age=0.3)
    first = pool.call("pid").result
    pool.run_until(lambda: first not in pool.pids() and len(pool.pids()) == 1)
    assert pool.call("pid").result != first


def test_memory_limit_fails_the_attempt(make_pool: type) -> None:
    pool = make_pool(workers=1, max_memory_per_worker=150 * 2**20, heartbeat_timeout=2.0)
    out = pool.call("allocate", 300, 5.0)
    assert out.status == "failed" and out.error is not None and out.error.type == "MemoryLimitExceeded"
    assert "over max_memory_per_worker (150 MiB)" in out.error.message and "'allocate'" in out.error.message
    assert pool.call("add", 1, 2).result == 3


def test_hung_worker_is_killed(make_pool: type) -> None:
    pool = make_pool(workers=1, heartbeat_timeout=0.6)
    start = time.monotonic()
    out = pool.call("hold_gil", 30)
    assert time.monotonic() - start < 5
    assert out.status == "failed" and out.error is not None and out.error.type == "WorkerHung"
    assert "sent no heartbeat for 0.6 s while running task 'hold_gil'" in out.error.message
    assert pool.call("sleep", 1.0).status == "completed"  # a busy but healthy worker keeps beating


def test_shutdown_interrupts_running_attempts(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=2)
    quick = pool.submit("sleep", 0.1)
    slow = pool.submit("stubborn", 60)
    pool.run_until(lambda: slow in pool.events.started)
    start = time.monotonic()
    pool.close(grace=0.5)
    assert time.monotonic() - start < 3
    assert pool.events.finished[quick].status == "completed"
    assert pool.events.finished[slow].status == "interrupted"


def test_batch_of_many_small_attempts(make_pool: type) -> None:
    pool = make_pool(workers=2)
    pool.idle_workers(2)
    aids = [pool.submit("add", i, 1) for i in range(500)]
    outcomes = pool.wait(*aids)
    assert [o.result for o in outcomes] == [i + 1 for i in range(500)]
    assert pool.pool.info()["completed"] == 500
