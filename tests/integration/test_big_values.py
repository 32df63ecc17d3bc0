"""A 64 MiB argument and a 64 MiB result through a real procpoold and the real client; 1 MiB
values (the size of benchmark W4) through a kill -9.

The pool moves messages larger than half its ring through the spill path (tests/integration/pool
covers that inside the test process); here the value also crosses the control socket both ways
and the state store. The daemon's control messages are limited to ``max_message_size`` (16 MiB by
default), so the daemon runs with a raised limit, and at the default limit the submit is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from procpool.client import Client
from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE
from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.jobs import sh, tasks_by_name, wait_task_state

pytestmark = pytest.mark.timeout(120)

BIG = 64 * 2**20
#: The raised limit: room for a 64 MiB value plus its envelope (a status reply adds ~1 KiB).
LIMIT = BIG + 2**20
BENCH = str(Path(__file__).resolve().parents[2] / "bench")  # bench/tasks.py: echo(value) -> value


def echo_job(value: bytes) -> dict[str, Any]:
    return {
        "name": "big",
        "python_path": [BENCH],
        "root": {"name": "echo", "call": "tasks:echo", "args": [value]},
    }


def digest(value: Any) -> str:
    assert isinstance(value, bytes), f"expected bytes, got {type(value).__name__}"
    return hashlib.sha256(value).hexdigest()


def spill_objects(pids: set[int]) -> list[str]:
    """Spill objects in /dev/shm written by one of ``pids`` (``procpool-spill-<pid>-<n>``)."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(tuple(f"procpool-spill-{p}-" for p in pids))]


def test_64_mib_argument_and_result_through_the_daemon_and_the_store(tmp_path: Path) -> None:
    value = random.Random(64).randbytes(BIG)
    expected = digest(value)
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text(f"max_message_size = {LIMIT}\n")
    d = DaemonProcess(extra_args=["--workers", "1", "--config", str(cfg)])
    try:
        d.start()
        with Client(d.socket, timeout=60, max_message_size=LIMIT) as client:
            job_id = client.submit(echo_job(value))["id"]
            done = client.wait(job_id, timeout=60)
            assert done["finished"], f"job {job_id} did not finish: {done['status']['job']}"
            task = tasks_by_name(done["status"])["echo"]
            assert (task["state"], task["attempts"]) == ("completed", 1), task["error"]
            assert digest(task["result"]) == expected
            # Both spills (the argument to the worker, the result back) were taken by their reader.
            assert spill_objects({d.pid, task["attempt_history"][0]["pid"]}) == []
            del done, task
        d.stop()

        d.restart()  # same socket, state dir and config: the result comes back from the store
        with Client(d.socket, timeout=60) as client:  # replies have no limit: the default will do
            status = client.status(job_id)
            task = tasks_by_name(status)["echo"]
            assert status["job"]["state"] == "completed"
            assert (task["state"], task["attempts"]) == ("completed", 1)  # not run again
            assert digest(task["result"]) == expected
        d.stop()
    finally:
        d.cleanup()


