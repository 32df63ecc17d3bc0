"""Choosing engines with a real daemon: the engine settings on the command line and in the config,
the missing ``distributed`` package, a reload that changes them, "local" and the job's engine field,
and what ``procctl status`` shows of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADD = "tests.support.tasks:add"


def refused(d: DaemonProcess, env: dict[str, str] | None = None) -> list[str]:
    """Run the daemon in the foreground; it must refuse to start: its error and hint lines."""
    try:
        out = subprocess.run(d.command(), capture_output=True, text=True, timeout=60,
                             env={**os.environ, **(env or {})})
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and not d.socket.exists()
        return [line for line in out.stderr.splitlines() if line.startswith(("procpoold: error:", "hint:"))]
    finally:
        d.cleanup()


@pytest.mark.parametrize("how", ["options", "config"])
def test_a_dask_engine_without_the_distributed_package_stops_the_start_with_a_hint(
    tmp_path: Path, how: str
) -> None:
    broken = tmp_path / "site" / "distributed"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("No module named \'distributed\' (test)")\n')
    if how == "options":
        args = ["--engine", "dask", "--dask-scheduler", "tcp://127.0.0.1:8786"]
    else:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[procpoold]\nengine = "dask"\ndask_scheduler = "tcp://127.0.0.1:8786"\n')
        args = ["--config", str(cfg)]
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    lines = refused(DaemonProcess(extra_args=args), {"PYTHONPATH": path})
    assert lines == [
        "procpoold: error: the dask engine needs the 'distributed' package",
        "hint: pip install 'procpool[dask]'",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--engine", "dask"], 'procpoold: error: engine = "dask" needs dask_scheduler, the address of'),
        (["--dask-scheduler", "10.0.0.5:8786"], "procpoold: error: dask_scheduler must be an address"),
        (["--dask-scheduler", "udp://h:1"], "procpoold: error: dask_scheduler must use one of the schemes"),
    ],
)
def test_bad_engine_options_stop_the_start_naming_the_setting(args: list[str], error: str) -> None:
    lines = refused(DaemonProcess(extra_args=args))
    assert len(lines) == 2 and lines[0].startswith(error), lines
    assert lines[1] == "hint: check the option or the config file named above"


def test_a_bad_engine_choice_is_refused_by_click() -> None:
    d = DaemonProcess(extra_args=["--engine", "ray"])
    try:
        out = subprocess.run(d.command(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "'ray' is not one of 'local', 'dask'" in out.stderr
    finally:
        d.cleanup()


def test_a_reload_that_changes_the_engine_settings_keeps_the_running_engines(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("workers = 1\n")
    with DaemonProcess(extra_args=["--config", str(cfg)]) as d, d.client() as client:
        cfg.write_text('workers = 1\nengine = "dask"\ndask_scheduler = "tcp://127.0.0.1:8786"\n')
        d.signal(signal.SIGHUP)
        wait_until(d.log, lambda log: "configuration reloaded" in log, what="the reload")
        assert "reload: engine, dask_scheduler take effect only after a restart" in d.log()
        assert sorted(client.status()["workers"]["engines"]) == ["commands", "pool"]
        with pytest.raises(ProcpoolError) as caught:  # still no Dask engine
            client.submit({"name": "j", "root": {"call": ADD, "args": [1, 2], "engine": "dask"}})
        assert caught.value.code is ErrorCode.INVALID_TREE
        assert caught.value.message.startswith("root.engine: no engine named 'dask'")
        done = client.submit({"name": "j", "root": {"call": ADD, "args": [1, 2]}}, wait=60)
        assert done["state"] == "completed"


def test_local_and_the_job_engine_run_on_this_daemon_and_survive_a_restart(tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"name": "here", "engine": "local", "root": {"sequential": [
        {"name": "sum", "call": ADD, "args": [2, 3]},
        {"name": "cmd", "cmd": ["true"]},
        {"name": "own", "cmd": ["true"], "engine": "commands"},
    ]}}))
    with DaemonProcess(extra_args=["--workers", "1"]) as d:
        out = d.procctl("submit", "--wait", str(job_file))
        assert out.returncode == 0, out.stdout + out.stderr
        with d.client() as client:
            job = client.status("1")
        assert [t["engine"] for t in job["tasks"]] == ["pool", "commands", "commands"]
        assert (job["job"]["engines"], job["job"]["all_local"]) == (["commands", "pool"], True)
        shown = d.procctl("status", "1")
        assert shown.returncode == 0 and "engines" not in shown.stdout and " on " not in shown.stdout
        d.stop()
        d.restart()
        with d.client() as client:  # read back from the store (the document has the new field)
            job = client.status("1")
        assert job["job"]["state"] == "completed"
        assert [t["engine"] for t in job["tasks"]] == ["pool", "commands", "commands"]


def test_an_engine_the_daemon_has_not_is_refused_at_the_field_to_fix(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"name": "there", "engine": "dask", "root": {"call": ADD}}))
    out = daemon.procctl("submit", str(job_file))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "engine: no engine named 'dask' (this daemon has: commands, pool)" in out.stderr
    job_file.write_text(json.dumps({"name": "there", "engine": "pool", "root": {"sequential": [
        {"call": ADD}, {"cmd": ["true"]}]}}))
    out = daemon.procctl("submit", str(job_file))
    assert out.returncode == 2
    assert "root.sequential[1]: the engine 'pool' does not run 'cmd' tasks (the job's engine)" in out.stderr
    with daemon.client() as client:
        assert client.status()["jobs"]["list"] == []  # nothing was stored


def test_the_json_status_names_each_task_s_engine(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        done = client.submit({"name": "j", "root": {"concurrent": [
            {"name": "a", "call": ADD, "args": [1, 1], "engine": "pool"},
            {"name": "b", "cmd": ["true"]},
        ]}}, wait=60)
    assert done["state"] == "completed"
    out = daemon.procctl("--json", "status", done["id"])
    data = json.loads(out.stdout)
    assert [t["engine"] for t in data["tasks"]] == ["pool", "commands"] and data["job"]["all_local"] is True
