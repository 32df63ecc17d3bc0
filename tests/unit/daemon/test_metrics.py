"""The task accounting behind ``procctl metrics`` (procpoold.metrics): the bounded histogram and its
p95, the per-second throughput ring, the window of recent outcomes, the bound on task names, and
what the scheduler reports into it."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from procpoold.engines import Outcome, TaskError
from procpoold.metrics import (
    BOUNDS,
    MAX_NAMES,
    OTHER,
    THROUGHPUT_SECONDS,
    Durations,
    TaskMetrics,
    Throughput,
    Window,
    name_key,
)
from tests.unit.daemon.test_scheduler import make

pytestmark = pytest.mark.unit


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_p95_is_within_one_bucket_of_the_exact_value(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-3, 1.5) for _ in range(20_000)]
    d = Durations()
    for v in values:
        d.add(v)
    exact = exact_quantile(values, 0.95)
    estimate = d.quantile(0.95)
    assert estimate is not None
    step = 2 ** 0.25  # four buckets per doubling
    assert exact / step <= estimate <= exact * step
    assert d.mean() == pytest.approx(sum(values) / len(values))
    assert d.count == len(values) and d.largest == max(values)


def test_the_histogram_is_bounded_and_never_reports_past_the_largest_value() -> None:
    d = Durations()
    for i in range(100_000):
        d.add((i % 7) * 1e-4)
    d.add(5e6)  # past the last bound: the overflow bucket
    assert len(d.buckets) == len(BOUNDS) + 1
    assert d.quantile(1.0) == 5e6
    single = Durations()
    single.add(0.3)
    p95 = single.quantile(0.95)
    assert p95 is not None and 0.3 / 1.2 <= p95 <= 0.3
    single.add(-1.0)  # a clock that went back counts as 0
    assert single.count == 2 and single.total == pytest.approx(0.3)
    assert Durations().quantile(0.95) is None and Durations().mean() is None


def test_cumulative_buckets_rise_and_end_with_the_count() -> None:
    d = Durations()
    for v in (0.0005, 0.002, 0.002, 0.5, 3.0):
        d.add(v)
    buckets = d.cumulative()
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), 5)
    assert dict(buckets)[BOUNDS[0]] == 1  # 0.5 ms is at most the first bound (1 ms)
    assert buckets[-2][0] >= 3.0 and buckets[-2][1] == 5  # nothing past the last bucket used


def test_throughput_counts_each_second_of_the_last_minute() -> None:
    tp = Throughput()
    tp.add(1000.2, 3)
    tp.add(1000.9)
    tp.add(1002.5, 2)
    series = tp.series(1002.7)
    assert len(series) == THROUGHPUT_SECONDS
    assert series[-3:] == [4, 0, 2] and sum(series) == 6
    # a minute later the old seconds are gone, and a slot reused for a new second starts at 0
    tp.add(1000.1 + THROUGHPUT_SECONDS, 5)
    series = tp.series(1000.5 + THROUGHPUT_SECONDS)
    assert series[-1] == 5 and sum(series) == 7  # 1002's 2 are still within the minute


def test_the_window_holds_the_last_n_outcomes_whatever_the_batches() -> None:
    rng = random.Random(7)
    window = Window(10)
    reference: deque[bool] = deque(maxlen=10)
    assert window.rate() is None
    for _ in range(500):
        ok, n = rng.random() < 0.7, rng.choice([1, 1, 2, 3, 9, 10, 25])
        window.add(ok, n)
        reference.extend([ok] * n)
        assert window.filled == len(reference)
        assert window.ok == sum(reference)
    window.resize(4)
    assert (window.size, window.filled, window.rate()) == (4, 0, None)
    with pytest.raises(ValueError):
        Window(0)


def task(name: str, state: str, started: float | None, finished: float | None) -> Any:
    attempts = [SimpleNamespace(started_at=started, finished_at=finished)] if started is not None else []
    spec = SimpleNamespace(name=name)
    return SimpleNamespace(spec=spec, state=state, attempts=attempts, finished_at=finished)


def test_numbered_names_share_a_line() -> None:
    assert [name_key(n) for n in ("root.17", "shard-07", "t123", "load", "v2x", "42")] == [
        "root.*", "shard-*", "t*", "load", "v2x", "*"]
    m = TaskMetrics()
    tasks = [task(f"root.{i}", "completed", 100.0, 100.5) for i in range(1000)]
    m.completed(tasks, list(range(len(tasks))))
    assert list(m.by_name) == ["root.*"] and m.by_name["root.*"].count == 1000


def test_names_past_the_bound_fold_into_one_bucket() -> None:
    m = TaskMetrics()
    tasks = [task(f"t{i}x", "completed", 100.0, 100.5) for i in range(MAX_NAMES + 50)]
    m.completed(tasks, list(range(len(tasks))))
    assert len(m.by_name) == MAX_NAMES
    snap = m.snapshot(101.0)
    assert snap["durations"][OTHER]["count"] == 50
    assert snap["durations"]["t0x"] == {"count": 1, "mean": 0.5, "p95": pytest.approx(0.5, rel=0.2),
                                       "max": 0.5, "total": 0.5}
    assert snap["tasks"]["completed"] == snap["throughput"]["last_minute"] == MAX_NAMES + 50


def test_outcomes_success_rate_and_the_recent_window() -> None:
    m = TaskMetrics(window=4)
    changes: list[int] = []
    m.on_change = lambda: changes.append(1)
    m.completed([task("a", "completed", 1.0, 2.0)] * 3, [0, 1, 2])
    for state in ("failed", "timeout", "cancelled", "skipped"):
        m.ended(task("a", state, 1.0, 4.0) if state != "skipped" else task("a", state, None, None))
    snap = m.snapshot(4.5)
    t = snap["tasks"]
    assert (t["completed"], t["failed"], t["timed_out"], t["cancelled"], t["skipped"]) == (3, 1, 1, 1, 1)
    assert t["processed"] == 6  # skipped tasks never ran
    assert t["success_rate"] == pytest.approx(3 / 5)  # a cancel is no verdict on the task
    assert snap["recent"] == {"size": 4, "tasks": 4, "success_rate": 0.5}  # ok ok fail fail
    assert snap["durations"]["a"]["count"] == 6 and snap["durations"]["a"]["max"] == 3.0
    assert len(changes) == 4  # the batch once, then each end but the skip


class CountingSink:
    """What the scheduler calls on the journal's sink (as bench/scheduler_bench.py has it)."""

    def __init__(self) -> None:
        self.named: dict[str, int] = {}
        self.acked = 0
        self.on_events: Any = None

    def caller_site(self, depth: int = 1) -> int:
        return 1

    def name_job(self, job_id: str, fields: dict[str, str], names: list[str]) -> int:
        self.named[job_id] = len(self.named) + 1
        return self.named[job_id]

    def event(self, *_item: object) -> None: ...

    def started(self, *_item: object) -> None: ...

    def seal(self) -> None: ...

    def forget_job(self, job_id: str) -> None:
        self.named.pop(job_id, None)

    def record(self, *_args: object) -> None: ...


