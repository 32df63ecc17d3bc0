"""procctl's job list (queued, running, held, finished: each with its own columns), a job's counts
line and collapsed groups, its tasks in one state, and colour only on a terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from procpool.cli import output, render
from procpool.contract.codec import decode_reply, encode_result
from procpool.contract.states import FAILED
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Job

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


def summary(job_id: str, state: str, started: float | None = None, finished: float | None = None,
            done: int = 0, tasks: int = 1) -> dict[str, Any]:
    return {"id": job_id, "name": f"job{job_id}", "user": "alice", "uid": 1000, "state": state, "run": 1,
            "tasks": tasks, "counts": {"completed": done} if done else {}, "created_at": NOW - 600,
            "started_at": started, "finished_at": finished}


def test_queued_running_and_finished_jobs_each_show_what_they_have() -> None:
    jobs = [
        summary("1", "completed", NOW - 300, NOW - 240, done=1),
        summary("2", "running", NOW - 65, done=3, tasks=10),
        summary("3", "queued"),
        summary("4", "held", NOW - 100, done=1, tasks=2),
    ]
    lines = render.job_table(jobs, NOW).splitlines()
    at = render.clock
    assert lines[0].split() == ["ID", "NAME", "USER", "STATE", "TASKS", "START", "END", "DURATION"]
    assert lines[1].split() == ["1", "job1", "alice", "(1000)", "completed", "1/1", at(NOW - 300, NOW),
                                at(NOW - 240, NOW), "1m00s"]
    assert lines[2].split() == ["2", "job2", "alice", "(1000)", "running", "3/10", at(NOW - 65, NOW),
                                "-", "1m05s"]
    # queued: nothing started, so no start, no end, no duration (it used to read "running 0/1")
    assert lines[3].split() == ["3", "job3", "alice", "(1000)", "queued", "0/1", "-", "-", "-"]
    assert lines[4].split()[4:6] == ["held", "1/2"]
    assert lines[5] == "4 jobs"


def test_a_cut_list_says_how_many_of_how_many_it_shows() -> None:
    jobs = [summary(str(i), "queued") for i in range(151, 201)]
    lines = render.job_table(jobs, NOW, matched=200, more_hint="; --all for more").splitlines()
    assert len(lines) == 52
    assert lines[-1] == "50 of 200 jobs shown (the newest); --all for more"
    assert render.job_table([], NOW) == "no jobs"


def test_the_clock_shows_the_time_today_and_the_date_before() -> None:
    assert render.clock(NOW - 1, NOW) == time.strftime("%H:%M:%S", time.localtime(NOW - 1))
    before = NOW - 10 * 86400
    assert render.clock(before, NOW) == time.strftime("%b %d %H:%M", time.localtime(before))
    assert render.clock(None, NOW) == "-"


def finished_tree(n: int, failing: set[int]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tree",
        "on_failure": "continue",
        "root": {"sequential": [
            {"name": "setup", "cmd": ["true"]},
            {"name": "fan", "concurrent": [{"name": f"t{i}", "cmd": ["true"]} for i in range(n)]},
        ]},
    }
    job = Job("7", parse_job(raw), raw, 100.0)
    job.start_run(100.0)
    for i in range(n + 1):
        job.mark_running(i, f"a{i}", 101.0)
        if i - 1 in failing:
            job.tasks[i].remember(f"output of t{i - 1}")
            error = {"type": "ValueError", "message": f"bad {i - 1}", "traceback": ""}
            job.end_unsuccessfully(i, FAILED, 102.0, error=error, exit_code=1)
        else:
            job.complete(i, 102.0)
    job.finish_run(103.0)
    wire = decode_reply(encode_result("1", status.full(job))).result
    assert isinstance(wire, dict)
    return wire


def test_a_job_starts_with_its_counts_and_a_big_group_is_a_line_of_counts() -> None:
    tree = finished_tree(60, failing={4, 40})
    lines = render.job_tree(tree, NOW).splitlines()
    assert lines[0].startswith('job 7 "tree"  failed  run 1/1')
    assert lines[1] == "  61 tasks: 59 completed, 2 failed"
    assert lines[2:7] == [
        "sequential root",
        "├─ ✔ setup  completed  1 attempt  1.0s",
        "└─ concurrent fan  60 tasks: 58 completed, 2 failed",
        "      ✘ t4  failed  1 attempt  1.0s  exit 1  ValueError: bad 4",
        "      ✘ t40  failed  1 attempt  1.0s  exit 1  ValueError: bad 40",
    ]
    assert lines[7:] == [
        "── t4 failed: exit 1  ValueError: bad 4", "  last 1 line of output:", "  | output of t4",
        "── t40 failed: exit 1  ValueError: bad 40", "  last 1 line of output:", "  | output of t40",
    ]
    # asked for every task: the whole tree
    every = render.job_tree(tree, NOW, collapse=None).splitlines()
    assert len(every) == 2 + 3 + 60 + 6 and every[5] == "   ├─ ✔ t0  completed  1 attempt  1.0s"


def test_a_collapsed_group_lists_at_most_a_few_failures() -> None:
    tree = finished_tree(30, failing=set(range(8)))
    lines = render.job_tree(tree, NOW).splitlines()
    assert lines[4] == "└─ concurrent fan  30 tasks: 22 completed, 8 failed"
    assert [line.split()[1] for line in lines[5:10]] == ["t0", "t1", "t2", "t3", "t4"]
    assert lines[10] == "      … and 3 more failed or running tasks"


def test_the_tasks_in_one_state_come_with_their_ids() -> None:
    tree = finished_tree(60, failing={4, 40})
    only = {**tree, "tasks": [t for t in tree["tasks"] if t["state"] == "failed"]}
    lines = render.task_list(only, NOW, "failed").splitlines()
    assert lines[1] == "  61 tasks: 59 completed, 2 failed"
    assert lines[2] == "  7.5      ✘ t4  failed  1 attempt  1.0s  exit 1  ValueError: bad 4"
    assert lines[3].startswith("  7.41     ✘ t40  failed")
    none = render.task_list({**tree, "tasks": []}, NOW, "running").splitlines()
    assert none[2:] == ["  no task is running"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_text_is_plain_unless_a_terminal_wants_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "  ✘ t4  failed  1 attempt\n  ✔ failed-jobs  completed"
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stdout", plain)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    output.echo(text)
    assert plain.getvalue() == text + "\n"  # not a terminal: exactly the text

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    output.echo(text)
    coloured = terminal.getvalue()
    assert "\x1b[" in coloured and _ANSI.sub("", coloured) == text + "\n"
    # the state words are coloured, not a word inside a name
    assert "\x1b[1;31mfailed\x1b[0m  1 attempt" in coloured
    assert "failed-jobs" in coloured and "\x1b[32mcompleted\x1b[0m" in coloured

    monkeypatch.setenv("NO_COLOR", "1")
    terminal.seek(0)
    terminal.truncate()
    output.echo(text)
    assert terminal.getvalue() == text + "\n"


def test_the_progress_line_is_redrawn_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("NO_COLOR", "1")
    line = output.ProgressLine()
    assert line.width() == 39
    for done in range(5):
        line.show(f"[{'#' * done}{'.' * (4 - done)}] {done}/4  run 1  running")
    line.close()
    written = terminal.getvalue()
    shown = _ANSI.sub("", written.replace("\r", "\n")).split("\n")
    assert max(len(s) for s in shown) <= 40
    # one line, redrawn: the cursor goes back over it, no line of its own per update
    assert written.count("\n") == 1 and "\x1b[2K" in written
    assert _ANSI.sub("", written).rstrip("\n").endswith("[####] 4/4  run 1  running")


def test_the_progress_line_goes_once_per_change_when_not_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    line = output.ProgressLine()
    for text in ("a", "a", "b", "b", "c"):
        line.show(text)
    line.close()
    assert stream.getvalue() == "a\nb\nc\n"


def test_rich_is_loaded_only_to_colour_or_redraw() -> None:
    """``procctl ping`` and any output that is not to a terminal never import rich."""
    probe = (
        "import contextlib, io, sys\n"
        "sys.argv = ['procctl', '--socket', '/nonexistent/procpool.sock', 'ping']\n"
        "from procpool.cli import output, render\n"
        "from procpool.cli.main import main\n"
        "with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    output.echo('job 1  failed')\n"
        "print('rich' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_the_daemon_summary_counts_jobs_by_state_in_order_and_tasks_apart() -> None:
    data = {"version": "0.1.0", "pid": 1, "uptime": 5.0, "workers": {"configured": 2},
            "jobs": {"by_state": {"failed": 1, "queued": 6, "running": 2, "completed": 3},
                     "running": 2, "queued": 6}}
    jobs_line = render.summary(data).splitlines()[3]
    assert jobs_line == ("jobs     6 queued, 2 running, 3 completed, 1 failed; "
                         "tasks: 2 running, 6 waiting for a worker")
