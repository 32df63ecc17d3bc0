"""The Dask engine's parts that need no Dask cluster: the frames between runner and harness, the
harness itself (a real subprocess), and how the daemon's side takes what arrives from a cluster
(anyone on it may send to the daemon's topic, so every event is checked).

The engine against real Dask clusters is tested in tests/integration (the job-tree suites run on
both engines, and test_dask_engine.py there)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from procpoold.engines import NOT_STARTED, AttemptSpec, Outcome
from procpoold.engines.dask import DaskExecutor
from procpoold.loop import EventLoop
from procpoold.remote import frames, runner

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[3]


# -- frames ---------------------------------------------------------------------------------------


def test_frames_round_trip_and_refuse_what_is_not_plain_msgpack() -> None:
    r, w = os.pipe()
    try:
        frames.write_frame(w, ["log", 20, "hello", {"A": "b"}])
        frames.write_frame(w, {"x": [1, 2]})
        assert frames.read_frame(r) == ["log", 20, "hello", {"A": "b"}]
        assert frames.read_frame(r) == {"x": [1, 2]}
        os.write(w, frames.pack(b"x" * 100))
        with pytest.raises(frames.FrameError, match="over the limit"):
            frames.read_frame(r, limit=10)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(frames.FrameError, match="extension"):
        frames.unpack(msgpack.packb(msgpack.ExtType(5, b"x")))
    with pytest.raises(ValueError):
        frames.unpack(msgpack.packb({1: "int key"}))


def test_frame_reader_takes_frames_as_they_arrive_in_pieces() -> None:
    r, w = os.pipe()
    reader = frames.FrameReader(r)
    try:
        data = frames.pack(["a", 1]) + frames.pack(["b", 2])
        os.write(w, data[:3])
        assert reader.read() == []
        os.write(w, data[3:12])
        assert reader.read() == [["a", 1]]
        os.write(w, data[12:])
        assert reader.read() == [["b", 2]]
        os.close(w)
        w = -1
        assert reader.read() == [] and reader.eof
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    r, w = os.pipe()
    reader = frames.FrameReader(r, limit=8)
    os.write(w, (1000).to_bytes(4, "big"))
    with pytest.raises(frames.FrameError):
        reader.read()
    os.close(r)
    os.close(w)


# -- the harness (a real process, driven as the runner drives it) ------------------------------------


class Harness:
    def __init__(self, payload: dict[str, Any], tmp: Path) -> None:
        self.r, w = os.pipe()
        env = {**os.environ, "PROCPOOL_FRAMES_FD": str(w),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "ctl"), str(ROOT / "daemon"), str(ROOT)])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procpoold.remote.harness"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w,), env=env, cwd=tmp,
            start_new_session=True)
        os.close(w)
        assert self.proc.stdin is not None
        frames.write_frame(self.proc.stdin.fileno(), payload)

    def frames(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(frames.read_frame(self.r))
            except EOFError:
                return out

    def close(self) -> None:
        os.close(self.r)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def call_payload(call: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"attempt_id": "t#1", "kind": "call", "call": call, "args": list(args), "kwargs": {},
            "python_path": [], "context": {"job_id": "1", "job_name": "j", "task_id": "1.0",
                                            "task_name": "t", "attempt": 1, "run": 1}, **extra}


def test_harness_runs_a_call_and_sends_its_log_records_and_result(tmp_path: Path) -> None:
    h = Harness(call_payload("tests.support.tasks:add", 2, 3), tmp_path)
    try:
        got = h.frames()
        assert got[-1] == ["done", True, 5]
        h.proc.wait(10)
    finally:
        h.close()
    h = Harness(call_payload("tests.support.tasks:boom", "bad"), tmp_path)
    try:
        done = h.frames()[-1]
        assert done[:2] == ["done", False] and done[2]["type"] and done[2]["traceback"]
    finally:
        h.close()


def test_harness_asks_for_the_namespace_and_waits_for_the_reply(tmp_path: Path) -> None:
    h = Harness(call_payload("tests.support.tasks:incr"), tmp_path)
    try:
        req = frames.read_frame(h.r)
        assert req[0] == "req" and req[2] == "ns" and req[3]["op"] == "incr"
        assert h.proc.stdin is not None
        frames.write_frame(h.proc.stdin.fileno(), ["reply", req[1], True, 7])
        assert h.frames()[-1] == ["done", True, 7]
    finally:
        h.close()


def test_harness_passes_a_commands_exit_code_and_output_on(tmp_path: Path) -> None:
    payload = {"attempt_id": "c#1", "kind": "cmd", "cmd": ["sh", "-c", "echo out; exit 4"], "shell": False}
    h = Harness(payload, tmp_path)
    try:
        assert h.frames()[-1] == ["done", True, 4]
        assert h.proc.stdout is not None and h.proc.stdout.read() == b"out\n"
    finally:
        h.close()


def test_harness_ends_its_session_when_its_runner_is_gone(tmp_path: Path) -> None:
    """The Dask worker that ran the runner died: stdin ends, and the attempt's processes with it."""
    marker = tmp_path / "child.pid"
    cmd = f"sleep 60 & echo $! > {marker}; wait"
    h = Harness({"attempt_id": "c#1", "kind": "cmd", "cmd": cmd, "shell": True}, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(marker.read_text())
        assert h.proc.stdin is not None
        h.proc.stdin.close()
        assert h.proc.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child)
    finally:
        h.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_interrupts_a_sync_call_and_cancels_an_async_one(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    h = Harness(call_payload("tests.support.tasks:async_wait_cancel", str(marker)), tmp_path)
    try:
        _wait_for(Path(str(marker) + ".started"))
        os.killpg(h.proc.pid, signal.SIGTERM)
        done = h.frames()[-1]
        assert done[:2] == ["done", False] and done[2]["type"] == "asyncio.exceptions.CancelledError"
        assert marker.read_text() == "cancelled"
    finally:
        h.close()
    h = Harness(call_payload("tests.support.tasks:progress_then_wait", str(tmp_path / "gate")), tmp_path)
    try:
        assert frames.read_frame(h.r)[0] == "progress"  # the function runs
        os.killpg(h.proc.pid, signal.SIGTERM)
        done = h.frames()[-1]
        assert done[:2] == ["done", False] and done[2]["type"].endswith("TaskInterrupted")
    finally:
        h.close()


def test_runner_marks_an_attempt_stopped_before_it_starts() -> None:
    assert runner.stop("run-1", ["never-started#1"], 1.0) == 0
    assert "run-1/never-started#1" in runner._marks
    assert runner.deliver("run-1", "never-started#1", 1, True, None) is False
    assert runner._identity(None) == (None, {})
    assert "does not exist" in str(runner._identity("no-such-user-procpool"))


# -- the daemon's side: events from the cluster ----------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.started: list[tuple[str, int | None, str | None]] = []
        self.finished: list[Outcome] = []
        self.logs: list[tuple[str, str, int, str, dict[str, str] | None]] = []
        self.progress: list[tuple[str, dict[str, Any]]] = []
        self.ns: list[tuple[str, str, dict[str, Any]]] = []
        self.kicks = 0

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        self.started.append((attempt_id, pid, worker))

    def attempt_finished(self, outcome: Outcome) -> None:
        self.finished.append(outcome)

    def attempts_finished(self, outcomes: list[Outcome]) -> None:
        self.finished.extend(outcomes)

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        self.progress.append((attempt_id, progress))

    def attempt_log(self, attempt_id: str, stream: str, level: int, message: str,
                    fields: dict[str, str] | None = None) -> None:
        self.logs.append((attempt_id, stream, level, message, fields))

    def capacity_changed(self) -> None:
        self.kicks += 1

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        self.ns.append((attempt_id, op, args))
        return 42


class FakeBridge:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def command(self, *cmd: Any) -> None:
        self.commands.append(cmd)


def executor() -> tuple[DaskExecutor, Events, FakeBridge, EventLoop]:
    ex = DaskExecutor("tcp://127.0.0.1:1")
    loop, events, bridge = EventLoop(), Events(), FakeBridge()
    ex._loop, ex._events, ex._bridge = loop, events, bridge  # type: ignore[assignment]
    ex._on_event(("capacity", [{"worker": "tcp://w1", "host": "h1", "threads": 2, "name": "w1"}]))
    ex._on_event(("up", None))
    return ex, events, bridge, loop


def spec(aid: str = "1.0@1#1", kind: str = "call") -> AttemptSpec:
    return AttemptSpec(aid, "1", "j", "1.0", "t", 1, kind,  # type: ignore[arg-type]
                       call="m:f" if kind == "call" else None, cmd=["true"] if kind == "cmd" else None)


def packed(body: Any) -> bytes:
    return msgpack.packb(body)


def test_capacity_and_health_follow_the_cluster() -> None:
    ex, events, bridge, _ = executor()
    # one attempt per worker thread, sent to that worker only
    assert ex.free_slots() == 2 and ex.health().up and events.kicks >= 1
    ex.submit(spec())
    assert ex.free_slots() == 1 and bridge.commands[-1][0] == "submit"
    assert bridge.commands[-1][-1] == "tcp://w1"
    ex._on_event(("down", "cannot reach the Dask scheduler"))
    assert ex.free_slots() == 0
    assert ex.health().up is False and ex.health().reason == "cannot reach the Dask scheduler"
    assert ex.resize(8) is False


def test_a_started_attempt_reports_its_lines_with_the_host_and_its_result() -> None:
    ex, events, bridge, _ = executor()
    ex.submit(spec())
    ex._on_event(("remote", {"t": "started", "aid": "1.0@1#1", "pid": 7, "worker": "tcp://w1", "host": "h1"}))
    assert events.started == [("1.0@1#1", 7, "dask:tcp://w1")]
    lines = [["log", 30, "hi", {"LOGGER": "x"}], ["stdout", 20, "out", None]]
    ex._on_event(("remote", {"t": "logs", "aid": "1.0@1#1", "b": packed(lines)}))
    assert [(m, f) for _, _, _, m, f in events.logs] == [
        ("hi", {"LOGGER": "x", "PROCPOOL_HOST": "h1"}), ("out", {"PROCPOOL_HOST": "h1"})]
    request = packed([3, "ns", {"op": "incr", "key": "n"}])
    ex._on_event(("remote", {"t": "req", "aid": "1.0@1#1", "b": request}))
    assert events.ns == [("1.0@1#1", "incr", {"key": "n"})]
    assert bridge.commands[-1] == ("reply", "tcp://w1", "1.0@1#1", 3, True, 42)
    ex._on_event(("done", "1.0@1#1", runner.result(True, [1, 2])))
    assert events.finished[-1].status == "completed" and events.finished[-1].result == [1, 2]
    # it ran a moment: attempts are short, so each thread gets a second one waiting behind
    assert ex._mean_run < 0.05 and ex.free_slots() == 4


def test_what_is_not_about_an_attempt_of_this_engine_is_ignored() -> None:
    ex, events, _, _ = executor()
    ex.submit(spec())
    for msg in [
        {"t": "started", "aid": 5}, {"t": "started", "aid": "1.0@1#1", "worker": 3, "host": "h"},
        {"t": "logs", "aid": "1.0@1#1", "b": "not bytes"},
        {"t": "logs", "aid": "other#1", "b": packed([["log", 20, "x", None]])},
        {"no": "t"}, {"t": "done", "aid": "1.0@1#1"},
    ]:
        ex._on_event(("remote", msg))
    assert not events.started and not events.logs and not events.ns and not events.progress
    assert not events.finished and "1.0@1#1" in ex._running


@pytest.mark.parametrize(("t", "body", "why"), [
    ("logs", b"\xc1", "not msgpack"),
    ("logs", msgpack.packb(msgpack.ExtType(1, b"")), "not msgpack"),
    ("logs", packed([["bogus", 20, "x", None]]), "stream"),
    ("logs", packed([["log", "30", "x", None]]), "level of type str"),
    ("logs", packed(["junk"]), "a log line"),
    # a task may not name a job, a task or a user in the journal: only its code site and logger
    ("logs", packed([["log", 20, "x", {"PROCPOOL_JOB_ID": "7", "PROCPOOL_USER": "root"}]]), "fields"),
    ("logs", packed([["stdout", 20, "x", None]] * 1001), "at most 1,000"),
    ("req", packed([1, "ns"]), "malformed request"),
    ("req", packed(["1", "ns", {}]), "request message"),
    ("progress", packed(3), "progress message"),
    ("progress", packed({"fraction": float("nan")}), "fraction"),
    ("progress", packed({"done": "all"}), "progress message"),
])
def test_what_an_attempt_sends_against_the_protocol_stops_it_and_fails_it(
    t: str, body: bytes, why: str
) -> None:
    ex, events, bridge, _ = executor()
    ex.submit(spec())
    ex._on_event(("remote", {"t": "started", "aid": "1.0@1#1", "pid": 7, "worker": "tcp://w1", "host": "h1"}))
    ex._on_event(("remote", {"t": t, "aid": "1.0@1#1", "b": body}))
    out = events.finished[-1]
    assert out.status == "failed" and out.error is not None and out.error.type == "ProtocolViolation"
    assert why in out.error.message, out.error.message
    assert bridge.commands[-1] == ("stop", ["1.0@1#1"], "tcp://w1", 0.0)  # stopped on its worker
    assert not events.logs and not events.ns and not events.progress
    ex.submit(spec("2.0@1#1"))  # the engine goes on
    assert "2.0@1#1" in ex._running


def test_a_result_or_event_over_max_result_bytes_fails_the_attempt() -> None:
    ex, events, _, _ = executor()
    ex.max_result_bytes = 1024
    ex.submit(spec())
    ex._on_event(("done", "1.0@1#1", runner.result(True, "x" * 2000)))
    out = events.finished[-1]
    assert out.status == "failed" and out.error is not None and "over max_result_bytes" in out.error.message
    ex.submit(spec("a#1"))
    ex._on_event(("remote", {"t": "logs", "aid": "a#1", "b": packed([["stdout", 20, "x" * 2000, None]])}))
    out = events.finished[-1]
    assert out.attempt_id == "a#1" and out.error is not None and "over max_result_bytes" in out.error.message
    ex.submit(spec("b#1"))
    ex._on_event(("done", "b#1", b"\xc1 not msgpack"))
    assert events.finished[-1].error is not None and events.finished[-1].error.type == "ProtocolViolation"


def test_a_command_fails_with_its_exit_code_and_a_failed_call_with_its_error() -> None:
    ex, events, _, _ = executor()
    ex.submit(spec("c#1", "cmd"))
    ex._on_event(("done", "c#1", runner.result(True, None, exit_code=3)))
    out = events.finished[-1]
    assert out.status == "failed" and out.exit_code == 3 and out.error is not None
    ex.submit(spec("c#2", "cmd"))
    ex._on_event(("done", "c#2", runner.result(True, None, exit_code=0)))
    assert events.finished[-1].status == "completed"
    ex.submit(spec("f#1"))
    error = {"type": "ValueError", "message": "bad", "traceback": "tb"}
    ex._on_event(("done", "f#1", runner.result(False, error)))
    out = events.finished[-1]
    assert out.status == "failed" and out.error is not None and out.error.type == "ValueError"


def test_stops_before_and_after_the_start() -> None:
    ex, events, bridge, _ = executor()
    ex.submit(spec("q#1"))
    ex.stop_attempt("q#1", "cancelled")
    assert bridge.commands[-1] == ("stop", ["q#1"], "tcp://w1", ex.kill_grace)
    assert not events.finished  # its start may be on its way: the outcome tells
    ex._on_event(("done", "q#1", runner.result(False, None, stopped=True, not_started=True)))
    out = events.finished[-1]
    assert out.status == "cancelled" and out.error is not None and out.error.type == NOT_STARTED
    ex.submit(spec("s#1"))
    ex.stop_attempt("s#1", "cancelled")  # it had started: the start and its end come after
    ex._on_event(("remote", {"t": "started", "aid": "s#1", "pid": 3, "worker": "tcp://w1", "host": "h1"}))
    ex._on_event(("done", "s#1", runner.result(False, None, stopped=True, exit_code=-15)))
    out = events.finished[-1]
    assert (out.status, out.exit_code, out.error) == ("cancelled", -15, None)
    ex.submit(spec("r#1"))
    ex._on_event(("remote", {"t": "started", "aid": "r#1", "pid": 1, "worker": "tcp://w1", "host": "h1"}))
    ex.stop_attempt("r#1", "timeout")
    assert bridge.commands[-1] == ("stop", ["r#1"], "tcp://w1", ex.kill_grace)
    ex._on_event(("done", "r#1", runner.result(False, None, stopped=True, exit_code=-15)))
    assert events.finished[-1].status == "timeout"


def test_a_lost_worker_interrupts_what_it_ran_and_requeues_what_it_had_not_started() -> None:
    ex, events, bridge, _ = executor()
    ex._on_event(("capacity", [{"worker": "tcp://w1", "host": "h1", "threads": 2, "name": "w1"},
                               {"worker": "tcp://w2", "host": "h2", "threads": 1, "name": "w2"}]))
    for aid in ("a#1", "b#1", "c#1"):
        ex.submit(spec(aid))
    targets = {aid: run.target for aid, run in ex._running.items()}
    assert sorted(targets.values()) == ["tcp://w1", "tcp://w1", "tcp://w2"]  # the freest first
    assert ex.free_slots() == 0
    on_w1 = sorted(aid for aid, w in targets.items() if w == "tcp://w1")
    started = on_w1[0]
    ex._on_event(("remote", {"t": "started", "aid": started, "pid": 1, "worker": "tcp://w1", "host": "h1"}))
    ex._on_event(("worker-lost", "tcp://w1", []))
    ended = {o.attempt_id: o for o in events.finished}
    assert set(ended) == set(on_w1)
    assert ended[started].status == "interrupted" and ended[started].error is not None
    assert ended[started].error.type == "WorkerDied"
    other = ended[on_w1[1]]
    assert other.status == "interrupted" and other.error is not None and other.error.type == NOT_STARTED
    assert bridge.commands[-1] == ("cancel", on_w1, 0.0)  # Dask must not run them anywhere
    assert ex.free_slots() == 0 and [w["worker"] for w in ex._workers] == ["tcp://w2"]  # not w1 again
    ex._on_event(("capacity", []))  # w2 went too, unheard of: what was sent to it ends as well
    assert {o.attempt_id for o in events.finished} == set(targets)
    # a late start of the interrupted attempt elsewhere is stopped at once
    ex._on_event(("remote", {"t": "started", "aid": started, "pid": 2, "worker": "tcp://w2", "host": "h2"}))
    assert bridge.commands[-1] == ("stop", [started], "tcp://w2", 0.0)


# -- the fork server (a real process, as a Dask worker's runner uses it) ----------------------------


def test_the_fork_server_forks_attempts_in_sessions_of_their_own_and_reports_how_they_end(
    tmp_path: Path,
) -> None:
    server = runner._ForkServer()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ctl"), str(ROOT / "daemon"), str(ROOT)])}
    try:
        for args, expected in (([2, 3], ["done", True, 5]), (["x", 1], None)):
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
            theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
            pid = server.spawn(env, str(tmp_path), None, theirs)
            for fd in theirs:
                os.close(fd)
            frames.write_frame(pipes[0][1], call_payload("tests.support.tasks:add", *args))
            got = []
            while True:
                try:
                    got.append(frames.read_frame(pipes[3][0]))
                except EOFError:
                    break
            if expected is not None:
                assert got[-1] == expected
            else:
                assert got[-1][:2] == ["done", False] and got[-1][2]["type"] == "TypeError"
            assert server.wait(pid, timeout=10) == 0
            for fd in (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]):
                os.close(fd)
        # a command's process leads a session of its own (as with the local commands engine),
        # which the harness names to the runner
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        pid = server.spawn(env, str(tmp_path), None, theirs)
        for fd in theirs:
            os.close(fd)
        cmd = "cut -d' ' -f5,6 /proc/$$/stat"
        frames.write_frame(pipes[0][1], {"attempt_id": "c#1", "kind": "cmd", "cmd": cmd, "shell": True})
        child = frames.read_frame(pipes[3][0])
        assert child[0] == "child" and child[1] != pid
        assert frames.read_frame(pipes[3][0]) == ["done", True, 0]
        assert os.read(pipes[1][0], 100).split() == [str(child[1]).encode()] * 2
        assert server.wait(pid, timeout=10) == 0
        for fd in (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]):
            os.close(fd)
        # a working directory that does not exist fails the attempt, not the server
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        pid = server.spawn(env, str(tmp_path / "missing"), None, theirs)
        for fd in theirs:
            os.close(fd)
        done = frames.read_frame(pipes[3][0])
        assert done[:2] == ["done", False] and done[2]["type"] == "StartFailed"
        assert server.wait(pid, timeout=10) == 1
        for fd in (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]):
            os.close(fd)
    finally:
        if server.sock is not None:
            server.sock.shutdown(2)
        if server.proc is not None:
            server.proc.wait(10)
    assert server.proc is not None and server.proc.returncode == 0  # it ends with its socket