def test_64_mib_submit_is_refused_at_the_default_limit(daemon: DaemonProcess) -> None:
    value = random.Random(64).randbytes(BIG)
    # The client refuses to send it (its limit matches the daemon's default) ...
    with daemon.client() as client, pytest.raises(ProcpoolError) as refused:
        client.submit(echo_job(value))
    assert refused.value.code is ErrorCode.TOO_LARGE
    assert refused.value.hint is not None and "--max-message-size" in refused.value.hint
    # ... and a client that sends it anyway gets the daemon's too_large as its answer (an error
    # reply without a request id: the daemon did not read the request), not a timeout.
    with Client(daemon.socket, timeout=60, max_message_size=LIMIT) as client:
        with pytest.raises(ProcpoolError) as refused:
            client.submit(echo_job(value))
        assert refused.value.code is ErrorCode.TOO_LARGE
        assert f"maximum message size of {DEFAULT_MAX_MESSAGE_SIZE} bytes" in refused.value.message
        assert refused.value.hint is not None and "max_message_size" in refused.value.hint
        # The daemon carries on: nothing was created and the same job with a small value runs.
        assert client.ping()["pid"] == daemon.pid
        assert client.status()["jobs"]["list"] == []
        job_id = client.submit(echo_job(b"small"))["id"]
        done = client.wait(job_id, timeout=60)
    assert done["finished"] and tasks_by_name(done["status"])["echo"]["result"] == b"small"
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_procctl_takes_the_raised_limit(daemon: DaemonProcess, tmp_path: Path) -> None:
    job = tmp_path / "big.json"
    # 80 environments of 220 KiB: each within max_env_bytes, together more than 16 MiB
    tasks = [{"cmd": ["true"], "env": {"PAD": "x" * (220 * 2**10)}} for _ in range(80)]
    job.write_text(json.dumps({"name": "big", "root": {"concurrent": tasks}}))
    out = daemon.procctl("submit", str(job))
    assert out.returncode != 0 and "exceeds the maximum message size" in out.stderr
    assert "--max-message-size" in out.stderr  # the hint
    # Raised on the client only: now the daemon refuses it, and procctl says so in one line.
    out = daemon.procctl("submit", str(job), env={"PROCPOOL_MAX_MESSAGE_SIZE": str(LIMIT)})
    assert out.returncode != 0 and f"maximum message size of {DEFAULT_MAX_MESSAGE_SIZE}" in out.stderr
    assert "unreachable" not in out.stderr


def state_files(state_dir: Path) -> list[str]:
    """Files under the large-value folder, relative to it (spare files left out)."""
    root = state_dir / "state-values"
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".spare" not in p.parts
    )


def test_1_mib_argument_and_result_survive_a_kill_9_once_acknowledged(tmp_path: Path) -> None:
    """A 1 MiB result that was reported, and the 1 MiB argument of a job whose submit was
    answered, both come back whole after the daemon and all it started are killed with SIGKILL."""
    first, second = random.Random(1).randbytes(2**20), random.Random(2).randbytes(2**20)
    gate = tmp_path / "gate"
    d = DaemonProcess(extra_args=["--workers", "1"])
    try:
        d.start()
        with d.client() as client:
            done = client.submit(echo_job(first), wait=60)
            assert done["finished"] and done["state"] == "completed", done
            task = tasks_by_name(done["status"])["echo"]
            assert task["result"] == first  # exactly, byte for byte
            # Through the rings inline: no spill object was written, none is left.
            assert spill_objects({d.pid, task["attempt_history"][0]["pid"]}) == []
            held = {
                "name": "held",
                "python_path": [BENCH],
                "root": {
                    "sequential": [
                        {"name": "gate", **sh(f"until [ -e {gate} ]; do sleep 0.01; done")},
                        {"name": "echo", "call": "tasks:echo", "args": [second]},
                    ]
                },
            }
            held_id = client.submit(held)["id"]  # answered: the argument is durable from here on
            wait_task_state(client, held_id, "gate")
        # Each value is a file of its job: the first job's document and result, the second's document.
        assert state_files(d.state_dir) == [f"{done['id']}/doc", f"{done['id']}/log-1", f"{held_id}/doc"]
        d.crash()
        gate.touch()
        d.restart()
        with d.client() as client:
            status = client.status(done["id"])
            assert status["job"]["state"] == "completed"
            assert tasks_by_name(status)["echo"]["result"] == first
            finished = client.wait(held_id, timeout=60)
            assert finished["finished"] and finished["status"]["job"]["state"] == "completed"
            task = tasks_by_name(finished["status"])["echo"]
            assert task["result"] == second and task["attempts"] == 1
            assert spill_objects({d.pid, task["attempt_history"][0]["pid"]}) == []
        d.stop()
    finally:
        d.cleanup()
