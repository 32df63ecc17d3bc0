"""Attempts queued on a busy worker behind others (prefetch): stopping them, their timeout, and
results that a worker pushes without waking the daemon."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from procpoold.engines import NOT_STARTED
from tests.integration.pool.conftest import DEADLINE, PoolHarness


def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait without running the pool's loop (so that the daemon reads nothing meanwhile)."""
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _open(gate: Path) -> None:
    tmp = gate.with_name(gate.name + ".tmp")
    tmp.write_text("go")
    tmp.rename(gate)


def _queue_behind(pool: PoolHarness, tmp_path: Path, **fields: object) -> tuple[str, str, Path, Path]:
    """One worker runs ``mark_then_wait`` (the head, held by a gate) with a second one queued
    behind it (both functions are known to be short, so the second is prefetched). Returns the
    two attempt ids, the head's gate and the queued attempt's marker."""
    pool.idle_workers(1)
    warm = tmp_path / "warm"
    _open(warm)
    assert pool.call("mark_then_wait", str(tmp_path / "w"), str(warm)).result == "through"
    gate, marker = tmp_path / "gate", tmp_path / "queued-started"
    head = pool.submit("mark_then_wait", str(tmp_path / "head-started"), str(gate))
    queued = pool.submit("mark_then_wait", str(marker), str(tmp_path / "never"), **fields)
    pool.run_until(lambda: head in pool.events.started and queued in pool.events.started)
    assert pool.events.started[head][0] == pool.events.started[queued][0]  # the same worker
    _until((tmp_path / "head-started").exists, "the head to start")
    return head, queued, gate, marker


