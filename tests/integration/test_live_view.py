"""``procctl top`` and ``procctl status JOB --watch`` in a real pseudo-terminal, against a real daemon.

What is checked is the screen as a terminal emulator shows it (tests/support/terminal.py); every
wait is for expected content, with a timeout. Tasks that must stay running wait for a gate file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from procpool import Client
from tests.support.daemon import DaemonProcess
from tests.support.jobs import sh
from tests.support.terminal import CSI, SGR, Terminal, frames, procctl
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gate(daemon: DaemonProcess, tmp_path: Path) -> Iterator[Path]:
    """A gate file for the tasks of :func:`gated`; opened at the end, before the daemon stops
    (it drains running tasks)."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def gated(name: str, gate: Path, **extra: Any) -> dict[str, Any]:
    """A command task that runs until ``gate`` exists."""
    return sh(f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done", name=name, **extra)


def busy_daemon(daemon: DaemonProcess, gate: Path) -> str:
    """A failed job (for recent failures) and a job with two tasks held running and one queued
    behind them (the commands engine has two slots; the queued one has the lower priority);
    returns the second job's id."""
    with daemon.client() as client:
        failed = client.submit({"name": "broken", "root": sh("exit 3", name="bad-step")})["id"]
        assert client.wait(failed, timeout=30)["state"] == "failed"
        job = client.submit({"name": "busy", "root": {"name": "all", "concurrent": [
            gated("hold-a", gate, priority="high"), gated("hold-b", gate, priority="high"),
            gated("later", gate, priority="low")]}})["id"]
        wait_until(lambda: _counts(client, job), lambda c: c.get("running") == 2 and c.get("ready") == 1,
                   what="two tasks running and one queued")
    return str(job)


def _counts(client: Client, job: str) -> dict[str, int]:
    summary = client.call("status", {"job": job, "view": "summary"})
    counts: dict[str, int] = summary["job"]["counts"]
    return counts


def _failure_row(text: str) -> bool:
    """Whether the failed task of :func:`busy_daemon` shows with its exit status."""
    return re.search(r"1\.0\s+bad-step\s+.*\b3\b", text) is not None


def _section(text: str, title: str) -> str:
    """The lines of the screen from a section's title to the next blank-titled section."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    titles = ("Workers", "Running", "Queue:", "Recent")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(titles)), len(lines))
    return "\n".join(lines[start:end])


def test_top_shows_workers_running_queue_failures_and_q_restores_the_terminal(
    daemon: DaemonProcess, gate: Path
) -> None:
    job = busy_daemon(daemon, gate)
    script = f"{shlex.join(procctl(daemon.socket, 'top', '--interval', '0.2'))}; echo EXIT=$?; stty -a"
    with Terminal(["/bin/sh", "-c", script], columns=110, lines=32) as term:
        def complete(text: str) -> bool:
            return ("Recent failures" in text and "hold-a" in _section(text, "Running")
                    and "hold-b" in _section(text, "Running") and "later" in _section(text, "Queue:")
                    and _failure_row(_section(text, "Recent failures")))

        text = term.wait_for(complete, "running tasks, the queue and the failure")
        running = _section(text, "Running")
        assert re.search(rf"{job}\.\d+\s+hold-a\s+{job}\s+\S+", running), running  # id, name, job, user
        assert "Queue: 1 task (low 1)" in text
        workers = _section(text, "Workers")
        assert "SLOT" in workers and "PID" in workers and "MEM" in workers
        assert len([line for line in workers.splitlines() if re.match(r"\s+\d+\s+\d+\s+idle", line)]) == 2
        term.send("q")
        raw = term.wait_raw(lambda r: "EXIT=" in r and "icanon" in r.split("EXIT=")[-1], "top to quit")
        assert term.finish() == 0
    after = raw.split("EXIT=")[-1]
    assert after.startswith("0"), after[:20]
    before = raw.split("EXIT=")[0]
    assert "\x1b[?1049h" in before and before.rstrip().endswith("\x1b[?1049l"), before[-60:]
    assert "\x1b[?25h" in before[before.rindex("\x1b[?25l"):]  # the cursor is shown again
    # stdin is back in canonical mode with echo (stty prints -icanon, -echo when they are off)
    assert re.search(r"(?<!-)\bicanon\b", after) and re.search(r"(?<![-\w])echo\b", after), after


def test_ctrl_c_quits_top_with_0(daemon: DaemonProcess) -> None:
    with Terminal(procctl(daemon.socket, "top"), columns=80, lines=24) as term:
        term.wait_for(lambda t: "q quits" in t, "the first screen")
        term.send("\x03")
        assert term.finish() == 0
        assert term.raw.rstrip().endswith("\x1b[?1049l")


def test_top_fits_a_narrow_terminal_and_redraws_at_once_when_resized(
    daemon: DaemonProcess, gate: Path
) -> None:
    busy_daemon(daemon, gate)
    # The interval is long: only the resize (SIGWINCH) can bring the second frame within the wait.
    with Terminal(procctl(daemon.socket, "top", "--interval", "60"), columns=100, lines=30) as term:
        term.wait_for(lambda t: "hold-b" in t and "USER" in t, "the wide screen")
        wide = frames(term.raw)
        assert wide and max(cell_len(line) for line in wide[-1]) <= 100
        seen = len(wide)
        term.resize(40, 30)
        term.wait_raw(lambda r: len(frames(r)) > seen, "a frame at the new width")
        narrow = frames(term.raw)[-1]
        assert max(cell_len(line) for line in narrow) <= 40, "\n".join(narrow)
        text = term.wait_for(lambda t: "hold-b" in t, "the narrow screen")
        assert "USER" not in text  # the narrow layout: non-essential columns dropped
        assert all(len(line) <= 40 for line in text.splitlines())
        term.send("q")
        assert term.finish() == 0


@pytest.mark.parametrize("no_color", [True, False])
def test_no_color_leaves_only_cursor_control(daemon: DaemonProcess, gate: Path, no_color: bool) -> None:
    busy_daemon(daemon, gate)
    env = {"NO_COLOR": "1"} if no_color else {}
    with Terminal(procctl(daemon.socket, "top", "--interval", "0.2"), env=env) as term:
        term.wait_for(lambda t: "hold-a" in t and _failure_row(t), "running tasks and the failure")
        term.send("q")
        assert term.finish() == 0
    styles = SGR.findall(term.raw)
    if no_color:
        assert styles == [], sorted(set(styles))
        cursor = {"\x1b[?1049h", "\x1b[?1049l", "\x1b[?25l", "\x1b[?25h", "\x1b[H"}
        assert set(CSI.findall(term.raw)) <= cursor
    else:  # the same view in colour (so that the check above can fail)
        assert styles


def test_status_watch_redraws_until_the_job_completes_then_exits_0(
    daemon: DaemonProcess, gate: Path
) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "watched", "root": {"name": "steps", "concurrent": [
            gated("slow-step", gate), sh("true", name="quick-step")]}})["id"]
    with Terminal(procctl(daemon.socket, "status", job, "--watch", "--interval", "0.2"), columns=60) as term:
        text = term.wait_for(lambda t: "slow-step" in t and "1 completed" in t, "the running task")
        assert f'job {job} "watched" running' in text
        gate.touch()
        assert term.finish() == 0
        text = term.text()
    assert f'job {job} "watched" completed' in text
    assert "2/2" in text and "2 completed" in text
    assert "slow-step" not in text  # nothing runs any more
    assert all(len(line) <= 60 for line in text.splitlines())


def test_status_watch_of_a_failing_job_exits_1_and_shows_what_failed(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "doomed", "root": sh("exit 7", name="fails")})["id"]
    with Terminal(procctl(daemon.socket, "status", job, "--watch", "--interval", "0.2"), columns=60) as term:
        assert term.finish() == 1
        text = term.text()
    assert f'job {job} "doomed" failed' in text
    assert "Did not complete" in text
    assert re.search(r"fails\s+.*\b7\b", text), text  # what the exit status was


def test_not_a_terminal_gives_plain_periodic_lines(daemon: DaemonProcess, gate: Path) -> None:
    job = busy_daemon(daemon, gate)
    top = daemon.procctl("top", "--interval", "0.05", "-n", "3")
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert len(lines) == 3, top.stdout
    for line in lines:
        expected = r"\d\d:\d\d:\d\d  workers \d+/2 busy  running 2 \(commands 2\)  queued 1 \(low 1\)"
        assert re.match(expected, line), line
        assert "\x1b" not in line
    as_json = daemon.procctl("--json", "top", "--interval", "0.05", "-n", "2")
    assert as_json.returncode == 0, as_json.stderr
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(docs) == 2
    assert sorted(r["name"] for r in docs[0]["running"]) == ["hold-a", "hold-b"]
    assert docs[0]["next"][0]["name"] == "later" and docs[0]["by_priority"] == {"low": 1}
    assert re.search(r"\b3\b", docs[0]["failures"][0]["what"])
    # status --watch to a pipe: a line per refresh until the job ends, then its exit status
    watch = subprocess.Popen(procctl(daemon.socket, "status", job, "--watch", "--interval", "0.1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()
        assert re.match(rf"\d\d:\d\d:\d\d  job {job} running  0/3 done", first), first
        gate.touch()
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    last = out.splitlines()[-1]
    assert f"job {job} completed  3/3 done  3 completed" in last, out
    assert "\x1b" not in out


def test_idle_top_sleeps_in_select(daemon: DaemonProcess) -> None:
    """Between refreshes top blocks in select(2) for the interval: it does not spin."""
    with Terminal(procctl(daemon.socket, "top", "--interval", "60"), columns=80, lines=24) as term:
        term.wait_for(lambda t: "q quits" in t, "the first screen")
        pid = term.child.pid

        def syscall() -> str:
            return Path(f"/proc/{pid}/syscall").read_text().split()[0]

        wait_until(syscall, lambda s: s in SELECT, what="top to block in select")
        for _ in range(100):  # and it stays there, asleep (a loop that polled would be seen running)
            assert syscall() in SELECT
            assert _state(pid) == "S"
        term.send("q")
        assert term.finish() == 0


#: select (23) or pselect6 (270) on x86-64; pselect6 (72) on arm64
SELECT = ("23", "270", "72")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_status_watch_of_a_task(daemon: DaemonProcess, gate: Path) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "pair", "root": {"name": "two", "concurrent": [
            gated("waits", gate), sh("exit 5", name="dies")]}})["id"]
    with Terminal(procctl(daemon.socket, "status", f"{job}/waits", "--watch", "--interval", "0.2"),
                  columns=50) as term:
        term.wait_for(lambda t: "waits  running" in t, "the running task")
        gate.touch()
        assert term.finish() == 0
        assert "waits  completed" in term.text()
    piped = daemon.procctl("status", f"{job}.1", "--watch")
    assert piped.returncode == 1, piped.stderr
    assert re.fullmatch(r"\d\d:\d\d:\d\d  ✘ dies  failed .*\n", piped.stdout), piped.stdout


def test_sigterm_ends_top_with_the_terminal_restored(daemon: DaemonProcess) -> None:
    # (in the background, so that the shell reports the signal; its stdin is the terminal still)
    script = f"{shlex.join(procctl(daemon.socket, 'top'))} </dev/tty & wait $!; echo EXIT=$?; stty -a"
    with Terminal(["/bin/sh", "-c", script], columns=80, lines=24) as term:
        term.wait_for(lambda t: "q quits" in t, "the first screen")
        pid = wait_until(lambda: _child_top(term.child.pid), what="top's pid")
        os.kill(pid, signal.SIGTERM)
        raw = term.wait_raw(lambda r: "EXIT=" in r and "icanon" in r.split("EXIT=")[-1], "top to end")
        assert term.finish() == 0  # (the shell's)
    after = raw.split("EXIT=")[-1]
    assert after.startswith("143"), after[:20]
    assert raw.split("EXIT=")[0].rstrip().endswith("\x1b[?1049l")
    assert re.search(r"(?<!-)\bicanon\b", after) and re.search(r"(?<![-\w])echo\b", after), after


def _child_top(shell: int) -> int | None:
    """The pid of the procctl the shell started (its child)."""
    for task in Path(f"/proc/{shell}/task").iterdir():
        for child in (task / "children").read_text().split():
            return int(child)
    return None


def test_ctrl_c_stops_watching_and_the_job_goes_on(daemon: DaemonProcess, gate: Path) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "long", "root": gated("waits", gate)})["id"]
    with Terminal(procctl(daemon.socket, "status", job, "--watch"), columns=80) as term:
        term.wait_for(lambda t: "waits" in t and "1 running" in t, "the running task")
        term.send("\x03")
        assert term.finish() == 130
        assert f"stopped waiting; job {job} goes on in the daemon" in term.text()
        assert "\x1b[?25h" in term.raw  # the cursor is shown again
    with daemon.client() as client:
        assert client.call("status", {"job": job, "view": "summary"})["job"]["state"] == "running"


def test_ctrl_c_ends_plain_top_with_0(daemon: DaemonProcess) -> None:
    top = subprocess.Popen(procctl(daemon.socket, "top", "--interval", "0.1"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert top.stdout is not None
        assert re.match(r"\d\d:\d\d:\d\d  workers", top.stdout.readline())
        top.send_signal(signal.SIGINT)
        _, err = top.communicate(timeout=30)
    finally:
        if top.poll() is None:
            top.kill()
            top.communicate()
    assert top.returncode == 0 and err == ""


def test_top_without_a_daemon_says_so_without_touching_the_screen(tmp_path: Path) -> None:
    with Terminal(procctl(tmp_path / "none.sock", "top"), columns=80, lines=24) as term:
        assert term.finish() == 3
    assert "procctl: error:" in term.text() and "\x1b[?1049h" not in term.raw
