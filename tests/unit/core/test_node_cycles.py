"""Nodes that cycle on their own clock (``repeat``/``every`` on a group or task): the Job semantics,
driven by hand (no scheduler): ``Driver`` plays the scheduler's part of starting ready tasks and of
firing a waiting node's timer when the test's clock reaches it."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.tree import TreeError, parse_job
from procpoold.core.cycles import CyclingJob
from procpoold.core.jobs import Effects, Job, replay_task_log

pytestmark = pytest.mark.unit


def make(root: Any, **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, now=0.0)


class Driver:
    """The scheduler's part: ready tasks start when asked; due cycles start when the clock allows."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.now = 0.0
        self.running: set[int] = set()
        self.ran: list[str] = []  # task names, in the order their attempts started
        self.finished = False
        self.apply(job.start_run(self.now))

    def apply(self, effects: Effects) -> None:
        for i in effects.ready:
            t = self.job.tasks[i]
            if t.state == "ready":
                self.job.mark_running(i, f"{t.id}#{len(t.attempts) + 1}", self.now)
                self.running.add(i)
                self.ran.append(t.spec.name)
        if effects.run_finished:
            self.finished = True

    def index(self, name: str) -> int:
        return self.job.by_name[name]

    def done(self, name: str) -> None:
        i = self.index(name)
        self.running.discard(i)
        self.apply(self.job.complete(i, self.now))

    def fail(self, name: str) -> None:
        i = self.index(name)
        self.running.discard(i)
        self.apply(self.job.end_unsuccessfully(i, "failed", self.now, {"type": "E", "message": "x",
                                                                         "traceback": ""}))

    def tick(self, to: float | None = None) -> None:
        """Move the clock (to ``to``, else to the earliest wait) and start what is due."""
        job = self.job
        assert isinstance(job, CyclingJob)
        if to is None:
            to = min(job.waits.values())
        self.now = to
        for node in [n for n, when in job.waits.items() if when <= to]:
            effects = job.cycle_due(node, self.now)
            assert effects is not None
            self.apply(effects)

    def cycle(self, name: str) -> int:
        job = self.job
        assert isinstance(job, CyclingJob)
        return next(job.cycle[n] for n in job.cycling if job.node_name(n) == name)


FAST_SLOW = {"concurrent": [
    {"name": "fast", "repeat": 5, "sequential": [{"name": "a", "cmd": ["a"]}, {"name": "b", "cmd": ["b"]}]},
    {"name": "slow", "cmd": ["slow"]},
]}


def test_a_plain_tree_makes_a_plain_job_and_a_repeating_node_a_cycling_one() -> None:
    assert type(make({"cmd": ["x"]})) is Job
    assert type(make({"cmd": ["x"], "repeat": 1})) is Job  # one cycle: nothing to cycle
    assert type(make(FAST_SLOW)) is CyclingJob


def test_the_fast_group_runs_its_five_cycles_while_the_slow_task_still_runs() -> None:
    d = Driver(make(FAST_SLOW))
    assert d.ran == ["a", "slow"]
    for cycle in range(1, 6):
        assert d.cycle("fast") == cycle
        d.done("a")
        d.done("b")
        if cycle < 5:
            d.tick()  # no "every": the next cycle starts from the loop, at once
    assert d.ran == ["a", "slow"] + ["b", "a"] * 4 + ["b"]
    assert d.job.tasks[d.index("slow")].state == "running" and not d.finished
    d.done("slow")
    assert d.finished and d.job.finish_run(d.now) is False and d.job.state == "completed"


def test_a_dependent_of_a_repeating_node_waits_for_its_last_cycle() -> None:
    d = Driver(make({"concurrent": [
        {"name": "poll", "cmd": ["p"], "repeat": 3},
        {"name": "report", "cmd": ["r"], "depends_on": ["poll"]},
    ]}))
    for _ in range(2):
        d.done("poll")
        assert d.job.tasks[d.index("report")].state == "pending"
        d.tick()
    d.done("poll")
    assert d.ran == ["poll"] * 3 + ["report"]
    d.done("report")
    assert d.finished


def test_every_on_a_task_waits_that_long_between_its_cycles() -> None:
    job = make({"name": "tick", "cmd": ["t"], "every": 10, "repeat": 3})
    d = Driver(job)
    assert isinstance(job, CyclingJob)
    d.done("tick")
    assert job.waits == {("task", 0): 10.0} and job.tasks[0].state == "completed" and not d.finished
    assert job.cycle_due(("task", 0), 9.9) is None  # (a timer that fired early: it waits on)
    d.tick(10.0)
    assert job.cycle[("task", 0)] == 2 and job.tasks[0].state == "running"
    d.now = 12.0
    d.done("tick")
    assert job.waits == {("task", 0): 22.0}
    d.tick()
    d.done("tick")
    assert d.finished and not job.waits and job.cycle[("task", 0)] == 3


