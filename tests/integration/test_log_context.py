"""Log context through a real daemon and ``procctl logs``, on each engine (the local pool and Dask):
``extra={...}`` and the tree's ``log_fields`` as PROCPOOL_X_ fields, ``--field``, ``log_level``, a
SIGHUP that changes the daemon's level, and extra fields that try to forge the daemon's own."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job
from tests.support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])

engine = each_engine()


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"tests.support.log_tasks:{fn}", "args": list(args), **extra}


def logs(daemon: DaemonProcess, ref: str, *options: str) -> list[dict[str, Any]]:
    """The task records (not the lifecycle ones) ``procctl logs --json`` prints."""
    out = daemon.procctl("logs", "--json", ref, *options)
    assert out.returncode == 0, out.stderr
    return [r for r in map(json.loads, out.stdout.splitlines()) if r["stream"] != "daemon"]


def x_fields(record: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (record.get("fields") or {}).items() if k.startswith("PROCPOOL_X_")}


def test_extra_and_tree_fields_are_shown_and_filtered(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"sequential": [
        {"name": "own", **call("log_extra", "own extra", {"request_id": "r-own", "n": 5})},
        {"name": "plain", **call("log_extra", "tree only", {})},
        {"name": "over", **call("log_extra", "overridden", {}), "log_fields": {"request_id": "r-task"}},
        {"name": "shell", "cmd": ["echo", "command line"]},
    ]}, python_path=[ROOT], log_fields={"request_id": "r-job", "team": "ops"})
    assert status["job"]["state"] == "completed", status
    job = status["job"]["id"]
    got = {r["message"]: x_fields(r) for r in logs(daemon, job)}
    assert got["own extra"] == {"PROCPOOL_X_REQUEST_ID": "r-own", "PROCPOOL_X_N": "5",
                                "PROCPOOL_X_TEAM": "ops"}
    assert got["tree only"] == {"PROCPOOL_X_REQUEST_ID": "r-job", "PROCPOOL_X_TEAM": "ops"}
    assert got["overridden"] == {"PROCPOOL_X_REQUEST_ID": "r-task", "PROCPOOL_X_TEAM": "ops"}
    assert got["command line"] == {"PROCPOOL_X_REQUEST_ID": "r-job", "PROCPOOL_X_TEAM": "ops"}
    # --field: any case, with or without the prefix; repeated, all must match.
    assert [r["message"] for r in logs(daemon, job, "--field", "request_id=r-job")] == [
        "tree only", "command line"]
    assert [r["message"] for r in logs(daemon, job, "--field", "PROCPOOL_X_N=5", "--field", "team=ops")] == [
        "own extra"]
    assert logs(daemon, job, "--field", "team=ops", "--field", "n=6") == []
    assert [r["message"] for r in logs(daemon, f"{job}.2", "--field", "team=ops")] == ["overridden"]
    bad = daemon.procctl("logs", job, "--field", "not a name=1")
    assert bad.returncode == 2 and "invalid log field name" in bad.stderr


@pytest.mark.daemon_args("--workers", "2", "--log-job-max-bytes", "0")
def test_fields_from_the_daemons_memory_tail(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"concurrent": [
        {"name": "a", **call("log_extra", "from a", {"request_id": "r-a"})},
        {"name": "b", **call("log_extra", "from b", {"request_id": "r-b"})},
    ]}, python_path=[ROOT])
    job = status["job"]["id"]
    assert [(r["message"], x_fields(r)) for r in logs(daemon, job, "--field", "request_id=r-b")] == [
        ("from b", {"PROCPOOL_X_REQUEST_ID": "r-b"})]


def test_log_level_keeps_the_task_records_from_its_level(daemon: DaemonProcess) -> None:
    # (the test daemon's own log_level is debug)
    status = run_job(daemon, {"concurrent": [
        {"name": "quiet", **call("log_levels", "Q")},
        {"name": "chatty", **call("log_levels", "C"), "log_level": "debug"},
    ]}, python_path=[ROOT], log_level="warning")
    assert status["job"]["state"] == "completed", status
    job = status["job"]["id"]
    quiet = [r["message"] for r in logs(daemon, f"{job}.0")]
    chatty = [r["message"] for r in logs(daemon, f"{job}.1")]
    assert quiet == ["Q warning"]
    assert chatty == ["C debug", "C info", "C module debug", "C warning"]


def test_hostile_extra_fields_forge_nothing_and_hurt_nothing(daemon: DaemonProcess) -> None:
    status = run_job(daemon, call("hostile_extra", "H", name="hostile"), python_path=[ROOT],
                     log_fields={"request_id": "r-h"})
    assert status["job"]["state"] == "completed", status
    job = status["job"]["id"]
    records = {r["message"]: r for r in logs(daemon, job)}
    forged = records["H forged"]
    assert (forged["job_id"], forged["task_id"], forged["priority"]) == (job, f"{job}.0", 4)
    fields = x_fields(forged)
    assert fields["PROCPOOL_X_PROCPOOL_JOB_ID"] == "999" and fields["PROCPOOL_X_MESSAGE_ID"] == "0" * 32
    assert fields["PROCPOOL_X_MESSAGE"] == "forged" and fields["PROCPOOL_X_OK_NUL"] == "a\ufffdb"
    assert fields["PROCPOOL_X_REQUEST_ID"] == "r-h"
    assert len(fields["PROCPOOL_X_HUGE"]) == 4096
    assert len(x_fields(records["H many"])) == 32 + 1  # the task's 32, and the tree's one
    assert x_fields(records["H bad value"]) == {"PROCPOOL_X_GOOD": "1", "PROCPOOL_X_REQUEST_ID": "r-h"}
    # In the daemon's own log (stderr): the job's fields are the daemon's; no worker was killed.
    text = daemon.log()
    line = next(ln for ln in text.splitlines() if "H forged" in ln)
    assert f" PROCPOOL_JOB_ID={job} " in line and " PROCPOOL_X_PROCPOOL_JOB_ID=999 " in line
    assert " MESSAGE_ID=" not in line and " PRIORITY=" not in line and "sshd" in line
    assert "was killed: it sent" not in text
    with daemon.client() as client:
        assert client.ping()["pid"] == daemon.pid


class ConfiguredDaemon(DaemonProcess):
    """A daemon whose log_level comes from its config file (the harness's --log-level left out)."""

    def command(self) -> list[str]:
        argv = super().command()
        at = argv.index("--log-level")
        return argv[:at] + argv[at + 2 :]


@pytest.fixture
def configured(tmp_path: Path, engine_args: list[str]) -> Iterator[tuple[DaemonProcess, Path]]:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text('log_level = "info"\nworkers = 2\n')
    d = ConfiguredDaemon(extra_args=["--config", str(cfg), *engine_args])
    with serving(d.start()) as started:
        yield started, cfg


def test_sighup_changes_the_level_of_the_running_workers(configured: tuple[DaemonProcess, Path],
                                                         engine: str) -> None:
    daemon, cfg = configured
    first = run_job(daemon, call("log_levels", "A"), python_path=[ROOT])
    assert [r["message"] for r in logs(daemon, first["job"]["id"])] == ["A info", "A warning"]
    with daemon.client() as client:
        workers = {w["pid"] for w in client.pool()["workers"] if w["engine"] == "pool"}
    cfg.write_text('log_level = "debug"\nworkers = 2\n')
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.log().count("configuration reloaded"), what="the reload")
    second = run_job(daemon, call("log_levels", "B"), python_path=[ROOT])
    assert [r["message"] for r in logs(daemon, second["job"]["id"])] == [
        "B debug", "B info", "B module debug", "B warning"]
    if engine == "local":  # a worker forked before the reload: the level reached it
        assert second["tasks"][0]["attempt_history"][-1]["pid"] in workers
    cfg.write_text('log_level = "info"\nworkers = 3\n')
    daemon.signal(signal.SIGHUP)
    with daemon.client() as client:
        wait_until(lambda: client.status()["workers"]["configured"], lambda n: n == 3, what="the reload")
    third = run_job(daemon, call("log_levels", "C"), python_path=[ROOT])
    assert [r["message"] for r in logs(daemon, third["job"]["id"])] == ["C info", "C warning"]


def test_a_job_log_file_is_whole_at_the_warning_level(tmp_path: Path, engine: str) -> None:
    """At a log_level above info no "job finished" record sealed the job's last lifecycle events
    before its file was closed: they often went into a new file of their own, which hid the others
    (``procctl logs`` then showed only 'task ... completed'). Twenty jobs: without the fix, some."""
    if engine != "local":
        pytest.skip("the job log files do not depend on the engine")
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text('log_level = "warning"\nworkers = 2\n')
    with serving(ConfiguredDaemon(extra_args=["--config", str(cfg)]).start()) as daemon:
        for i in range(20):
            status = run_job(daemon, {"name": "say", "cmd": ["echo", f"line {i}"]})
            out = daemon.procctl("logs", "--json", status["job"]["id"])
            assert out.returncode == 0, out.stderr
            assert [json.loads(line)["message"] for line in out.stdout.splitlines()] == [
                'task "say" attempt 1 starting', f"line {i}", 'task "say" completed'], i
