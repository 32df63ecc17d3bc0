"""procpoold with the Dask engine under a real systemd: ``make install DASK=1``, a Dask scheduler
and worker as transient units in the same container, jobs whose attempts run on the worker and
whose lines come home to the daemon's journal, and the health check while the scheduler is gone.

The container has a network namespace of its own (lo only), so the scheduler's fixed port clashes
with nothing on the host. The worker runs as root, as a cluster that runs every user's jobs must:
an attempt runs as its job's user. The tasks come from the installed package (``procpool.demo``)
and from the system (``echo``, ``id``), so the worker needs no extra import path.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import REPO
from tests.e2e.container import Container
from tests.e2e.test_systemd import (
    INSTALL,
    SOCKET,
    SRC,
    UNINSTALL,
    UNITS,
    _job_id,
    as_user,
    boot_and_install,
    daemon_pids,
    make,
    poll,
    procctl,
)

DASK_INSTALL = (*INSTALL, "DASK=1")
DROP_IN = "/etc/systemd/system/procpoold.service.d/dask.conf"
CONFIG = "/etc/procpoold/procpoold.toml"
DASK = "/opt/procpoold/venv/bin/dask"
PORT = 8786
ADDRESS = f"tcp://127.0.0.1:{PORT}"
SCHEDULER_UNIT = "pp-dask-scheduler.service"
WORKER_UNIT = "pp-dask-worker.service"


def start_cluster(c: Container) -> None:
    """A scheduler on 127.0.0.1 and one worker (one process, two threads), as root."""
    c.run("systemd-run", f"--unit={SCHEDULER_UNIT}", DASK, "scheduler", "--host", "127.0.0.1",
          "--port", str(PORT), "--no-dashboard")
    c.run("systemd-run", f"--unit={WORKER_UNIT}", DASK, "worker", ADDRESS, "--host", "127.0.0.1",
          "--nworkers", "1", "--nthreads", "2", "--no-dashboard")


def stop_cluster(c: Container) -> None:
    # A transient unit is gone once stopped (or failed and reset): nothing is left to clean.
    for unit in (WORKER_UNIT, SCHEDULER_UNIT):
        c.systemctl("stop", unit, check=False)
        c.systemctl("reset-failed", unit, check=False)


def health(c: Container) -> tuple[int, str]:
    result = procctl(c, "health", check=False)
    return result.returncode, result.stdout + result.stderr


def journal_entries(c: Container, job: str) -> list[dict[str, Any]]:
    out = c.journal("-u", "procpoold", f"PROCPOOL_JOB_ID={job}", "-o", "json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def dask_service(c: Container) -> Iterator[None]:
    """The cluster running and procpoold started with engine = "dask"; afterwards the transient
    units stopped, the config file back to the shipped one and both procpoold units stopped."""
    try:
        start_cluster(c)
        c.write_file(CONFIG, f'[procpoold]\nengine = "dask"\ndask_scheduler = "{ADDRESS}"\n')
        c.systemctl("restart", "procpoold")
        yield
    except BaseException:
        print(c.journal("-u", "procpoold", "-u", SCHEDULER_UNIT, "-u", WORKER_UNIT, "-n", "300"))
        raise
    finally:
        stop_cluster(c)
        c.run("install", "-m", "0644", f"{SRC}/systemd/procpoold.toml", CONFIG, check=False)
        c.systemctl("stop", *UNITS, check=False)
        c.systemctl("reset-failed", *UNITS, check=False)
        poll(lambda: daemon_pids(c), lambda pids: not pids, what="the service's processes to exit")


def test_jobs_run_on_a_dask_cluster_under_systemd(wheelhouse: Path) -> None:
    with boot_and_install(wheelhouse) as c:
        started = time.monotonic()
        make(c, *DASK_INSTALL)  # over a plain install: the upgrade path
        print(f"make install DASK=1 took {time.monotonic() - started:.1f}s")
        assert c.run("cat", DROP_IN).stdout == (REPO / "systemd" / "dask.conf").read_text()
        assert c.show("procpoold.service", "PrivateNetwork") == "no"
        assert f"--config {CONFIG}" in c.show("procpoold.service", "ExecStart")
        c.run("/opt/procpoold/venv/bin/python", "-c", "import distributed")
        # systemd accepts the unit with its drop-in as installed, and it stays well hardened.
        verified = c.run("systemd-analyze", "verify", "--recursive-errors=no",
                         "/etc/systemd/system/procpoold.service", check=False)
        assert (verified.returncode, verified.stdout, verified.stderr) == (0, "", "")
        security = c.run("systemd-analyze", "security", "--threshold=30", "procpoold.service", check=False)
        assert security.returncode == 0, security.stdout + security.stderr

        with dask_service(c):
            _, said = poll(lambda: health(c), lambda h: h[0] == 0, timeout=60,
                           what="procctl health to be healthy with the Dask engine up")
            assert said.strip() == "healthy", said

            # A call task that logs and prints, and a command that prints, both on the worker.
            doc = {"name": "on-dask", "root": {"sequential": [
                {"name": "greet", "call": "procpool.demo:greet", "args": ["dask"]},
                {"name": "say", "cmd": ["echo", "printed on dask"]},
            ]}}
            c.write_file("/tmp/on-dask.json", json.dumps(doc))
            reply = json.loads(c.run("procctl", "--json", "--timeout", "60", "submit", "/tmp/on-dask.json",
                                     "--wait", timeout=90).stdout)
            job = _job_id(reply)
            assert reply["job"]["state"] == "completed", reply
            assert reply["job"]["engines"] == ["dask"] and reply["job"]["all_local"] is False
            greet, say = reply["tasks"]
            assert greet["result"] == "hello, dask" and say["exit_code"] == 0, reply["tasks"]
            for task in (greet, say):
                assert task["engine"] == "dask", task
                assert task["attempt_history"][0]["worker"].startswith("dask:tcp://127.0.0.1:"), task
            shown = procctl(c, "status", job).stdout
            assert shown.count("on dask") == 2 and "engines: dask" in shown, shown
            assert "dask up" in procctl(c, "status").stdout

            # The lines came home to the daemon's journal with the job's fields and the worker's host.
            host = c.run("hostname").stdout.strip()
            entries = poll(lambda: journal_entries(c, job),
                           lambda es: any(e.get("PROCPOOL_JOB_STATE") == "completed" for e in es),
                           what=f"the journal entries of job {job}")
            lines = {(e.get("PROCPOOL_TASK_NAME"), e.get("PROCPOOL_STREAM"), e["MESSAGE"]): e
                     for e in entries}
            for key in (("greet", "log", "hello, dask"), ("greet", "stdout", "hello, dask"),
                        ("say", "stdout", "printed on dask")):
                assert key in lines, (key, sorted(lines))
                entry = lines[key]
                assert entry["PROCPOOL_HOST"] == host and entry["_SYSTEMD_UNIT"] == "procpoold.service", entry
                assert entry["PROCPOOL_JOB_ID"] == job and entry["SYSLOG_IDENTIFIER"] == "procpoold", entry

            # An unprivileged member of the socket's group: the root worker runs the command as them.
            c.run("useradd", "--user-group", "--create-home", "-G", "procpool", "pp-dasker")
            try:
                uid = c.run("id", "-u", "pp-dasker").stdout.strip()
                mine = as_user(c, "pp-dasker", "procctl", "--socket", SOCKET, "--json", "--timeout", "60",
                               "run", "--wait", "--", "id", "-u")
                mine_reply = json.loads(mine.stdout)
                assert mine_reply["tasks"][0]["engine"] == "dask", mine_reply
                logs = as_user(c, "pp-dasker", "procctl", "--socket", SOCKET, "logs", "--json",
                               _job_id(mine_reply)).stdout
                records = [json.loads(line) for line in logs.splitlines()]
                printed = [r["message"] for r in records if r.get("stream") == "stdout"]
                assert printed == [uid], logs
            finally:
                c.run("userdel", "--remove", "pp-dasker", check=False)

            # The scheduler goes away (its worker ends with it): the engine is down, procctl health
            # says so and exits 2, and accepted work waits in the daemon.
            stop_cluster(c)
            _, said = poll(lambda: health(c), lambda h: h[0] == 2, timeout=60,
                           what="procctl health to report the Dask engine down")
            assert said.startswith("unhealthy") and "the engine dask is down" in said, said
            assert "dask DOWN" in procctl(c, "status").stdout
            queued = procctl(c, "--json", "run", "--name", "waiting", "--", "echo", "later")
            waiting = json.loads(queued.stdout)
            waiting_state = json.loads(procctl(c, "--json", "status", waiting["id"]).stdout)["job"]["state"]
            assert waiting_state not in ("completed", "failed"), waiting_state

            # Back again: healthy, and the waiting job runs on the new worker, its line coming home
            # as before (the daemon's client reconnected to a new scheduler: its subscription to the
            # attempts' events must be renewed, or the result and the lines would be lost).
            start_cluster(c)
            poll(lambda: health(c), lambda h: h[0] == 0, timeout=60,
                 what="procctl health to be healthy again")
            done = json.loads(procctl(c, "--json", "--timeout", "60", "wait", waiting["id"]).stdout)
            assert done["status"]["job"]["state"] == "completed", done
            assert done["status"]["tasks"][0]["engine"] == "dask"
            later = poll(lambda: journal_entries(c, waiting["id"]),
                         lambda es: any(e.get("PROCPOOL_STREAM") == "stdout" for e in es),
                         what=f"the output of job {waiting['id']}")
            printed = [e for e in later if e.get("PROCPOOL_STREAM") == "stdout"]
            assert [(e["MESSAGE"], e["PROCPOOL_HOST"]) for e in printed] == [("later", host)], printed
        assert daemon_pids(c) == []
        for unit in (SCHEDULER_UNIT, WORKER_UNIT):
            assert c.systemctl("is-active", unit, check=False).stdout.strip() != "active"


def test_dask_install_option_and_uninstall(wheelhouse: Path) -> None:
    with boot_and_install(wheelhouse) as c:
        make(c, *DASK_INSTALL)
        shipped = (REPO / "systemd" / "procpoold.toml").read_text()
        assert c.run("cat", CONFIG).stdout == shipped
        # An administrator's config file is never overwritten, and an upgrade keeps the drop-in.
        c.write_file(CONFIG, '[procpoold]\ndask_scheduler = "tcp://10.0.0.5:8786"\n')
        make(c, *INSTALL)
        assert c.run("test", "-f", DROP_IN, check=False).returncode == 0
        assert "10.0.0.5" in c.run("cat", CONFIG).stdout
        # DASK=0 removes the drop-in (and its folder, now empty); the daemon then starts as shipped.
        make(c, *INSTALL, "DASK=0")
        assert c.run("test", "-e", "/etc/systemd/system/procpoold.service.d", check=False).returncode == 1
        assert c.show("procpoold.service", "PrivateNetwork") == "yes"
        make(c, *DASK_INSTALL)
        make(c, *UNINSTALL)
        for path in (DROP_IN, "/etc/systemd/system/procpoold.service.d", "/opt/procpoold"):
            assert c.run("test", "-e", path, check=False).returncode == 1, f"{path} left behind"
        assert "10.0.0.5" in c.run("cat", CONFIG).stdout  # kept, like the state
        make(c, "uninstall", "PURGE=1")
        assert c.run("test", "-e", "/etc/procpoold", check=False).returncode == 1