def test_a_timeout_counts_from_the_start_not_from_the_hand_over() -> None:
    """Queued in Dask behind another attempt, it has not run yet when the scheduler's timeout (which
    counts from the hand-over) runs out: the stop is put off to ``timeout`` after its start."""
    ex, events, bridge, loop = executor()
    queued = spec("w#1")
    queued.timeout = 0.2
    ex.submit(queued)
    ex.stop_attempt("w#1", "timeout")
    assert bridge.commands[-1][0] == "submit" and not events.finished  # not stopped: not started
    ex._on_event(("remote", {"t": "started", "aid": "w#1", "pid": 1, "worker": "tcp://w1", "host": "h1"}))
    assert bridge.commands[-1][0] == "submit"
    deadline = time.monotonic() + 5
    while bridge.commands[-1][0] != "stop":
        assert time.monotonic() < deadline, "the timeout was never armed from the start"
        loop.run_once(50)
    assert bridge.commands[-1] == ("stop", ["w#1"], "tcp://w1", ex.kill_grace)
    ex._on_event(("done", "w#1", runner.result(False, None, stopped=True)))
    assert events.finished[-1].status == "timeout"


def test_recovery_kills_the_previous_runs_attempts_and_not_the_running_daemons() -> None:
    """A restarted daemon may have sent attempts before its recovery reached the workers."""
    old = subprocess.Popen(["sleep", "60"], start_new_session=True)
    new = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    runs = {"run-1/old#1": runner._Run("old#1", "state-a", "run-1", old.pid, -1, -1, -1),
            "run-2/new#1": runner._Run("new#1", "state-a", "run-2", new.pid, -1, -1, -1),
            "run-9/other#1": runner._Run("other#1", "state-b", "run-9", other.pid, -1, -1, -1)}
    try:
        with runner._lock:
            runner._running.update(runs)
        assert runner.stop_daemon("state-a", "run-2") == 1
        assert old.wait(10) == -signal.SIGKILL
        assert new.poll() is None and other.poll() is None
        # two daemons' attempts with the same id on one worker: each stops only its own
        same = subprocess.Popen(["sleep", "60"], start_new_session=True)
        with runner._lock:
            runner._running["run-9/new#1"] = runner._Run("new#1", "state-b", "run-9", same.pid, -1, -1, -1)
        try:
            assert runner.stop("run-9", ["new#1"], 0.0) == 1
            assert same.wait(10) in (-signal.SIGTERM, -signal.SIGKILL)
            assert new.poll() is None
        finally:
            with runner._lock:
                runner._running.pop("run-9/new#1", None)
            same.kill()
            same.wait(10)
    finally:
        with runner._lock:
            for aid in runs:
                runner._running.pop(aid, None)
        for proc in (old, new, other):
            proc.kill()
            proc.wait(10)