def test_a_queued_attempt_is_stopped_before_it_starts(make_pool: type, tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    head, queued, gate, marker = _queue_behind(pool, tmp_path)
    pool.pool.stop_attempt(queued, "cancelled")
    out = pool.wait(queued)[0]
    assert out.status == "cancelled" and out.error is not None and out.error.type == NOT_STARTED
    assert head not in pool.events.finished  # it did not wait for the head
    _open(gate)
    assert pool.wait(head)[0].result == "through"
    assert pool.call("add", 1, 1).result == 2  # the worker dropped it and went on
    assert not marker.exists()
    assert pool.events.finish_count[queued] == 1


def test_the_timeout_of_a_queued_attempt_counts_from_its_start(make_pool: type, tmp_path: Path) -> None:
    """The scheduler's timer counts from the hand-over; when it runs out while the attempt is
    still queued behind another, the pool stops the attempt ``timeout`` after it starts."""
    pool = make_pool(workers=1)
    timeout = 0.5
    head, queued, gate, marker = _queue_behind(pool, tmp_path, timeout=timeout)
    pool.pool.stop_attempt(queued, "timeout")  # (as the scheduler's timer does)
    pool.run_until(lambda: True)
    assert queued not in pool.events.finished
    opened = time.monotonic()
    _open(gate)
    assert pool.wait(head)[0].result == "through"
    pool.run_until(marker.exists, what="the queued attempt to start")
    out = pool.wait(queued)[0]
    # It started after the gate opened, so it cannot have been stopped sooner than this.
    assert time.monotonic() - opened >= timeout
    assert out.status == "timeout" and out.error is not None
    assert out.error.type.endswith("TaskInterrupted"), out.error
    assert pool.events.finish_count[queued] == 1


def test_a_timeout_in_the_pools_queue_counts_from_the_start(make_pool: type, tmp_path: Path) -> None:
    """An attempt that waits in the pool's own queue (no worker free) is not timed out there."""
    pool = make_pool(workers=1)
    pool.idle_workers(1)
    gate = tmp_path / "gate"
    head = pool.submit("mark_then_wait", str(tmp_path / "head"), str(gate))  # unknown: not short
    waiting = pool.submit("add", 2, 3, timeout=0.05)
    pool.run_until(lambda: head in pool.events.started)
    assert waiting not in pool.events.started
    pool.pool.stop_attempt(waiting, "timeout")
    pool.run_until(lambda: True)
    assert waiting not in pool.events.finished
    _open(gate)
    assert [o.status for o in pool.wait(head, waiting)] == ["completed", "completed"]
    assert pool.events.finished[waiting].result == 5


def test_stopping_an_attempt_the_worker_went_on_to_interrupts_it(make_pool: type, tmp_path: Path) -> None:
    """A worker pushes a result without waking the daemon while enough work is queued behind it:
    the daemon may still believe an attempt queued that the worker has started. Stopping it then
    interrupts it (it is not reported as stopped before it started while it runs)."""
    pool = make_pool(workers=1, spin_us=0, prefetch_budget=0.05)  # 3 ms calls: 16 may queue
    pool.idle_workers(1)
    for _ in range(8):  # the worker's mean run time: about 3 ms
        assert pool.call("sleep", 0.003).status == "completed"
    gate, marker = tmp_path / "gate", tmp_path / "second-started"
    _open(tmp_path / "warm")
    assert pool.call("mark_then_wait", str(tmp_path / "w"), str(tmp_path / "warm")).result == "through"
    first = pool.submit("sleep", 0.003)
    second = pool.submit("mark_then_wait", str(marker), str(gate))
    rest = [pool.submit("sleep", 0.003) for _ in range(3)]
    pool.run_until(lambda: all(a in pool.events.started for a in [first, second, *rest]))
    _until(marker.exists, "the second attempt to start")  # the loop does not run meanwhile
    assert first not in pool.events.finished  # its result waits in the ring, unread
    pool.pool.stop_attempt(second, "cancelled")
    outcomes = pool.wait(first, second, *rest)
    assert outcomes[0].status == "completed"
    assert outcomes[1].status == "cancelled" and outcomes[1].error is not None
    assert outcomes[1].error.type.endswith("TaskInterrupted"), outcomes[1].error
    assert [o.status for o in outcomes[2:]] == ["completed"] * 3
    assert all(pool.events.finish_count[a] == 1 for a in [first, second, *rest])


def test_an_idle_worker_takes_the_tail_of_a_busy_workers_queue(make_pool: type, tmp_path: Path) -> None:
    """Nothing left in the pool's queue: a worker that runs dry takes the last attempt queued on
    a busy worker (behind two others or more), which drops it; each attempt runs once."""
    pool = make_pool(workers=2, prefetch_budget=0.1)  # 10 ms calls: up to 10 per worker
    pool.idle_workers(2)
    for _ in range(4):
        assert pool.call("sleep", 0.01).status == "completed"
    _open(tmp_path / "warm")
    assert pool.call("mark_then_wait", str(tmp_path / "w"), str(tmp_path / "warm")).result == "through"
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    head_a = pool.submit("mark_then_wait", str(tmp_path / "a-started"), str(gate_a))
    head_b = pool.submit("mark_then_wait", str(tmp_path / "b-started"), str(gate_b))
    queued = [pool.submit("sleep", 0.01) for _ in range(6)]
    pool.run_until(lambda: all(a in pool.events.started for a in [head_a, head_b, *queued]))
    pid_a, pid_b = pool.events.started[head_a][0], pool.events.started[head_b][0]
    on_a = [a for a in queued if pool.events.started[a][0] == pid_a]
    assert len(on_a) == 3, pool.events.started  # (the dispatch spreads them)
    _open(gate_b)
    # B runs its queue dry, then takes A's queued attempts but the first one behind A's head.
    pool.run_until(lambda: all(a in pool.events.finished for a in queued if a not in on_a[:1]),
                   what="B to run its queue and the tail of A's")
    assert head_a not in pool.events.finished and on_a[0] not in pool.events.finished
    assert all(pool.events.started[a][0] == pid_b for a in on_a[1:])
    assert pool.pool.info()["rebalanced"] == 2
    _open(gate_a)
    outcomes = pool.wait(head_a, head_b, *queued)
    assert [o.status for o in outcomes] == ["completed"] * 8
    assert all(pool.events.finish_count[a] == 1 for a in [head_a, head_b, *queued])
    assert pool.call("add", 1, 2).result == 3  # A dropped the calls it lost, and goes on


def test_an_attempt_asked_back_moves_once_the_worker_dropped_it(make_pool: type, tmp_path: Path) -> None:
    """The slow way of a move (the books showed the attempt too close to its start to take it at
    once): the worker drops the call when it gets to it, says so, and the attempt goes back to
    the pool's queue and runs (here on the same worker, the only one), once."""
    import msgpack

    from procpoold.pool.protocol import CANCEL

    pool = make_pool(workers=1)
    head, queued, gate, marker = _queue_behind(pool, tmp_path)
    w = pool.pool._where[queued]
    w.running[queued].moving = True
    pool.pool._send(w, [msgpack.packb([CANCEL, queued])])
    _open(gate)
    assert pool.wait(head)[0].result == "through"
    _open(tmp_path / "never")  # (the queued attempt waits for this gate once it runs)
    out = pool.wait(queued)[0]
    assert out.status == "completed" and out.result == "through"
    assert marker.exists() and pool.events.finish_count[queued] == 1
