"""``procctl status``'s job list through a real daemon: queued jobs are queued (not ``running
0/1``), the list says how many of how many it shows, and the daemon filters by state, name, user
and tag."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.daemon_args("--workers", "1")]


def test_queued_jobs_are_queued_and_the_list_is_filtered_by_the_daemon(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        busy = client.submit({"name": "busy", "root": {"cmd": ["sleep", "100"], "tags": ["slow"]}})["id"]
        wait_until(lambda: client.status(busy)["job"]["state"], lambda s: s == "running", what="busy runs")
        queued = [client.submit({"name": f"quick-{i}", "root": {"cmd": ["true"], "tags": ["q"]}})["id"]
                  for i in range(4)]
        try:
            out = daemon.procctl("status")
            assert out.returncode == 0, out.stderr
            rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()
                    if len(line.split()) >= 8 and line.split()[0].isdigit()}
            assert rows[busy][4:6] == ["running", "0/1"] and rows[busy][7] == "-"  # started, not ended
            for job_id in queued:  # nothing started: no start, no end, no duration
                assert rows[job_id][4:] == ["queued", "0/1", "-", "-", "-"], rows[job_id]
            assert out.stdout.splitlines()[-1] == "5 jobs"
            data = json.loads(daemon.procctl("--json", "status").stdout)["jobs"]
            assert data["matched"] == 5
            listed = {j["id"]: j for j in data["list"]}
            assert all(listed[j]["state"] == "queued" and listed[j]["started_at"] is None for j in queued)

            out = daemon.procctl("status", "--limit", "2")
            cut = "2 of 5 jobs shown (the newest); --limit N or --all for more"
            assert out.stdout.splitlines()[-1] == cut

            def ids(*args: str) -> list[str]:
                result = daemon.procctl("--json", "status", *args)
                assert result.returncode == 0, result.stderr
                return [j["id"] for j in json.loads(result.stdout)["jobs"]["list"]]

            assert ids("--state", "queued") == queued
            assert ids("--state", "running") == [busy]
            assert ids("--name", "quick-*", "--limit", "2") == queued[-2:]
            assert ids("--name", "quick-1") == [queued[1]]
            assert ids("--tag", "slow") == [busy]
            assert ids("--user", str(os.getuid())) == [busy, *queued]
            assert ids("--user", str(os.getuid() + 4242)) == []
            unknown = daemon.procctl("status", "--user", "no-such-user-here")
            assert unknown.returncode == 2 and "no user named" in unknown.stderr
        finally:  # one request: cancelling busy first let a queued job start and finish before its cancel
            client.cancel_many([*queued, busy])
        for job_id in [busy, *queued]:
            assert client.wait(job_id, timeout=30)["state"] == "cancelled"


def test_a_300_task_tree_is_its_counts_and_a_line_per_big_group(daemon: DaemonProcess) -> None:
    """It printed 302 lines, no counts line, and had no way to show only the failed tasks."""
    stages = [{"name": stage, "concurrent": [
        {"name": f"{stage}{i}", "cmd": ["sh", "-c", "exit 4" if (stage, i) == ("parse", 7) else "true"]}
        for i in range(100)]} for stage in ("fetch", "parse", "store")]
    with daemon.client() as client:
        job = client.submit({"name": "etl", "on_failure": "continue", "root": {"sequential": stages}},
                            wait=60)
    assert job["finished"], job
    out = daemon.procctl("status", job["id"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "  300 tasks: 199 completed, 1 failed, 100 skipped"
    assert lines[2:7] == [
        "sequential root",
        "├─ concurrent fetch  100 tasks: 100 completed",
        "├─ concurrent parse  100 tasks: 99 completed, 1 failed",
        f"│     ✘ parse7  failed  1 attempt  {lines[5].split('attempt  ')[1]}",
        "└─ concurrent store  100 tasks: 100 skipped",
    ]
    assert "command exited with status 4" in lines[5]
    assert lines[7:] == ["── parse7 failed: command exited with status 4"]  # (it printed nothing)
    failed = daemon.procctl("status", job["id"], "--state", "failed").stdout.splitlines()
    assert len(failed) == 4 and failed[2].split()[:3] == [f"{job['id']}.107", "✘", "parse7"]
    every = daemon.procctl("status", job["id"], "--tasks").stdout.splitlines()
    assert len(every) == 2 + 4 + 300 + 1