class _Failing:
    """A meta-path finder under which importing ``distributed`` raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "distributed":
            raise self.error


@pytest.mark.parametrize(("error", "message", "hint"), [
    (ImportError("No module named 'distributed'"), "the dask engine needs the 'distributed' package",
     "pip install 'procpool[dask]'"),
    (FileNotFoundError("/proc/meminfo"), "the dask engine cannot load 'distributed': FileNotFoundError",
     "run with --debug for the traceback"),
])
def test_an_engine_that_cannot_load_its_package_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, error: Exception, message: str, hint: str
) -> None:
    from procpoold.engines import EngineUnavailable

    for name in [m for m in sys.modules if m == "distributed" or m.startswith("distributed.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Failing(error), *sys.meta_path])
    with pytest.raises(EngineUnavailable) as caught:
        DaskExecutor("tcp://127.0.0.1:1").prefork()
    assert str(caught.value).startswith(message) and caught.value.hint == hint


def test_the_runner_signals_only_a_command_that_is_the_harness_child_and_leads_its_session() -> None:
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    member = subprocess.Popen(["sleep", "60"])  # in our session: not a command's own
    try:
        me = os.getpid()
        assert runner._Run("a#1", "s", "r", me, -1, -1, -1).take_child(leader.pid)
        assert not runner._Run("a#1", "s", "r", me, -1, -1, -1).take_child(member.pid)
        assert not runner._Run("a#1", "s", "r", me, -1, -1, -1).take_child(1)  # not its child
        assert not runner._Run("a#1", "s", "r", me, -1, -1, -1).take_child("12")
        run = runner._Run("a#1", "s", "r", me, -1, -1, -1)
        assert run.take_child(leader.pid) and not run.take_child(leader.pid)  # once
    finally:
        for proc in (leader, member):
            proc.kill()
            proc.wait(10)


def test_the_bridge_reads_the_workers_again_when_the_clients_summary_differs() -> None:
    """A worker that registered between the engine's first read of the workers and its subscription
    to the cluster's events is never announced: the client's cached summary (refreshed by the Dask
    client itself) shows it, and the bridge reads the workers again."""
    import asyncio

    from procpoold.engines.dask.bridge import Bridge

    posted: list[Any] = []

    class Scheduler:
        async def identity(self, n_workers: int) -> dict[str, Any]:
            return {"workers": {"tcp://w1": {"host": "h1", "nthreads": 2, "name": "w1"}}}

    class FakeClient:
        status = "running"
        scheduler = Scheduler()
        scheduler_comm = object()

        def scheduler_info(self) -> dict[str, Any]:
            return {"n_workers": 1, "total_threads": 2}

    async def run() -> None:
        bridge = Bridge("tcp://x:1", "t", posted.extend)
        bridge._loop = asyncio.get_running_loop()
        bridge._stop = asyncio.Event()
        client = FakeClient()
        bridge._client, bridge._subscribed_on, bridge._state = client, client.scheduler_comm, "up"
        bridge._known = (0, 0)  # as read at connect, before the worker registered
        watch = asyncio.create_task(bridge._watch(client))

        async def read_again() -> None:
            while not any(e[0] == "capacity" for e in posted):
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(read_again(), 5)  # it looks at once, then once a second
        finally:
            bridge._stop.set()
        await asyncio.wait_for(watch, 5)
        assert bridge._known == (1, 2)

    asyncio.run(run())
    capacity = [e for e in posted if e[0] == "capacity"]
    assert capacity == [("capacity", [{"worker": "tcp://w1", "host": "h1", "threads": 2, "name": "w1"}])]
