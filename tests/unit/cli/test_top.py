"""``procctl top`` and ``status --watch`` without a daemon: what the collector asks for (and how
little once it has seen a job), and the renderings at a given terminal size."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from procpool.cli import top
from procpool.contract.codec import decode_reply, encode_result
from procpool.contract.states import FAILED, FINAL_JOB_STATES, JOB_STATES
from procpool.contract.status import JobStatus
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Job


def make_job(job_id: str, n: int, priority: Any = lambda i: "normal") -> Job:
    raw: dict[str, Any] = {
        "name": f"job{job_id}",
        "on_failure": "continue",
        "root": {"concurrent": [{"name": f"t{i}", "call": "m:f", "priority": priority(i)} for i in range(n)]},
    }
    job = Job(job_id, parse_job(raw), raw, 100.0)
    job.start_run(100.0)
    return job


def wire(value: Any) -> Any:
    """``value`` as the client gets it: through the codec."""
    return decode_reply(encode_result("1", value)).result


class FakeClient:
    """The operations top uses, answered from :class:`Job` objects as the daemon would; counts the
    tasks each reply carries."""

    def __init__(self, *jobs: Job, page: int = 1000) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.page = page
        self.tasks_sent = 0
        self.full_pages = 0

    def _summary(self, jobs: list[Job]) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for j in self.jobs.values():
            by_state[j.state] = by_state.get(j.state, 0) + 1
        queued = sum(t.state == "ready" for j in self.jobs.values() for t in j.tasks)
        engines = {"pool": {"up": True, "busy": 1}, "commands": {"up": True, "busy": 0}}
        return {"version": "0", "pid": 1, "uptime": 5.0,
                "workers": {"configured": 2, "busy": 1, "engines": engines},
                "jobs": {"by_state": by_state, "queued": queued, "running": 0,
                         "list": [wire(status.summary(j)) for j in jobs]}}

    def status(self, job: str | None = None, *, state: str | None = None, limit: int | None = None,
               tasks_from: int | None = None, tasks_limit: int | None = None) -> dict[str, Any]:
        if job is not None:
            assert tasks_from is not None and tasks_limit is not None
            self.full_pages += 1
            page = status.full_page(self.jobs[job], tasks_from, min(tasks_limit, self.page))
            reply: dict[str, Any] = wire(page)
            self.tasks_sent += len(reply["tasks"])
            return reply
        jobs = [j for j in self.jobs.values() if state is None or j.state == state]
        return self._summary(sorted(jobs, key=lambda j: -int(j.id))[:limit])

    def pool(self) -> dict[str, Any]:
        return {"workers": [{"slot": 0, "pid": 10, "state": "busy", "tasks_done": 3, "uss": 3 << 20,
                             "attempts": [{"attempt_id": "1.0@1#1", "task_name": "t0"}]}]}

    def call(self, op: str, args: dict[str, Any]) -> Any:
        assert op == "status" and args["view"] == "columns"
        job = self.jobs[args["job"]]
        if "changes_since" in args:
            reply = status.changes_page(job, args["changes_since"], self.page)
        else:
            reply = status.columns_page(job, args.get("tasks_from", 0), self.page)
        self.tasks_sent += reply["columns"]["count"]
        return wire(reply)


def test_the_collector_shows_running_queued_by_priority_and_failures() -> None:
    job = make_job("1", 8, lambda i: "high" if i in (5, 7) else "low" if i == 6 else "normal")
    job.mark_running(0, "a0", 101.0)
    job.mark_running(1, "a1", 101.0)
    job.end_unsuccessfully(1, FAILED, 102.0, error={"type": "ValueError", "message": "bad\nmore"},
                           exit_code=None)
    collector = top.Collector(FakeClient(job))  # type: ignore[arg-type]
    snap = collector.poll()
    assert [(r.id, r.name, r.job) for r in snap.running] == [("1.0", "t0", "1")]
    assert snap.queued == 6 and snap.by_priority == {"high": 2, "normal": 3, "low": 1} and snap.unread == 0
    # highest priority first, then in order
    assert [q.id for q in snap.next] == ["1.5", "1.7", "1.2", "1.3", "1.4"]
    assert [(f.id, f.what) for f in snap.failures] == [("1.1", "ValueError: bad")]
    line = top.top_line(snap)
    assert "running 1 (pool 1)  queued 6 (high 2, normal 3, low 1)" in line and "now: 1.0 t0" in line
    assert "queues" not in line
    snap.daemon["queues"] = [{"name": "io", "parallel": 4, "running": 2, "waiting": 3, "paused": None},
                             {"name": "gpu", "parallel": 1, "running": 0, "waiting": 0,
                              "paused": {"by": "root"}}]
    assert "queues io 2/4 running, 3 waiting; gpu 0/1 running PAUSED" in top.top_line(snap)


def test_the_next_tasks_come_by_priority_across_jobs_and_failures_newest_first() -> None:
    older = make_job("1", 30)
    newer = make_job("2", 30, lambda i: "high" if i >= 27 else "batch")
    for job, at in ((older, 110.0), (newer, 120.0)):
        for i in range(12):
            job.mark_running(i, f"a{i}", at)
            job.end_unsuccessfully(i, FAILED, at + i, error=None, exit_code=1)
    snap = top.Collector(FakeClient(older, newer)).poll()  # type: ignore[arg-type]
    assert [q.id for q in snap.next] == ["2.27", "2.28", "2.29", "1.12", "1.13"]
    assert snap.by_priority == {"high": 3, "normal": 18, "batch": 15}
    assert [f.id for f in snap.failures] == [f"2.{i}" for i in range(11, 1, -1)]


def test_after_the_first_look_a_refresh_costs_what_changed() -> None:
    job = make_job("1", 3_000)  # (its names and priorities come in 3 pages: within one refresh)
    client = FakeClient(job)
    collector = top.Collector(client)  # type: ignore[arg-type]
    collector.poll()
    first = client.tasks_sent
    assert first == 2 * 3_000  # the whole job once: its columns, and its names and priorities
    for i in range(3):
        job.mark_running(i, f"a{i}", 101.0)
    client.tasks_sent = 0
    snap = collector.poll()
    assert client.tasks_sent == 3  # the three tasks that changed, nothing else
    assert [r.name for r in snap.running] == ["t0", "t1", "t2"]
    assert snap.by_priority == {"normal": 2_997}


def test_names_and_priorities_are_read_a_few_pages_per_refresh_and_once() -> None:
    job = make_job("1", 100)
    client = FakeClient(job, page=10)  # 10 pages of the full view for the 100 ready tasks
    collector = top.Collector(client)  # type: ignore[arg-type]
    snap = collector.poll()
    assert client.full_pages == top.FACT_PAGES
    assert snap.unread == 100 - 10 * top.FACT_PAGES and sum(snap.by_priority.values()) == 10 * top.FACT_PAGES
    assert "not read yet" in top.top_line(snap)
    for _ in range(3):
        snap = collector.poll()
    assert client.full_pages == 10 and snap.unread == 0 and snap.by_priority == {"normal": 100}
    collector.poll()
    assert client.full_pages == 10  # never read again


def test_finished_jobs_leave_the_view_unless_they_failed_and_those_are_read_once() -> None:
    done, broken = make_job("1", 2), make_job("2", 2)
    client = FakeClient(done, broken)
    collector = top.Collector(client)  # type: ignore[arg-type]
    collector.poll()
    for job in (done, broken):
        for i in range(2):
            job.mark_running(i, f"a{i}", 101.0)
            if job is broken and i == 1:
                job.end_unsuccessfully(i, FAILED, 102.0, error=None, exit_code=4)
            else:
                job.complete(i, 102.0)
        job.finish_run(103.0)
    assert (done.state, broken.state) == ("completed", "failed")
    snap = collector.poll()
    assert snap.running == [] and snap.next == [] and list(collector.jobs) == ["2"]
    assert [(f.id, f.what) for f in snap.failures] == [("2.1", "exit 4")]
    client.tasks_sent = 0
    assert collector.poll().failures == snap.failures
    assert client.tasks_sent == 0


def snapshot(running: int, failures: int) -> top.Snapshot:
    snap = top.Snapshot(at=200.0, daemon={"version": "0.1.0", "pid": 42, "uptime": 75.0,
                                          "workers": {"configured": 2, "busy": 2},
                                          "jobs": {"by_state": {"running": 3, "failed": 1}}},
                        workers=[{"slot": i, "pid": 1000 + i, "state": "busy", "tasks_done": 12,
                                  "rss": 30 << 20, "attempts": [{"attempt_id": f"7.{i}@1#1",
                                                                 "task_name": "compile-everything"}]}
                                 for i in range(2)], queued=40)
    snap.running = [top.RunningTask(f"7.{i}", f"a-rather-long-task-name-{i}", "7", "alice (1000)", 150.0,
                                    "50% halfway") for i in range(running)]
    snap.by_priority = {"high": 10, "normal": 30}
    snap.next = [top.QueuedTask(f"8.{i}", f"next-{i}", "8", "high") for i in range(5)]
    snap.failures = [top.Failure(f"6.{i}", f"broken-{i}", "6", FAILED, 190.0, "ValueError: " + "x" * 200)
                     for i in range(failures)]
    return snap


def render(renderable: Any, width: int, height: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None, legacy_windows=False).print(renderable)
    return out.getvalue().rstrip("\n").split("\n")


@pytest.mark.parametrize("width", [40, 64, 80, 160])
def test_the_top_screen_fits_the_terminal(width: int) -> None:
    lines = render(top.top_view(snapshot(running=30, failures=30), width, 30, 1.0), width, 30)
    assert len(lines) <= 30
    assert max(cell_len(line) for line in lines) <= width
    text = "\n".join(lines)
    assert "7.0" in text and "8.0" in text and "6.0" in text  # ids are never cut short
    assert "… and" in text  # it says there is more than fits
    assert ("USER" in text) == (width >= top.NARROW)


def test_a_quiet_daemon_on_a_big_terminal() -> None:
    snap = top.Snapshot(at=200.0, daemon={"workers": {}, "jobs": {}}, workers=[])
    text = "\n".join(render(top.top_view(snap, 100, 50, 1.0), 100, 50))
    assert "no workers" in text and "nothing running" in text and "nothing waits" in text
    assert "none among the recent jobs" in text


def test_rows_are_shared_fairly_and_nothing_is_lost_when_all_fits() -> None:
    assert top._share(10, [2, 20, 0, 3]) == [2, 5, 0, 3]
    assert top._share(100, [2, 20, 0, 3]) == [2, 20, 0, 3]
    assert top._share(0, [2, 3]) == [0, 0]
    assert sum(top._share(7, [9, 9, 9])) == 7


def columns(job: Job) -> JobStatus:
    return JobStatus.decode(wire(status.columns_page(job, 0)))


@pytest.mark.parametrize("width", [30, 60, 120])
def test_the_watch_view_fits_and_shows_counts_running_and_failed(width: int) -> None:
    job = make_job("9", 300)
    for i in range(40):
        job.mark_running(i, f"a{i}", 101.0)
        if i < 25:
            job.end_unsuccessfully(i, FAILED, 102.0, error=None, exit_code=2)
    lines = render(top.watch_view(columns(job), 110.0, width, 20), width, 20)
    assert len(lines) <= 20 and max(cell_len(line) for line in lines) <= width
    text = "\n".join(lines)
    assert text.startswith('job 9 "job9" running')
    assert "25/300" in text
    assert "Running" in text and "Did not complete" in text and "exit 2" in text and "more" in text
    line = top.watch_line(columns(job), 110.0)
    assert "job 9 running  25/300 done  260 ready, 15 running, 25 failed  running: t25, t26, t27" in line


def test_no_color_turns_every_style_off(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = snapshot(running=2, failures=2)
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    con = top.console(out)
    assert con.color_system is None
    con.print(top.top_view(snap, 80, 40, 1.0))
    assert "\x1b" not in out.getvalue()
    monkeypatch.delenv("NO_COLOR")
    coloured = Console(file=io.StringIO(), force_terminal=True, width=80, height=40)
    assert coloured.color_system is not None  # (what NO_COLOR turns off)


def test_the_states_top_asks_about_are_the_unfinished_ones() -> None:
    unfinished = {"pending", "queued", "running", "held", "scheduled", "paused"}
    assert {s for s in JOB_STATES if s not in FINAL_JOB_STATES} == unfinished


_PROBE = """
import contextlib, io, sys
sys.argv = ["procctl", *{args!r}]
from procpool.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
print("rich" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["top", "--help"], ["status", "--help"], ["validate", "-"]])
def test_rich_is_loaded_only_by_the_live_views(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(args=args)], input="{}", capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.split()[-1] == "False", out


def test_watch_needs_a_job() -> None:
    from click.testing import CliRunner

    from procpool.cli.main import cli

    result = CliRunner().invoke(cli, ["--socket", "/nonexistent/control.sock", "status", "--watch"])
    assert result.exit_code == 2
    assert "--watch needs a JOB" in result.output and "procctl top" in result.output
