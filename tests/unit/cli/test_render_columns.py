"""procctl's rendering of a columnar status: bounded, whatever the job's size."""

from __future__ import annotations

from typing import Any

from procpool.cli import render
from procpool.contract.codec import decode_reply, encode_result
from procpool.contract.states import FAILED
from procpool.contract.status import JobStatus
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Job


def running_job(n: int, failures: int, running: int) -> Job:
    raw: dict[str, Any] = {
        "name": "big",
        "on_failure": "continue",
        "root": {"concurrent": [{"name": f"t{i}", "call": "m:f"} for i in range(n)]},
    }
    job = Job("5", parse_job(raw), raw, 100.0)
    job.start_run(100.0)
    for i in range(n - running):
        job.mark_running(i, f"a{i}", 101.0)
        if i < failures:
            job.tasks[i].remember(f"output of t{i}")
            error = {"type": "ValueError", "message": f"bad {i}", "traceback": ""}
            job.end_unsuccessfully(i, FAILED, 102.0, error=error, exit_code=None)
        else:
            job.complete(i, 102.0)
    for i in range(n - running, n):
        job.mark_running(i, f"a{i}", 101.0)
        job.tasks[i].progress = {"done": 3, "total": 4}
    return job


def decoded(job: Job) -> JobStatus:
    return JobStatus.decode(decode_reply(encode_result("1", status.columns_page(job, 0))).result)


def test_a_summary_lists_failures_then_running_tasks_and_counts_the_rest() -> None:
    job = running_job(1_000, failures=25, running=3)
    text = render.job_summary(decoded(job), now=110.0, hint="; --all lists every task")
    lines = text.splitlines()
    assert lines[0].startswith('job 5 "big"  running  run 1/1  9.0s')  # from its first attempt
    assert lines[1] == "  1000 tasks: 3 running, 972 completed, 25 failed"
    assert lines[2] == "  ✘ t0  failed  1 attempt  1.0s  ValueError: bad 0"
    assert [line.split()[1] for line in lines[2:22]] == [f"t{i}" for i in range(20)]
    assert lines[22] == "  … and 8 more failed or running tasks; --all lists every task"
    # the first failures shown in detail (their error and last lines), at most three
    assert lines[23:] == [
        "── t0 failed: ValueError: bad 0", "  last 1 line of output:", "  | output of t0",
        "── t1 failed: ValueError: bad 1", "  last 1 line of output:", "  | output of t1",
        "── t2 failed: ValueError: bad 2", "  last 1 line of output:", "  | output of t2",
    ]


def test_a_summary_shows_running_tasks_with_their_progress() -> None:
    job = running_job(500, failures=1, running=2)
    lines = render.job_summary(decoded(job), now=110.0).splitlines()
    assert lines[2].startswith("  ✘ t0  failed")
    assert lines[3:5] == [f"  ▶ t{i}  running  1 attempt  9.0s  3/4" for i in (498, 499)]
    assert len(lines) == 8  # and t0 in detail: its error and its last line


def test_a_job_that_completed_is_two_lines() -> None:
    job = running_job(20_000, failures=0, running=0)
    job.finish_run(103.0)
    lines = render.job_summary(decoded(job), now=110.0).splitlines()
    assert lines == ['job 5 "big"  completed  run 1/1  2.0s  -', "  20000 tasks: 20000 completed"]


def test_the_progress_line_reads_the_columns() -> None:
    job = running_job(100, failures=10, running=6)
    line = render.progress_line(decoded(job), width=120)
    assert line == ("[############################..] 94/100  run 1  running  10 failed  "
                    "running: t94 3/4, t95 3/4, t96 3/4, t97 3/4 +2")


def test_the_progress_line_fits_a_narrow_terminal() -> None:
    status = decoded(running_job(100, failures=10, running=6))
    # as many running tasks as fit, then how many run in all, then cut with an ellipsis
    assert render.progress_line(status, width=80) == (
        "[##################..] 94/100  run 1  running  10 failed  running: t94 3/4 +5")
    assert render.progress_line(status, width=64) == (
        "[###############.] 94/100  run 1  running  10 failed  6 running")
    for width in (80, 60, 40, 20, 10):
        line = render.progress_line(status, width=width)
        assert len(line) <= width, (width, line)
    assert render.progress_line(status, width=20) == "[####.] 94/100  run…"
