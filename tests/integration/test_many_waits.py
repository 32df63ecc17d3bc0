"""Many waits on one job, answered by their timeouts in the reverse of the order they came in
(a client that gives each wait a slightly shorter timeout): each answer must cost O(1), not a scan
of every other wait on the job, or the loop stalls for seconds."""

from __future__ import annotations

import time
from pathlib import Path

from procpoold.config import Config
from procpoold.control.server import Deferred
from procpoold.engines.registry import Engines
from procpoold.supervisor import Daemon
from tests.integration.test_callback_containment import ScriptedExecutor

WAITS = 20_000  # max_pending_waits by default


def test_waits_answered_in_reverse_order_cost_linear_time(tmp_path: Path) -> None:
    config = Config(socket=tmp_path / "control.sock", state_dir=tmp_path / "state", store=False, workers=1)
    executor = ScriptedExecutor()
    daemon = Daemon(config, Engines([executor]))
    try:
        executor.start(daemon.loop, daemon.scheduler)
        job, _ = daemon.scheduler.submit({"name": "forever", "root": {"cmd": ["raise-at-stop"]}}, 1000)
        answered: list[bytes] = []
        for i in range(WAITS):
            deferred = daemon.wait(job.id, 3600.0 - i * 1e-3)
            assert isinstance(deferred, Deferred)
            deferred.bind(i, answered.append)
        [entries] = daemon._waits.values()
        answers = [answer for _deferred, answer in entries]
        started = time.process_time()
        for answer in reversed(answers):  # as their timers would fire
            answer()
        took = time.process_time() - started
        assert len(answered) == WAITS and daemon._waits == {}
        assert took < 2.5, f"{WAITS} timed-out waits took {took:.1f} s of CPU to answer"
    finally:
        executor.running.clear()
        daemon.close()


def test_many_waiters_on_a_big_job_are_answered_without_stalling_the_loop(tmp_path: Path) -> None:
    """When a job of 1,000 tasks finishes with 1,000 waits on it, each answer is a status page of
    about 300 KB: built and encoded for all of them in one turn of the loop, that stalled it for
    seconds (20,000 waits, the default max_pending_waits: minutes, past the watchdog)."""
    config = Config(socket=tmp_path / "control.sock", state_dir=tmp_path / "state", store=False, workers=1)
    executor = ScriptedExecutor()
    daemon = Daemon(config, Engines([executor]))
    waiters = 1_000
    try:
        executor.start(daemon.loop, daemon.scheduler)
        tasks = [{"name": f"t{i}", "cmd": ["ok"]} for i in range(1_000)]
        job, _ = daemon.scheduler.submit({"name": "big", "root": {"concurrent": tasks}}, 1000)
        answered: list[bytes] = []
        for i in range(waiters):
            deferred = daemon.wait(job.id, 3600.0)
            assert isinstance(deferred, Deferred)
            deferred.bind(i, answered.append)
        longest = 0.0
        deadline = time.monotonic() + 120
        while len(answered) < waiters and time.monotonic() < deadline:
            started = time.process_time()
            daemon.loop.run_once(0)
            longest = max(longest, time.process_time() - started)
        assert job.state == "completed" and len(answered) == waiters
        assert longest < 1.0, f"one turn of the loop took {longest:.1f} s of CPU"
    finally:
        daemon.close()