def test_every_alone_repeats_for_ever() -> None:
    spec = parse_job({"root": {"name": "t", "cmd": ["t"], "every": 5}})
    assert spec.cycles == {("task", 0): (None, 5)}


def test_a_failure_ends_the_cycling_and_propagates() -> None:
    d = Driver(make({"sequential": [
        {"name": "loop", "repeat": "forever", "concurrent": [{"name": "a", "cmd": ["a"]},
                                                              {"name": "b", "cmd": ["b"]}]},
        {"name": "after", "cmd": ["z"]},
    ]}, on_failure="continue"))
    d.done("a")
    d.done("b")
    d.tick()
    d.done("a")
    d.fail("b")
    job = d.job
    assert isinstance(job, CyclingJob)
    assert d.finished and not job.waits and job.cycle[("group", 1)] == 2
    assert job.tasks[d.index("after")].state == "skipped"
    assert job.finish_run(d.now) is False and job.state == "failed"


def test_with_on_failure_stop_a_failure_elsewhere_ends_a_waiting_node() -> None:
    d = Driver(make({"concurrent": [
        {"name": "tick", "cmd": ["t"], "every": 60},
        {"name": "bad", "cmd": ["b"]},
    ]}))
    d.done("tick")
    assert d.job.waits
    d.fail("bad")
    assert d.finished and not d.job.waits  # type: ignore[attr-defined]
    assert d.job.finish_run(d.now) is False and d.job.state == "failed"


def test_nested_nodes_cycle_within_each_outer_cycle_and_start_again_at_one() -> None:
    d = Driver(make({"name": "outer", "repeat": 2, "sequential": [
        {"name": "inner", "cmd": ["i"], "repeat": 3},
        {"name": "last", "cmd": ["l"]},
    ]}))
    for outer in (1, 2):
        assert d.cycle("outer") == outer
        for inner in (1, 2, 3):
            assert d.cycle("inner") == inner
            d.done("inner")
            if inner < 3:
                d.tick()
        d.done("last")
        if outer == 1:
            assert d.cycle("inner") == 3  # (until the outer node's next cycle starts)
            d.tick()
            assert d.cycle("inner") == 1
    assert d.ran == (["inner"] * 3 + ["last"]) * 2 and d.finished


def test_a_job_level_run_starts_every_node_at_cycle_one() -> None:
    job = make({"name": "n", "cmd": ["n"], "repeat": 2}, repeat=2)
    d = Driver(job)
    d.done("n")
    d.tick()
    d.done("n")
    assert d.finished and d.cycle("n") == 2
    assert job.finish_run(d.now) is True
    d.finished = False
    d.apply(job.start_run(d.now))
    assert d.cycle("n") == 1 and job.tasks[0].state == "running"


def test_stop_ends_a_forever_node_after_its_cycle() -> None:
    job = make({"concurrent": [{"name": "poll", "cmd": ["p"], "repeat": "forever"},
                               {"name": "tick", "cmd": ["t"], "every": 30}]})
    assert isinstance(job, CyclingJob)
    d = Driver(job)
    d.done("tick")  # waits 30 s for its next cycle
    job.stop_requested = True
    d.apply(job.stop_cycles(d.now))  # the waiting node is complete now
    assert not job.waits and not d.finished
    d.done("poll")  # the running cycle ends, and no other starts
    assert d.finished and job.finish_run(d.now) is False and job.state == "completed"
    assert d.ran == ["poll", "tick"]


def test_cancel_drops_the_waits_and_ends_the_run() -> None:
    job = make({"sequential": [{"name": "tick", "cmd": ["t"], "every": 30}, {"name": "z", "cmd": ["z"]}]})
    d = Driver(job)
    d.done("tick")
    d.apply(job.cancel(d.now))
    assert d.finished and job.finish_run(d.now) is False and job.state == "cancelled"


def test_the_cycle_and_the_wait_survive_a_restart() -> None:
    root = {"concurrent": [
        {"name": "fast", "repeat": 5, "every": 7, "concurrent": [{"name": "a", "cmd": ["a"]}]},
        {"name": "slow", "cmd": ["s"]},
    ]}
    job = make(root)
    d = Driver(job)
    entries: list[Any] = []
    d.done("a")
    d.tick()
    d.done("a")  # cycle 2 ended: waits for cycle 3
    entries = [job.full_entry(i) for i in range(len(job.tasks))]
    again = make(root)
    again.load(job.dump(), entries)
    assert isinstance(again, CyclingJob) and isinstance(job, CyclingJob)
    assert again.cycle == job.cycle and again.waits == job.waits == {("group", 1): d.now + 7}
    effects, interrupted = again.recover(d.now)
    assert [again.tasks[i].spec.name for i in effects.ready] == ["slow"] and len(interrupted) == 1
    assert not effects.run_finished
    due = again.cycle_due(("group", 1), d.now + 7)
    assert due is not None and due.ready == [again.by_name["a"]] and again.cycle[("group", 1)] == 3


