"""How the daemon describes an attempt that did not complete (procpoold.failures): the error of
untrusted task code checked and bounded, procpool's own frames left out of its traceback, a
timeout and a cancel in words, a missing working folder named."""

from __future__ import annotations

import errno
import os
import traceback
from pathlib import Path

import procpoold.pool.worker
import procpoold.remote.harness
from procpool.contract.signals import signal_label
from procpoold import failures

WORKER = procpoold.pool.worker.__file__
HARNESS = procpoold.remote.harness.__file__


def frame(path: str, line: int, fn: str, source: str = "x()") -> str:
    return f'  File "{path}", line {line}, in {fn}\n    {source}\n'


def test_procpools_own_frames_are_left_out_and_a_users_folder_named_procpool_is_not() -> None:
    mine = "/home/u/src/procpool/jobs/etl.py"  # a user's checkout called procpool: their code
    text = ("Traceback (most recent call last):\n" + frame(WORKER, 770, "_run_sync", "result = fn()")
            + "    ^^^^^^^^^^^\n" + frame(HARNESS, 120, "main") + frame(mine, 3, "load", "parse()")
            + frame("/home/u/lib/parse.py", 9, "parse", "raise ValueError('bad')")
            + "ValueError: bad\n")
    out = failures.user_traceback(text)
    assert out == ("Traceback (most recent call last):\n" + frame(mine, 3, "load", "parse()")
                   + frame("/home/u/lib/parse.py", 9, "parse", "raise ValueError('bad')")
                   + "ValueError: bad\n")
    # Another machine's copy (a Dask worker's site-packages) is recognised by the path below the package.
    other = "/opt/venv/lib/python3.11/site-packages/procpoold/remote/harness.py"
    assert failures.own_file(other) and not failures.own_file("/srv/procpoold/remote/mine.py")


def test_a_real_traceback_keeps_the_innermost_frames_and_is_bounded() -> None:
    def ping(n: int) -> None:  # (two functions: Python folds a run of one repeated frame)
        if n:
            pong(n - 1)
        raise RecursionError("deep " + "x" * 5000)

    def pong(n: int) -> None:
        ping(n)

    try:
        ping(50)
    except RecursionError as exc:
        text = "".join(traceback.format_exception(exc))
    out = failures.user_traceback(text)
    assert out.count("in ping") + out.count("in pong") == failures.TRACEBACK_FRAMES
    assert f"... {1 + 101 - failures.TRACEBACK_FRAMES} more frame(s) not shown" in out
    assert len(out) <= failures.TRACEBACK_CHARS + 100 and out.rstrip().endswith("…")
    assert max(len(line) for line in out.splitlines()) <= failures.LINE_CHARS
    huge = "Traceback (most recent call last):\n" + frame("/u/a.py", 1, "f", "y" * 400) * 25 + "E: e\n"
    bounded = failures.user_traceback(huge)
    assert len(bounded) < failures.TRACEBACK_CHARS + 60 and bounded.startswith("... (")
    assert bounded.endswith("E: e\n")


def test_an_error_from_task_code_is_checked() -> None:
    assert failures.checked(None) is None
    assert failures.checked("boom") == {"type": "Error", "message": "boom", "traceback": ""}
    got = failures.checked({"type": "T" * 1000, "message": "m\0" * 5000, "traceback": 42, "extra": [1]})
    assert got is not None and set(got) == {"type", "message", "traceback"}
    assert len(got["type"]) == failures.TYPE_CHARS and len(got["message"]) == failures.MESSAGE_CHARS
    assert "\0" not in got["message"] and got["traceback"] == "42\n"
    empty = {"type": "Error", "message": "", "traceback": ""}
    assert failures.checked({"type": None, "message": None}) == empty


def test_a_stop_reads_in_words_and_keeps_where_the_call_was() -> None:
    tb = ("Traceback (most recent call last):\n" + frame("/u/job.py", 60, "spin", "time.sleep(1)")
          + "procpoold.pool.worker.TaskInterrupted: attempt 3.26@1#1 was stopped by procpoold\n")
    error = {"type": "procpoold.pool.worker.TaskInterrupted",
             "message": "attempt 3.26@1#1 was stopped by procpoold", "traceback": tb}
    got = failures.stopped(error, "Timeout", "timed out after 0.5 s")
    assert got == {"type": "Timeout", "message": "timed out after 0.5 s", "traceback": (
        "Traceback (most recent call last):\n" + frame("/u/job.py", 60, "spin", "time.sleep(1)")
        + "Timeout: timed out after 0.5 s\n")}
    assert failures.stopped(None, "Cancelled", "cancelled by uid 7") == {
        "type": "Cancelled", "message": "cancelled by uid 7", "traceback": ""}
    # What the engine said of the stop (a worker killed as it did not stop) follows the words.
    killed = {"type": "WorkerKilled", "message": "task 'spin' did not stop within 5 s", "traceback": ""}
    words = "timed out after 1 s; task 'spin' did not stop within 5 s"
    assert failures.stopped(killed, "Timeout", "timed out after 1 s") == {
        "type": "Timeout", "message": words, "traceback": ""}
    assert failures.seconds(0.5) == "0.5 s" and failures.seconds(30.0) == "30 s"


def test_who_cancelled_and_a_missing_working_directory_in_words() -> None:
    assert failures.cancelled_by(None) == "cancelled by request"
    uid = os.getuid()
    name = failures.user_name(uid)
    assert failures.cancelled_by(uid) == f"cancelled by {name} (uid {uid})"
    assert failures.cancelled_by(2_000_000_123) == "cancelled by uid 2000000123"
    gone = OSError(errno.ENOENT, "No such file or directory")
    assert failures.cwd_problem("/srv/x", gone) == "the working directory '/srv/x' does not exist"
    assert failures.cwd_problem("/etc/passwd", OSError(errno.ENOTDIR, "Not a directory")).endswith(
        "'/etc/passwd' is not a directory")
    assert failures.cwd_problem("/root/x", OSError(errno.EACCES, "Permission denied")).endswith(
        "'/root/x' is not accessible (Permission denied)")
    assert signal_label(9) == "SIGKILL" and signal_label(77) == "signal 77"


def test_the_final_record_carries_the_traceback() -> None:
    assert failures.log_text(None) == ""
    assert failures.log_text({"type": "CommandFailed", "message": "command killed by SIGKILL",
                              "traceback": ""}) == "command killed by SIGKILL"
    tb = "Traceback (most recent call last):\n" + frame("/u/a.py", 1, "f") + "ValueError: disk full\n"
    assert failures.log_text({"type": "ValueError", "message": "disk full", "traceback": tb}) == (
        "disk full\n" + tb.rstrip())


def test_the_module_file_is_where_it_says(tmp_path: Path) -> None:
    assert failures.own_file(WORKER) and failures.own_file(HARNESS)
    user = tmp_path / "procpoold" / "pool" / "notours.py"
    assert not failures.own_file(str(user))


def test_a_traceback_of_procpools_frames_only_is_dropped() -> None:
    text = "Traceback (most recent call last):\n" + frame(WORKER, 740, "_enter") + "FileNotFoundError: x\n"
    assert failures.user_traceback(text) == ""
    assert failures.user_traceback("free text, no frames") == "free text, no frames\n"
