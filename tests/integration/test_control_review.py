"""Control-plane regressions found in review: waits on every form of reference, and what a reader
who is neither the submitter nor an administrator may see."""

from __future__ import annotations

import time

from tests.support.daemon import DaemonProcess


def test_a_wait_on_a_task_by_name_is_answered_when_the_task_finishes(daemon: DaemonProcess) -> None:
    job = {"name": "named", "cwd": "/", "root": {"sequential": [
        {"name": "quick", "cmd": ["sleep", "0.3"]},
        {"name": "slow", "cmd": ["sleep", "600"]},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(job)["id"]
        started = time.monotonic()
        result = client.call("wait", {"id": f"{job_id}/quick", "timeout": 20.0}, timeout=30)
        took = time.monotonic() - started
        client.cancel(job_id)
    assert result["finished"] and result["state"] == "completed", result
    assert took < 10, f"the wait was answered by its timeout ({took:.1f} s), not by the task"


def test_the_log_tail_in_a_status_is_only_for_the_submitter_or_an_administrator() -> None:
    """Reading a job's logs needs its submitter or an administrator; the status, open to anyone,
    must not hand out the same lines as the tail of a task that failed."""
    import json
    import os

    from tests.support.daemon import serving
    from tests.support.users import procctl_as, throwaway

    secret = "API_TOKEN=s3cr3t-of-alice"
    job = {"name": "leaky", "cwd": "/", "root": {"name": "t", "cmd": ["sh", "-c", f"echo {secret}; exit 3"]}}
    with throwaway({"alice": ["sock"], "bob": ["sock"]}, ["sock"]) as (users, groups):
        d = DaemonProcess(extra_args=["--workers", "1", "--group", groups["sock"], "--log-target", "stderr"])
        os.chmod(d.dir, 0o711)
        with serving(d):
            d.start()
            sock = str(d.socket)
            alice, bob = users["alice"].name, users["bob"].name
            out = procctl_as(alice, sock, "submit", "--wait", "-", input=json.dumps(job))
            assert out.returncode == 1, out.stderr  # the task failed
            with d.client() as client:
                job_id = client.status(limit=1)["jobs"]["list"][0]["id"]

            def tails(user: str, ref: str) -> list[str]:
                got = procctl_as(user, sock, "--json", "status", ref)
                assert got.returncode == 0, got.stderr
                status = json.loads(got.stdout)
                tasks = status["tasks"] if "tasks" in status else [status["task"]]
                return [line for t in tasks for line in t["tail"]]

            assert any(secret in line for line in tails(alice, job_id))
            assert not any(secret in line for line in tails(bob, job_id))
            assert not any(secret in line for line in tails(bob, f"{job_id}.0"))
            assert not any(secret in line for line in tails(bob, f"{job_id}/t"))
            with d.client() as client:  # root, an administrator
                assert any(secret in line for t in client.status(job_id)["tasks"] for line in t["tail"])


def test_a_prerequisite_named_many_times_does_not_stall_the_daemon(daemon: DaemonProcess) -> None:
    """'after' naming the same prerequisites thousands of times (a request of a few dozen KB): the
    daemon once re-evaluated the waiting job once per copy, each time in O(copies)."""
    copies = 2_000
    with daemon.client() as client:
        first = client.submit({"name": "x", "cwd": "/", "root": {"cmd": ["sleep", "0.5"]}})["id"]
        other = client.submit({"name": "y", "cwd": "/", "root": {"cmd": ["sleep", "600"]}})["id"]
        waiting = client.submit(
            {"name": "z", "cwd": "/", "root": {"cmd": ["true"]}}, after=[first] * copies + [other] * copies
        )["id"]
        assert client.wait(first, timeout=20)["finished"]
    with daemon.client() as client:
        client.timeout = 3.0
        started = time.monotonic()
        client.ping()
        assert time.monotonic() - started < 3.0
        assert client.status(waiting)["job"]["state"] == "pending"
        client.cancel(other)
        assert client.wait(waiting, timeout=20)["state"] == "failed"


def test_after_names_at_most_a_thousand_distinct_prerequisites(daemon: DaemonProcess) -> None:
    import pytest

    from procpool.contract.errors import ErrorCode, ProcpoolError

    quick = {"name": "z", "cwd": "/", "root": {"cmd": ["true"]}}
    with daemon.client() as client:
        first = client.submit({"name": "x", "cwd": "/", "root": {"cmd": ["true"]}})["id"]
        client.submit(quick, after=[first] * 1001)  # one prerequisite, named 1,001 times
        spellings = [f"{first}." + "0" * n for n in range(1, 17)]  # 1.0, 1.00, ...: one task
        job = client.submit(quick, after=spellings)
        assert client.wait(job["id"], timeout=20)["state"] == "completed"
        with pytest.raises(ProcpoolError) as refused:
            client.submit(quick, after=spellings + [f"{first}/x{i}" for i in range(990)])
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.message == "submit: 'after' names 1006 prerequisites, at most 1000"


FLOOD = """
import sys, time, zmq
from procpool.contract.codec import encode_request
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.SNDHWM, 0)
s.connect("ipc://" + sys.argv[1])
msg = encode_request("x", "ping", {})
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.send(msg, zmq.NOBLOCK)
    except zmq.Again:
        time.sleep(0.0001)
s.close(0)
ctx.term()
"""


def test_a_flood_of_requests_does_not_starve_the_loops_timers(daemon: DaemonProcess) -> None:
    """Clients that send requests as fast as they can (and never read) must not keep the loop in
    the socket's callback: its timers (a wait's timeout, task timeouts, the watchdog ping, which
    systemd kills the daemon without) have to run meanwhile."""
    import subprocess
    import sys

    with daemon.client() as client:
        job = client.submit({"name": "s", "cwd": "/", "root": {"cmd": ["sleep", "60"]}})["id"]
        floods = [
            subprocess.Popen([sys.executable, "-c", FLOOD, str(daemon.socket), "10"]) for _ in range(3)
        ]
        try:
            time.sleep(1.5)
            started = time.monotonic()
            result = client.wait(job, timeout=0.5)
            took = time.monotonic() - started
        finally:
            for p in floods:
                p.wait(30)
        client.cancel(job)
    assert not result["finished"]
    # (starved, it is answered once the floods end, 10 s after they began: 8 s after it was asked)
    assert took < 6.0, f"a 0.5 s wait was answered after {took:.1f} s"
