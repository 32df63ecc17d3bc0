"""On the Dask engine, each user's attempts run as that user too: a Dask worker that runs as root
switches to the job's user (by name, on the worker's host) before any task code runs, as the local
engines do; being allowed to submit grants nothing more on the cluster than here."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.users import throwaway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_users_call_and_command_run_as_that_user_on_the_dask_workers(dask_scheduler: str) -> None:
    # (the dask_scheduler fixture skips where Dask is not installed)
    with throwaway({"bob": ["team"]}, ["team"]) as (made, groups):
        bob = made["bob"]
        with serving(DaemonProcess(extra_args=[
                "--workers", "2", "--engine", "dask", "--dask-scheduler", dask_scheduler]).start()) as daemon:
            job = daemon.procctl("run", "--user", bob.name, "--", "sh", "-c", "id -u; id -Gn").stdout.strip()
            assert daemon.procctl("wait", job).returncode == 0
            logs = daemon.procctl("logs", "--json", job)
            lines = [r["message"] for r in map(json.loads, logs.stdout.splitlines())
                     if r.get("stream") == "stdout"]
            assert lines[0] == str(bob.uid), (lines, logs.stderr)
            assert groups["team"] in lines[1].split()
            assert json.loads(daemon.procctl("--json", "status", job).stdout)["tasks"][0]["engine"] == "dask"
            call_job = daemon.procctl("run", "--user", bob.name, "os:getuid").stdout.strip()
            assert daemon.procctl("wait", call_job).returncode == 0
            task = json.loads(daemon.procctl("--json", "status", call_job).stdout)["tasks"][0]
            assert task["result"] == bob.uid and task["result"] != os.geteuid()
