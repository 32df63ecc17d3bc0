"""procctl's failure reports (procpool.cli.failures and its hooks in render): a signal by its
name, a failure's headline, a traceback and the last lines of output under the task, bounded."""

from __future__ import annotations

from typing import Any

from procpool.cli import failures, render


def task(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "state": "failed", "attempts": 1, "started_at": 1.0, "finished_at": 2.0, **fields}


def test_a_signal_reads_by_its_name() -> None:
    assert [failures.exit_text(c) for c in (None, 0, 3, -9, -15, -77)] == [
        "", "", "exit 3", "killed by SIGKILL", "killed by SIGTERM", "killed by signal 77"]
    line = render.task_line(task(exit_code=-15), now=3.0)
    assert line.endswith("killed by SIGTERM") and "-15" not in line
    error = {"type": "CommandFailed", "message": "command exited with status 3", "traceback": ""}
    line = render.task_line(task(exit_code=3, error=error), now=3.0)
    assert line.endswith("1.0s  command exited with status 3") and "exit 3" not in line


def test_headlines() -> None:
    error = {"type": "ValueError", "message": "disk full", "traceback": "..."}
    assert failures.headline(task(error=error)) == "ValueError: disk full"
    timeout = {"type": "Timeout", "message": "timed out after 0.5 s"}
    assert failures.headline(task(state="timeout", error=timeout)) == "timed out after 0.5 s"
    assert failures.headline(task(state="cancelled", reason="cancelled by uid 7")) == "cancelled by uid 7"
    assert failures.headline(task(state="completed", exit_code=0)) == ""


def test_details_show_the_traceback_and_the_last_lines_bounded() -> None:
    tb = "Traceback (most recent call last):\n" + "".join(
        f'  File "/u/a.py", line {i}, in f\n    f()\n' for i in range(50)) + "RecursionError: deep\n"
    t = task(error={"type": "RecursionError", "message": "deep", "traceback": tb},
             tail=[f"line {i}" for i in range(20)], attempts=3)
    lines = failures.details(t)
    assert lines[0] == "── t failed after 3 attempts: RecursionError: deep"
    assert lines[1] == f"  ... {102 - failures.TRACEBACK_LINES} line(s) of the traceback not shown"
    assert lines[1 + failures.TRACEBACK_LINES] == "  RecursionError: deep"
    assert lines[2 + failures.TRACEBACK_LINES :] == [
        "  last 10 lines of output:", *[f"  | line {i}" for i in range(10, 20)]]
    assert failures.details(task(state="completed", tail=["x"])) == []
    assert failures.details(task(state="cancelled", reason="cancelled by uid 1")) == []


def test_a_job_shows_at_most_five_failures_in_detail() -> None:
    tasks = [task(name=f"t{i}", error={"type": "E", "message": str(i), "traceback": ""}) for i in range(8)]
    lines = failures.report([*tasks, task(name="ok", state="completed")], more_hint="; see --json")
    assert lines == [*(f"── t{i} failed: E: {i}" for i in range(5)), "… and 3 more failed tasks; see --json"]
    assert failures.report(tasks, 2, None) == ["── t0 failed: E: 0", "── t1 failed: E: 1"]


def test_a_log_records_traceback_is_indented_under_it() -> None:
    assert failures.log_message("one line") == "one line"
    assert failures.log_message('task "t" failed: boom\nTraceback\n  File') == (
        'task "t" failed: boom\n    Traceback\n      File')
