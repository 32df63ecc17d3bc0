"""The pool executor end to end: real zygote, real workers, real rings, a recording event sink."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest

from procpoold.engines import Outcome
from procpoold.oom import OomCounter
from procpoold.pool import lifecycle as lifecycle_module
from procpoold.pool import pool as pool_module
from procpoold.pool import shm
from procpoold.pool.ring import Ring, RingCorrupt
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


def test_io_async_results_run_concurrently(make_pool: type) -> None:
    pool = make_pool(workers=1, async_per_worker=4)
    assert pool.pool.free_slots() == 1
    aids = [pool.submit("async_context", 0.3, name=f"async{i}", io=True) for i in range(4)]
    pool.run_until(lambda: pool.pool.free_slots() == 0 or len(pool.events.finished) > 4)
    outcomes = pool.wait(*aids)  # (io_peak, below, says they ran at once: not one by one)
    assert [o.result for o in outcomes] == [f"async{i}/async{i}" for i in range(4)]
    lines = {(a, m) for a, s, _l, m, _f in pool.events.logs if s == "stdout"}
    assert lines == {(aids[i], f"async line of async{i}") for i in range(4)}
    assert pool.pool.info()["io_peak"] == 4


def test_an_async_task_without_io_holds_its_worker_alone(make_pool: type, tmp_path: Path) -> None:
    """A CPU-bound task (no "io" hint) runs alone on its worker, async def or not: nothing joins
    it there, nothing is queued behind it, even once the pool knows the function is async."""
    pool = make_pool(workers=2, async_per_worker=8)
    assert pool.call("async_echo", 1).result == 1  # (the pool knows async_echo is async def)
    gate = tmp_path / "gate"
    gate.mkdir()
    aids = [pool.submit("async_gated", str(gate), f"a{i}") for i in range(4)]
    running = lambda: sorted(p.name for p in gate.iterdir())  # noqa: E731
    pool.run_until(lambda: len(running()) == 2, what="two attempts running")
    end = time.monotonic() + 0.3
    pool.run_until(lambda: time.monotonic() > end)
    assert running() == ["started-a0", "started-a1"], "a CPU task shared its worker"
    held = [len(w["attempts"]) for w in pool.pool.workers_info()]
    assert held == [1, 1], held
    assert pool.pool.info()["queued"] == 2 and pool.pool.free_slots() == 0
    (gate / "open").touch()
    outcomes = pool.wait(*aids)
    assert [o.result for o in outcomes] == [1] * 4  # each worker saw one at a time
    assert pool.pool.info()["io_peak"] == 0


def test_io_on_a_plain_function_fails_before_it_runs(pool: PoolHarness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    out = pool.call("mark_then_wait", str(marker), str(tmp_path), io=True)
    assert out.status == "failed" and out.error is not None and out.error.type == "TypeError", out
    assert "is not an async def function" in out.error.message and '"io": true' in out.error.message
    assert not marker.exists()
    assert pool.call("async_echo", 2, io=True).result == 2  # the worker goes on


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
    assert out.status == "completed" and len(out.result) == size, out.error
    assert pool.call("length", out.result).result == size
    assert not [e for e in os.listdir("/dev/shm") if e.startswith("procpool-spill-")]


def test_a_1_mib_value_goes_through_the_ring_without_a_spill(pool: PoolHarness,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default ring capacity a 1 MiB argument and a 1 MiB result fit in the rings: no
    spill object is written for the worker, none is taken from it."""
    written: list[int] = []
    taken: list[bytes] = []
    write_spill, take_spill = shm.write_spill, Ring._take_spill

    def counting_write(data: Any, *args: Any) -> str:
        written.append(len(data))
        return write_spill(data, *args)

    def counting_take(self: Ring, ref: bytes) -> bytes:
        taken.append(ref)
        return take_spill(self, ref)

    monkeypatch.setattr(shm, "write_spill", counting_write)
    monkeypatch.setattr(Ring, "_take_spill", counting_take)
    payload = os.urandom(2**20)
    out = pool.call("echo", payload)
    assert out.status == "completed" and out.result == payload, out.error
    assert (written, taken) == ([], [])
    # (and a value over half the ring still spills, both ways)
    big = os.urandom(3 * 2**20)
    out = pool.call("echo", big)
    assert out.status == "completed" and out.result == big, out.error
    assert len(written) == 1 and len(taken) == 1


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
    pool.run_until(lambda: Path(f"{marker}.started").exists(), what="the function running")
    pid = pool.events.started[aid][0]
    pool.pool.stop_attempt(aid, "cancelled")
    out = pool.wait(aid, timeout=5)[0]
    assert out.status == "cancelled" and out.error is not None and out.error.type.endswith("TaskInterrupted")
    assert marker.read_text() == "TaskInterrupted"
    assert pid in pool.pids(), "an interruptible task must not cost its worker"


