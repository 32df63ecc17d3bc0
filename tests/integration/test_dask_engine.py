"""The Dask engine against real Dask clusters: what only a distributed engine has to get right.

The job-tree semantics on dask are the parametrized suites (test_jobs_call.py, test_jobs_cmd.py);
here: a Dask worker dying mid-task, tasks spread over the workers of a cluster of separate
processes, task logs coming home, the scheduler going away and coming back, and the daemon killed
while a task runs on a worker. Each attempt runs in a subprocess of a Dask worker; the tests find
it by the pid the task writes and never wait on time alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from procpool import Client
from tests.support.daemon import DaemonProcess, serving
from tests.support.dask_cluster import (
    DaskCluster,
    LocalDaskCluster,
    ProcessDaskCluster,
    with_env_marker,
    worker_imports,
)
from tests.support.fixtures import require_dask
from tests.support.jobs import run_job, sh, tasks_by_name
from tests.support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])
MARK = "PROCPOOL_TEST_MARK"


def dask_daemon(address: str, *args: str) -> DaemonProcess:
    return DaemonProcess(extra_args=["--workers", "2", "--log-target", "stderr", "--engine", "dask",
                                     "--dask-scheduler", address, *args])


def pid_in(path: Path) -> int:
    """The pid a task wrote to ``path``, once it is there (bounded)."""
    wait_until(path.exists, what=f"the task to write {path}")
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def worker_running(pid: int, cluster: DaskCluster) -> int:
    """The pid of the Dask worker process that ``pid`` (an attempt's process) runs under."""
    workers = {w.pid for w in cluster.workers().values()}
    for parent in psutil.Process(pid).parents():
        if parent.pid in workers:
            return int(parent.pid)
    chain = [(p.pid, p.name()) for p in psutil.Process(pid).parents()]
    raise AssertionError(f"process {pid} does not run under a Dask worker {sorted(workers)}: parents {chain}")


def waiting_call(marker: Path, gate: Path, **extra: Any) -> dict[str, Any]:
    """A call task that writes its pid to ``marker``, then waits until ``gate`` exists."""
    return {"call": "tests.support.tasks:pid_then_wait", "args": [str(marker), str(gate)], **extra}


def history(task: dict[str, Any]) -> list[str | None]:
    return [a["status"] for a in task["attempt_history"]]


TASK_MODULES = ["procpool", "procpoold", "tests.support.tasks"]


def test_the_clusters_workers_run_the_task_modules(dask_scheduler: str, dask_processes: ProcessDaskCluster
                                                   ) -> None:
    """What the engine relies on, without it: a subprocess of any worker of either cluster imports
    procpool, procpoold and the tests' task modules (the harness's environment, not the engine)."""
    for address in (dask_scheduler, dask_processes.address):
        found = worker_imports(address, TASK_MODULES)
        assert len(found) == 2 and set(found.values()) == {""}, found


@pytest.mark.parametrize("on_interrupt", ["retry", "fail"])
def test_a_worker_killed_mid_task_interrupts_the_attempt(
    own_dask_cluster: LocalDaskCluster, tmp_path: Path, on_interrupt: str
) -> None:
    marker, gate = tmp_path / "pid", tmp_path / "gate"
    with serving(dask_daemon(own_dask_cluster.address).start()) as daemon, daemon.client() as client:
        job_id = client.submit({"name": "victim", "python_path": [ROOT], "on_interrupt": on_interrupt,
                                "root": {"name": "held", **waiting_call(marker, gate)}})["id"]
        first = pid_in(marker)
        worker = worker_running(first, own_dask_cluster)
        marker.unlink()
        os.kill(worker, signal.SIGKILL)
        # The attempt's process goes with its worker (it must not run on beside a second attempt).
        wait_until(lambda: alive(first), lambda up: not up, what=f"attempt 1's process {first} to end")
        if on_interrupt == "retry":
            second = pid_in(marker)  # run again at once, on the other worker or the nanny's new one
            assert second != first
            gate.touch()
            result = client.wait(job_id, timeout=60)
            task = tasks_by_name(result["status"])["held"]
            assert result["state"] == "completed", task
            assert history(task) == ["interrupted", "completed"]
            ran = [int(pid) for pid in Path(f"{marker}.all").read_text().split()]
            # once before the kill, once after it (the second attempt): Dask itself must not have
            # run the lost attempt again on the other worker
            assert ran == [first, task["result"]], ran
        else:
            result = client.wait(job_id, timeout=60)
            task = tasks_by_name(result["status"])["held"]
            assert (result["state"], task["state"], history(task)) == ("failed", "failed", ["interrupted"])
            ran = [int(pid) for pid in Path(f"{marker}.all").read_text().split()]
            assert ran == [first], ran  # never run again, not even for a moment


def test_tasks_land_on_both_workers_of_a_cluster_of_processes(
    dask_processes: ProcessDaskCluster, tmp_path: Path
) -> None:
    """``dask scheduler`` and two ``dask worker`` processes: 5 tasks that all wait for one gate
    need 5 slots at once, more than one worker's 4 threads."""
    go = tmp_path / "go"
    n = dask_processes.threads + 1
    script = 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && until [ -e "$1" ]; do sleep 0.02; done'
    tasks = [{"name": f"t{i}", "cmd": ["sh", "-c", script, str(tmp_path / f"t{i}.pid"), str(go)],
              "timeout": 120} for i in range(n)]
    with serving(dask_daemon(dask_processes.address).start()) as daemon, daemon.client() as client:
        job_id = client.submit({"name": "spread", "root": {"concurrent": tasks}})["id"]
        pids = [pid_in(tmp_path / f"t{i}.pid") for i in range(n)]
        workers = dask_processes.workers()
        under = {worker_running(pid, dask_processes) for pid in pids}
        assert under == {w.pid for w in workers.values()}
        go.touch()
        result = client.wait(job_id, timeout=60)
    assert result["state"] == "completed", result
    named = {tasks_by_name(result["status"])[f"t{i}"]["attempt_history"][0]["worker"] for i in range(n)}
    assert len(named) == 2, named  # the status names the worker each attempt ran on
    for worker in named:
        known = [w for w in workers.values() if worker and (w.address in worker or worker == w.name)]
        assert known, (worker, workers)


TALKER = textwrap.dedent('''
    import logging
    import sys

    from procpool import task

    def talk():
        print("printed on dask")
        sys.stderr.write("to stderr on dask\\n")
        logging.getLogger("mytask").warning("logged %s", "on dask")
        task.context().logger.info("context logger on dask")
        return 1
''')


def test_task_logs_come_home_with_the_host(dask_scheduler: str, tmp_path: Path) -> None:
    (tmp_path / "talker.py").write_text(TALKER)
    with serving(dask_daemon(dask_scheduler).start()) as daemon:
        status = run_job(daemon, {"concurrent": [
            {"name": "talk", "call": "talker:talk"},
            {"name": "echo", **sh("echo cmd out on dask; echo cmd err on dask >&2")},
        ]}, name="talky", python_path=[str(tmp_path)])
        assert status["job"]["state"] == "completed", status
        ids = {t["name"]: t["id"] for t in status["tasks"]}
        got = {}
        for name, task_id in ids.items():
            out = daemon.procctl("logs", "--json", task_id)
            assert out.returncode == 0, out.stderr
            got[name] = [(r["stream"], r["message"]) for r in map(json.loads, out.stdout.splitlines())
                         if r["stream"] != "daemon"]
        assert {("stdout", "printed on dask"), ("stderr", "to stderr on dask"), ("log", "logged on dask"),
                ("log", "context logger on dask")} <= set(got["talk"]), got["talk"]
        assert {("stdout", "cmd out on dask"), ("stderr", "cmd err on dask")} <= set(got["echo"]), got["echo"]
        # The daemon's own log records of these lines carry the task's fields and the host it ran on.
        wanted = ("logged on dask", "cmd out on dask")
        log = wait_until(daemon.log, lambda text: all(w in text for w in wanted), what="the lines in the log")
        for text, task_id in zip(wanted, (ids["talk"], ids["echo"]), strict=True):
            [line] = [x for x in log.splitlines() if text in x and "procpoold.task" in x]
            assert f"PROCPOOL_TASK_ID={task_id}" in line and "PROCPOOL_HOST=" in line, line


def engine_health(client: Client) -> dict[str, Any]:
    engines: dict[str, Any] = client.status()["workers"]["engines"]
    return dict(engines["dask"])


def test_an_unreachable_scheduler_holds_the_queue_until_it_is_back(
    dask_processes: ProcessDaskCluster, tmp_path: Path
) -> None:
    with serving(dask_daemon(dask_processes.address).start()) as daemon, daemon.client() as client:
        # (READY=1 does not wait for the scheduler: a daemon whose cluster is away still starts)
        wait_until(lambda: engine_health(client), lambda h: h["up"], timeout=60, what="the dask engine up")
        dask_processes.kill_scheduler()
        down = wait_until(lambda: engine_health(client), lambda h: not h["up"], timeout=60,
                          what="the dask engine to report the scheduler gone")
        assert down["reason"], down
        out = daemon.procctl("--json", "status")
        assert out.returncode == 0 and not json.loads(out.stdout)["workers"]["engines"]["dask"]["up"]
        out = daemon.procctl("status")
        assert out.returncode == 0 and f"dask DOWN: {down['reason']}" in out.stdout, out.stdout
        job_id = client.submit({"name": "queued", "root": {"name": "t", "cmd": ["true"]}})["id"]
        task = client.status(job_id)["tasks"][0]
        assert task["state"] in ("pending", "ready") and task["attempts"] == 0, task
        # The scheduler again on the same port, and the engine connected to it before any worker
        # is: the workers that join afterwards must get the queued task.
        dask_processes.start_scheduler()
        wait_until(lambda: engine_health(client), lambda h: h["up"], timeout=60,
                   what="the dask engine to reconnect")
        assert client.status(job_id)["tasks"][0]["attempts"] == 0
        for _ in range(dask_processes.n_workers):
            dask_processes.start_worker()
        dask_processes.workers()
        result = client.wait(job_id, timeout=60)
        task = result["status"]["tasks"][0]
        if result["state"] != "completed":
            print(json.dumps(task, indent=1), dask_processes.log(), sep="\n")  # (with the daemon's log)
        assert result["state"] == "completed"
        assert history(task) == ["completed"]  # no attempt was made (and lost) while it was down


def test_workers_that_join_after_the_engine_connected_run_its_tasks() -> None:
    """A scheduler with no worker yet: the engine is up with no capacity, and the workers that come
    later take the queued job (what a restarted cluster looks like for a moment, and an autoscaled one
    at its start)."""
    require_dask()
    with ProcessDaskCluster(start_workers=False) as cluster, serving(dask_daemon(cluster.address).start()
                                                                      ) as daemon, daemon.client() as client:
        wait_until(lambda: engine_health(client), lambda h: h["up"], timeout=60, what="the dask engine up")
        job_id = client.submit({"name": "early", "root": {"concurrent": [
            {"name": "call", "call": "tests.support.tasks:add", "args": [1, 2]},
            {"name": "cmd", "cmd": ["true"]}]}, "python_path": [ROOT]})["id"]
        for _ in range(cluster.n_workers):
            cluster.start_worker()
        cluster.workers()
        result = client.wait(job_id, timeout=60)
        assert result["state"] == "completed", result


def test_two_daemons_on_one_worker_keep_their_attempts_apart(tmp_path: Path) -> None:
    """Attempt ids ("1.0#1") are unique in one daemon, not across daemons: two daemons whose job 1
    runs on the same Dask worker at once must each stop only their own attempt."""
    require_dask()
    gates = {name: tmp_path / f"{name}.gate" for name in ("a", "b")}
    markers = {name: tmp_path / f"{name}.pid" for name in ("a", "b")}
    with LocalDaskCluster(workers=1, threads=4) as cluster, \
            serving(dask_daemon(cluster.address).start()) as a, \
            serving(dask_daemon(cluster.address).start()) as b:
        jobs = {}
        for name, daemon in (("a", a), ("b", b)):
            with daemon.client() as client:
                jobs[name] = client.submit({"name": name, "python_path": [ROOT], "root": {
                    "name": "held", **waiting_call(markers[name], gates[name])}})["id"]
        assert jobs["a"] == jobs["b"]  # the same job, task and attempt ids in both daemons
        pids = {name: pid_in(markers[name]) for name in ("a", "b")}
        with a.client() as client:
            client.cancel(jobs["a"])
            assert client.wait(jobs["a"], timeout=60)["state"] == "cancelled"
        wait_until(lambda: alive(pids["a"]), lambda up: not up, what="a's attempt to be stopped")
        assert alive(pids["b"]), "cancelling a's job stopped b's attempt"
        gates["b"].touch()
        with b.client() as client:
            result = client.wait(jobs["b"], timeout=60)
        assert result["state"] == "completed", result
        assert tasks_by_name(result["status"])["held"]["result"] == pids["b"]


def test_a_daemon_killed_mid_task_settles_the_attempt_and_stops_its_process(
    dask_cluster: LocalDaskCluster, tmp_path: Path
) -> None:
    marker, gate, mark = tmp_path / "pid", tmp_path / "gate", uuid.uuid4().hex
    # sh writes its pid, starts a child that would run for long, and ends (killing it) at the gate.
    script = ('echo $$ > "$0.tmp" && mv "$0.tmp" "$0"; sleep 1000 & '
              'until [ -e "$1" ]; do sleep 0.02; done; kill $!')
    try:
        with serving(dask_daemon(dask_cluster.address).start()) as daemon:
            with daemon.client() as client:
                job_id = client.submit({"name": "survivor", "env": {MARK: mark}, "root": {
                    "name": "held", "cmd": ["sh", "-c", script, str(marker), str(gate)]}})["id"]
                first = pid_in(marker)
            worker_running(first, dask_cluster)
            left = set(with_env_marker(MARK, mark))
            assert first in left
            marker.unlink()
            daemon.crash(everything=False)  # the daemon alone: what runs on the Dask workers stays
            daemon.restart()
            # The new daemon's recovery stops what the dead one left on the workers...
            wait_until(lambda: [p for p in left if alive(p)], lambda pids: not pids, timeout=60,
                       what="the processes of the first attempt to be stopped")
            # ...and the job's on_interrupt policy (retry) runs the task again.
            second = pid_in(marker)
            assert second not in left
            gate.touch()
            with daemon.client() as client:
                result = client.wait(job_id, timeout=60)
        task = result["status"]["tasks"][0]
        assert result["state"] == "completed", task
        assert history(task) == ["interrupted", "completed"]
    finally:  # on a failure, nothing of the attempts is left to the next test on the shared cluster
        gate.touch()
        for pid in with_env_marker(MARK, mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    dask_cluster.assert_no_strays()