def test_a_restart_mid_cycle_keeps_the_cycle_count() -> None:
    root = {"name": "g", "repeat": 4,
            "sequential": [{"name": "a", "cmd": ["a"]}, {"name": "b", "cmd": ["b"]}]}
    job = make(root)
    d = Driver(job)
    d.done("a")
    d.done("b")
    d.tick()
    d.done("a")  # cycle 2, "b" running
    log = [job.full_entry(i) for i in range(len(job.tasks))]
    assert replay_task_log(log)[1]["state"] == "running"
    again = make(root)
    again.load(job.dump(), log)
    effects, _ = again.recover(d.now)
    assert isinstance(again, CyclingJob) and again.cycle[("group", 0)] == 2
    assert effects.ready == [1] and again.tasks[0].state == "completed"


def test_a_retry_resumes_the_cycle_where_the_task_failed() -> None:
    d = Driver(make({"name": "g", "repeat": 3, "sequential": [{"name": "a", "cmd": ["a"]}]}))
    d.done("a")
    d.tick()
    d.fail("a")
    job = d.job
    assert job.finish_run(d.now) is False and job.state == "failed"
    d.apply(job.retry(d.now, job.retry_plan()))
    assert d.cycle("g") == 2 and job.tasks[0].state == "running"
    d.done("a")
    d.tick()
    d.done("a")
    assert d.finished and d.cycle("g") == 3


def test_tree_errors_name_the_bad_node() -> None:
    for root, fragment in (
        ({"concurrent": [{"cmd": ["x"], "repeat": 0}]}, "root.concurrent[0].repeat"),
        ({"concurrent": [{"concurrent": [{"cmd": ["x"]}], "every": 0}]}, "root.concurrent[0].every"),
        ({"concurrent": [{"name": "g", "repeat": 2, "concurrent": [{"name": "in", "cmd": ["x"]}]},
                         {"cmd": ["y"], "depends_on": ["in"]}]}, "root.concurrent[1].depends_on"),
    ):
        with pytest.raises(TreeError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            parse_job({"root": root})
    # inside the same repeating group a dependency on a node inside it is fine
    parse_job({"root": {"name": "g", "repeat": 2, "concurrent": [
        {"name": "in", "cmd": ["x"]}, {"cmd": ["y"], "depends_on": ["in"]}]}})


def test_the_run_does_not_end_while_a_restarted_cycle_runs() -> None:
    # ("fast" comes first: the scan of final tasks passes "a" in its first cycle; its next cycle
    # must move the scan back, or "b" and "slow" ending would end the run while "a" runs.)
    d = Driver(make({"concurrent": [
        {"name": "fast", "repeat": 2,
         "concurrent": [{"name": "a", "cmd": ["a"]}, {"name": "b", "cmd": ["b"]}]},
        {"name": "slow", "cmd": ["slow"]},
    ]}))
    d.done("a")
    d.done("b")
    d.tick()
    d.done("slow")
    d.done("b")
    assert not d.finished and d.job.tasks[d.index("a")].state == "running"
    d.done("a")
    assert d.finished


def test_the_status_carries_each_cycling_node_and_procctl_shows_it_on_its_line() -> None:
    from procpool.cli import render
    from procpoold.core import status

    job = make({"concurrent": [
        {"name": "fast", "repeat": 10, "sequential": [{"name": "a", "cmd": ["a"]},
                                                      {"name": "poll", "cmd": ["p"], "every": 4}]},
        {"name": "slow", "cmd": ["s"]},
    ]})
    assert "cycles" not in status.detail(make({"cmd": ["x"]}))  # a plain job's head is as it was
    d = Driver(job)
    d.done("a")
    d.done("poll")  # "poll" waits 4 s for its next cycle, inside cycle 1 of "fast"
    full = status.full(job)
    assert full["job"]["cycles"] == [
        {"kind": "group", "index": 1, "name": "fast", "cycle": 1, "repeat": 10, "next_cycle_at": None},
        {"kind": "task", "index": 1, "name": "poll", "cycle": 1, "repeat": "forever", "next_cycle_at": 4.0},
    ]
    assert status.summary_status(job)["job"]["cycles"] == full["job"]["cycles"]
    tree = render.job_tree(dict(full), now=0.0)
    assert "sequential fast  (cycle 1/10)" in tree, tree
    poll_line = next(line for line in tree.splitlines() if "poll" in line)
    assert poll_line.endswith("(cycle 1, next cycle in 4.0s)"), tree
    digest = render.job_digest(dict(full["job"]), [], now=0.0)
    assert "cycles: group fast cycle 1/10; task poll cycle 1, next cycle in 4.0s" in digest, digest