def test_a_stop_while_the_worker_imports_the_function_interrupts_it_before_it_runs(
    make_pool: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop's signal came while the worker was still importing the task's module, before any
    task code ran: the handler ignored it, the function then ran, and only the SIGKILL after the
    grace ended it, costing the worker (a timeout during a slow first import did the same)."""
    monkeypatch.setenv("PP_SLOW_IMPORT_DIR", str(tmp_path))  # (read by the module, in the worker)
    pool = make_pool(workers=1)
    marker = tmp_path / "m"
    aid = pool.submit("tests.support.slow_import_probe:interruptible", 30, str(marker))
    pool.run_until(lambda: (tmp_path / "importing").exists(), what="the worker importing the module")
    pid = int((tmp_path / "importing").read_text())
    pool.pool.stop_attempt(aid, "cancelled")  # the import ends once the signal has come
    out = pool.wait(aid, timeout=30)[0]
    assert out.status == "cancelled" and out.error is not None, out
    assert out.error.type.endswith("TaskInterrupted"), out.error
    assert not Path(f"{marker}.started").exists()  # stopped before its code began
    assert pid in pool.pids(), "the worker was killed"


def test_cancel_async_raises_cancelled_error(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    pool.call("async_echo", 1)
    marker = tmp_path / "count"
    aid = pool.submit("async_cancellable", 30, str(marker))
    other = pool.submit("async_sleep", 0.3)
    pool.run_until(lambda: Path(f"{marker}.started").exists(), what="the function running")
    pool.pool.stop_attempt(aid, "cancelled")
    out, done = pool.wait(aid, other, timeout=5)
    assert out.status == "cancelled" and out.error is not None and out.error.type.endswith("CancelledError")
    assert marker.read_text() == "1"
    assert done.status == "completed"


def test_timeout_kills_a_task_that_ignores_the_interrupt(pool: PoolHarness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    aid = pool.submit("stubborn", 60, str(marker))
    pool.run_until(lambda: Path(f"{marker}.started").exists(), what="the function running")
    pid = pool.events.started[aid][0]
    start = time.monotonic()
    pool.pool.stop_attempt(aid, "timeout")
    out = pool.wait(aid, timeout=5)[0]
    assert time.monotonic() - start > 0.4  # not before its grace (and within the wait's 5 s)
    assert out.status == "timeout" and out.error is not None and out.error.type == "WorkerKilled"
    assert "did not stop within 0.5 s" in out.error.message
    assert marker.read_text() == "interrupted"
    assert pool.call("add", 1, 2).result == 3
    pool.idle_workers(2)
    assert pid not in pool.pids()
    assert pool.events.finish_count[aid] == 1


#: What a SIGKILL the pool did not send is said to be: not the OOM killer's when the cgroup's count
#: of OOM kills can be read (it did not go up), a question otherwise (see procpoold.oom).
KILL_HINT = " (not by the OOM killer)" if OomCounter().read() is not None else "; out of memory?"

CRASHES = {
    "exit": "exited with code 3 while running task 'die'",
    "sigkill": f"was killed by SIGKILL while running task 'die'{KILL_HINT}",
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


def arm_decoders(pool: PoolHarness) -> None:
    """Arm both workers with ``die_when_decoding`` (two attempts dispatched together go to the
    two idle workers, one each)."""
    pool.idle_workers(2)
    armed = pool.wait(pool.submit("die_when_decoding"), pool.submit("die_when_decoding"))
    assert {o.result for o in armed} == pool.pids() and len(pool.pids()) == 2


@pytest.mark.parametrize("stage", ["decode", "before", "inside", "after", "encoded"])
@pytest.mark.parametrize("how", sorted(CRASHES))
def test_crash_matrix(make_pool: type, how: str, stage: str) -> None:
    pool = make_pool(workers=2, respawn_backoff_max=0.05)
    if stage == "decode":  # the worker dies while it decodes the call's arguments
        arm_decoders(pool)
    out, pid = kills_only_its_worker(pool, "die", how, stage)
    assert out.error is not None
    assert out.error.message.startswith("worker ") and f"(pid {pid}) " in out.error.message
    assert out.error.message.endswith(CRASHES[how]) or CRASHES[how] + ";" in out.error.message


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def too_deep(inside: Callable[[Any], list[Any]]) -> list[Any]:
    """A value that msgpack packs ``inside`` a message, but cannot decode (deeper than its
    decoder's stack)."""
    for depth in range(900, 1200):
        value = nested(depth)
        try:
            data = msgpack.packb(inside(value))
        except ValueError:
            break
        try:
            msgpack.unpackb(data)
        except msgpack.StackError:
            return value
    pytest.skip("this msgpack decodes everything it packs")


def test_arguments_the_worker_cannot_decode_fail_only_their_attempt(make_pool: type) -> None:
    pool = make_pool(workers=1)
    pid = pool.call("pid").result
    # Map keys msgpack's strict decoder refuses: a dict holds them, so the worker takes them.
    value = {1: "int", (2, (3, "x")): "tuple", None: "nil", 1.5: "float", b"k": [{-1: True}]}
    assert pool.call("describe", value).result == repr(((value,), {}))
    # Nested deeper than the decoder's stack: this attempt fails, and says why.
    out = pool.call("echo", too_deep(lambda v: [0, "a", "m:f", [], [v], None, None, None, None]))
    assert out.status == "failed" and out.error is not None
    assert (out.error.type, out.error.message) == (
        "ArgumentsNotDecodable", "cannot decode the arguments of task 'echo': StackError: nested too deeply")
    # Decoded, but not usable as keyword arguments.
    out = pool.call("describe", kwargs={1: "a"})
    assert out.status == "failed" and out.error is not None and out.error.type == "TypeError"
    assert "keywords must be strings" in out.error.message
    # A namespace value the worker cannot decode: that request fails, not the worker.
    pool.events.namespace["deep"] = too_deep(lambda v: [2, 1, True, v])
    assert pool.call("ns_try", "deep").result == (
        "ProcpoolError: cannot decode the daemon's reply: StackError: nested too deeply")
    assert pool.call("pid").result == pid  # the same worker served them all
    assert pool.pool.info()["deaths"] == 0


def test_a_result_with_keys_that_are_not_strings_fails_only_its_attempt(make_pool: type) -> None:
    pool = make_pool(workers=1)
    pid = pool.call("pid").result
    out = pool.call("echo", {"fine": {1: "a"}})  # the worker packs it; clients could not read it
    assert out.status == "failed" and out.error is not None and out.error.type == "ResultNotSerializable"
    assert out.error.message.startswith("the return value has a map key that is not a string (")
    assert pool.call("echo", {"fine": {"1": "a"}}).result == {"fine": {"1": "a"}}
    assert pool.call("pid").result == pid and pool.pool.info()["deaths"] == 0


def test_results_popped_before_a_damaged_record_still_count(make_pool: type,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The ring's own test damages a record for real and checks that pop_many hands what it popped
    # before the damage over in the error (tests/unit/native); here the pool must use them.
    pool = make_pool(workers=1)
    pid = pool.call("pid").result
    real = Ring.pop_many
    damaged: list[bytes] = []

    def pop_many(self: Ring, max_count: int = 256) -> list[bytes]:
        got = real(self, max_count)
        if got and not damaged and any(msgpack.unpackb(m)[0] == pool_module.DONE for m in got):
            damaged.extend(got)
            exc = RingCorrupt("corrupt record (code -8)", -8)
            exc.partial = got
            raise exc
        return got

    monkeypatch.setattr(Ring, "pop_many", pop_many)
    out = pool.call("add", 20, 22)
    assert damaged and (out.status, out.result) == ("completed", 42)  # not lost with the ring
    monkeypatch.undo()
    pool.idle_workers(1)  # the worker that wrote the damaged ring was replaced
    assert pid not in pool.pids() and pool.pool.info()["completed"] >= 2


class FullQueue:
    """The log queue as the pool sees it (``has_room``, ``when_room``), full until ``drain()``."""

    def __init__(self) -> None:
        self.full = True
        self.waiting: list[Callable[[], None]] = []

    def has_room(self) -> bool:
        return not self.full

    def when_room(self, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)

    def drain(self) -> None:
        self.full = False
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


def test_a_full_log_queue_pauses_the_worker_not_its_output(make_pool: type) -> None:
    # log_policy block: while the log queue is full the worker's result ring is not read, so a task
    # that prints blocks on its full ring, and nothing it printed is dropped; paused for longer than
    # heartbeat_timeout, it is not taken for hung.
    queue = FullQueue()
    pool = make_pool(workers=1, heartbeat_timeout=0.4, ring_capacity=16384, sink=queue)
    lines = 5000  # far more than a 16 KiB ring holds
    aid = pool.submit("output", lines)
    pool.run_until(lambda: len(queue.waiting) > 0, what="the pool to stop reading for the full queue")
    printed = len([e for e in pool.events.logs if e[0] == aid])
    assert printed < lines and aid not in pool.events.finished
    deadline = time.monotonic() + 1.2  # three heartbeat timeouts with the ring left unread
    pool.run_until(lambda: time.monotonic() > deadline, what="time to pass")
    assert aid not in pool.events.finished and len([e for e in pool.events.logs if e[0] == aid]) == printed
    assert [w["log_paused"] for w in pool.pool.workers_info()] == [True]  # procctl pool shows it
    queue.drain()
    [out] = pool.wait(aid)
    assert (out.status, out.result) == ("completed", "printed"), out.error
    got = [e[3] for e in pool.events.logs if e[0] == aid and e[1] == "stdout"]
    assert got[:lines] == [f"out {i}" for i in range(lines)] and got[-1] == "partial"
    assert pool.pool.info()["deaths"] == 0 and not pool.pool.workers_info()[0]["log_paused"]


MALFORMED = [{"t": "done", "id": "x"}, [], [0, "x"], "done", [99], [[0], 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("message", MALFORMED)
def test_a_malformed_result_message_kills_only_that_worker(make_pool: type, message: Any) -> None:
    out, _ = kills_only_its_worker(make_pool(workers=2), "garble", message)
    assert out.error is not None and "sent a malformed message" in out.error.message


def test_dying_workers_back_off(make_pool: type, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Deaths refill the slot at once until DEATH_BURST of them fall within DEATH_WINDOW; from
    then on each refill waits, twice as long as the one before, up to respawn_backoff_max; a
    worker that outlives the window puts the wait back to BACKOFF_START."""
    start, burst = pool_module.BACKOFF_START, pool_module.DEATH_BURST
    cap = 4 * start
    monkeypatch.setattr(lifecycle_module, "DEATH_WINDOW", 600.0)  # however slow this machine is
    caplog.set_level(logging.WARNING, logger="procpoold.pool")
    pool = make_pool(workers=1, respawn_backoff_max=cap)

    def death() -> tuple[bool, float | None, float]:
        """A worker dies: was its slot refilled at once, the refill's wait, the next wait."""
        caplog.clear()
        out = pool.call("exit_now", 1)
        assert out.error is not None and out.error.type == "WorkerDied"
        said = (re.search(r"keep dying .* slot 0 in ([0-9.]+) s", r.getMessage()) for r in caplog.records)
        waits = [float(m.group(1)) for m in said if m]
        assert len(waits) <= 1
        return pool.pool._slots[0] is not None, waits[0] if waits else None, pool.pool._backoff

    for _ in range(burst - 1):
        assert death() == (True, None, start)
    assert [death() for _ in range(4)] == [
        (False, start, 2 * start), (False, 2 * start, cap), (False, cap, cap), (False, cap, cap)]
    # The worker now outlives the window: the next death counts alone.
    monkeypatch.setattr(lifecycle_module, "DEATH_WINDOW", 0.5)
    assert pool.call("sleep", 0.6).status == "completed"
    assert death() == (True, None, start)


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


def test_async_attempts_per_worker_are_limited(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1, async_per_worker=2)
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "open").touch()
    assert pool.call("async_gated", str(warm), "warm", io=True).result == 1
    gate = tmp_path / "gate"
    gate.mkdir()
    aids = [pool.submit("async_gated", str(gate), f"a{i}", io=True) for i in range(5)]
    running = lambda: sorted(p.name for p in gate.iterdir())  # noqa: E731
    pool.run_until(lambda: len(running()) == 2, what="two async attempts running")
    end = time.monotonic() + 0.3
    pool.run_until(lambda: time.monotonic() > end)
    assert running() == ["started-a0", "started-a1"], "more than async_per_worker attempts started"
    assert pool.pool.info()["queued"] == 3 and pool.pool.free_slots() == 0
    assert not pool.events.finished.keys() & set(aids)
    (gate / "open").touch()
    outcomes = pool.wait(*aids)
    assert [o.status for o in outcomes] == ["completed"] * 5
    assert max(o.result for o in outcomes) == 2  # most at once, as the worker saw it
    assert running() == ["open"] + [f"started-a{i}" for i in range(5)]


def open_gate(gate: Path, text: str = "go") -> None:
    """Create the file ``gate`` of a ``gated`` attempt, with ``text`` in it from the start."""
    tmp = gate.with_name(gate.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(gate)


def test_prefetched_attempts_of_a_dead_worker_run_on_its_successor(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    warm = tmp_path / "warm"
    open_gate(warm)
    pid = pool.call("gated", str(warm)).result  # both functions are known to be short now
    assert pool.call("add", 1, 1).result == 2
    gate = tmp_path / "gate"
    head = pool.submit("gated", str(gate))
    queued = [pool.submit("add", i, 100) for i in range(5)]
    pool.run_until(lambda: all(a in pool.events.started for a in [head, *queued]))
    assert {pool.events.started[a][0] for a in [head, *queued]} == {pid}  # queued behind the head
    open_gate(gate, "exit")  # the head's worker exits before it starts any of them
    outcomes = pool.wait(head, *queued)
    assert outcomes[0].error is not None and outcomes[0].error.message.endswith(
        "exited with code 5 while running task 'gated'")
    assert [(o.status, o.result) for o in outcomes[1:]] == [("completed", i + 100) for i in range(5)]
    assert all(pool.events.started[a][0] not in (pid, None) for a in queued)
    assert all(pool.events.finish_count[a] == 1 for a in queued)


def test_recycle_after_max_tasks(make_pool: type) -> None:
    pool = make_pool(workers=1, max_tasks_per_worker=2)
    pids = [pool.call("pid").result for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_recycle_by_age_when_idle(make_pool: type) -> None:
    pool = make_pool(workers=1, max_worker_age=0.3)
    first = pool.call("pid").result
    pool.run_until(lambda: first not in pool.pids() and len(pool.pids()) == 1)
    assert pool.call("pid").result != first


def test_recycle_by_age_waits_for_the_running_attempt(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1, max_worker_age=0.3)
    gate = tmp_path / "gate"
    aid = pool.submit("gated", str(gate))
    pool.run_until(lambda: aid in pool.events.started)
    pid = pool.events.started[aid][0]

    def mine() -> dict[str, Any]:
        return next(w for w in pool.pool.workers_info() if w["pid"] == pid)

    pool.run_until(lambda: mine()["retiring"], what="the busy worker to age out")
    # Out of its slot (a new worker serves it), but left to finish its attempt.
    assert mine()["state"] == "busy" and [a["attempt_id"] for a in mine()["attempts"]] == [aid]
    pool.run_until(lambda: len(pool.pids()) == 2, what="the slot's new worker")
    end = time.monotonic() + 0.2
    pool.run_until(lambda: time.monotonic() > end)
    assert aid not in pool.events.finished and psutil.pid_exists(pid)
    open_gate(gate)
    out = pool.wait(aid)[0]
    assert (out.status, out.result) == ("completed", pid)
    pool.run_until(lambda: pid not in pool.pids(), what="the aged worker to exit")
    info = pool.pool.info()
    assert info["recycled"] >= 1 and info["deaths"] == 0 and info["failed"] == 0


def test_memory_limit_recycles_an_idle_worker(make_pool: type) -> None:
    # A worker is forked from this test process, whose pages count in its RSS until they are
    # written: the limit stands above what this process holds (which grows with the tests run in it
    # before), and the attempt alone allocates more than the limit.
    limit = max(150 * 2**20, psutil.Process().memory_info().rss + 64 * 2**20)
    pool = make_pool(workers=1, max_memory_per_worker=limit)
    pool.idle_workers(1)
    [pid] = pool.pids()
    assert psutil.Process(pid).memory_info().rss < limit
    # The attempt grows the worker over the limit and ends long before the daemon's memory check
    # of busy workers (check_interval, 1 s, after the dispatch) could kill it: the worker is
    # retired once idle instead.
    out = pool.call("hoard", limit // 2**20 + 50)
    assert (out.status, out.result) == ("completed", pid)
    pool.run_until(lambda: pid not in pool.pids(), what="the worker over the limit to be retired")
    info = pool.pool.info()
    assert (info["recycled"], info["deaths"], info["failed"]) == (1, 0, 0)
    assert pool.call("pid").result != pid


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


def _syscall(pid: int, tid: int) -> list[str]:
    """What thread ``tid`` of ``pid`` is blocked in: [number, arg1, arg2, ...], or ["running"]."""
    return Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()


#: The request ring's futex wait: futex(2) (202 on x86-64), FUTEX_WAIT_BITSET, not private (the
#: ring is shared memory; the GIL and the locks of a process wait with private futexes).
RING_WAIT = ["202", "0x9"]


def _until(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)
    return value


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads x86-64 syscall numbers")
def test_a_stale_interrupt_does_not_swallow_a_namespace_reply(make_pool: type, tmp_path: Path) -> None:
    """A stale interrupt signal (its attempt ended, its cancel was read long ago) lands while a
    task waits for a namespace reply, and its handler runs once the reply is in the ring: the
    wait must still end with the reply.

    To line the events up, another thread of the worker holds the GIL: the signal interrupts the
    ring's futex wait, and the main thread then waits for the GIL (the handler cannot run); the
    daemon pushes the reply; the thread lets go of the GIL, and the handler runs.
    """
    pool = make_pool(workers=1)
    pool.events.namespace["k"] = 42
    fifo, ready = tmp_path / "fifo", tmp_path / "ready"
    os.mkfifo(fifo)
    writers: list[int] = []

    def stale_interrupt(aid: str, op: str, args: dict[str, Any]) -> None:
        pid = pool.events.started[aid][0]
        assert pid is not None
        _until(lambda: _syscall(pid, pid)[:3:2] == RING_WAIT, "the task to wait for its reply")

        def open_fifo() -> int | None:
            try:
                return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: the thread has not opened it yet
                return None

        writers.append(_until(open_fifo, "the GIL thread to open the fifo"))
        tid = int(_until(lambda: ready.exists() and ready.read_text(), "the GIL thread's id"))
        _until(lambda: _syscall(pid, tid)[0] == "0", "the GIL thread to hold the GIL in read()")
        os.kill(pid, signal.SIGUSR1)  # as the zygote would send it, late
        _until(lambda: (lambda s: s[0] == "202" and s[:3:2] != RING_WAIT)(_syscall(pid, pid)),
               "the interrupted wait to wait for the GIL")
        # After this returns the daemon pushes the reply; then the thread lets go of the GIL.
        pool.loop.call_soon(lambda: os.write(writers[0], b"x"))

    pool.events.on_namespace = stale_interrupt
    try:
        aid = pool.submit("ns_get_behind_gil", "k", str(fifo), str(ready))
        out = pool.wait(aid, timeout=5)[0]
    finally:
        for fd in writers:
            os.close(fd)
    assert (out.status, out.result) == ("completed", 42), out.error


def test_cancel_while_waiting_for_a_namespace_reply(make_pool: type) -> None:
    pool = make_pool(workers=1, kill_grace=2.0)
    pool.events.namespace["k"] = 1
    pool.events.on_namespace = lambda aid, op, args: pool.pool.stop_attempt(aid, "cancelled")
    aid = pool.submit("ns_then_sleep", "k", 30)
    out = pool.wait(aid, timeout=10)[0]
    assert out.status == "cancelled" and out.error is not None and out.error.type.endswith("TaskInterrupted")
    assert pool.events.started[aid][0] in pool.pids()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads x86-64 syscall numbers")
def test_results_read_together_are_reported_in_one_batch(make_pool: type) -> None:
    """Everything one drain of a result ring finds is reported in one attempts_finished call, in
    the order the worker sent it, each attempt once."""
    pool = make_pool(workers=1, spin_us=0)
    pool.idle_workers(1)
    assert pool.call("add", 0, 1).result == 1  # the pool learns that "add" is short: prefetch
    pid = next(iter(pool.pids()))
    aids = [pool.submit("add", i, 1) for i in range(20)]
    pool.run_until(lambda: all(a in pool.events.started for a in aids), what="all dispatched")
    # The worker runs them all and goes to sleep on its request ring; the loop reads nothing
    # meanwhile, so one drain then finds every result.
    _until(lambda: _syscall(pid, pid)[:3:2] == RING_WAIT, "the worker asleep on its request ring")
    outcomes = pool.wait(*aids)
    assert [o.result for o in outcomes] == [i + 1 for i in range(20)]
    assert all(pool.events.finish_count[a] == 1 for a in aids)
    assert max(pool.events.batches) >= 10, pool.events.batches