@pytest.mark.parametrize("with_sink", [False, True], ids=["logging", "journal"])
def test_the_scheduler_reports_completions_in_batches_and_failures_one_by_one(with_sink: bool) -> None:
    loop, executor, scheduler = make(slots=4)
    if with_sink:
        scheduler.journal = CountingSink()  # type: ignore[assignment]
    scheduler.submit({"name": "j", "root": {"concurrent": [
        {"name": "ok1", "cmd": ["true"]}, {"name": "ok2", "cmd": ["true"]}, {"name": "bad", "cmd": ["true"]},
    ]}})
    loop.run_once(0)
    assert len(executor.submitted) == 3
    batches: list[int] = []
    original = scheduler.metrics.completed

    def completed(tasks: Any, indices: list[int]) -> None:
        batches.append(len(indices))
        original(tasks, indices)

    scheduler.metrics.completed = completed  # type: ignore[method-assign]
    ok = [s for s in executor.submitted if s.task_name.startswith("ok")]
    bad = [s for s in executor.submitted if s.task_name == "bad"]
    scheduler.attempts_finished([Outcome(s.attempt_id, "completed", result=1) for s in ok]
                                + [Outcome(bad[0].attempt_id, "failed", error=TaskError("E", "no"))])
    loop.run_once(0)
    counts = scheduler.metrics.counts
    assert (counts["completed"], counts["failed"]) == (2, 1)
    assert scheduler.metrics.by_name["ok*"].count == 2 and scheduler.metrics.by_name["bad"].count == 1
    # with the journal's sink (the daemon's case) a run of completions is accounted in one call
    assert batches == ([2] if with_sink else [])
    loop.close()
