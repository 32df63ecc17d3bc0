"""Two throwaway users submit through the real client to a real procpoold running as root.

Each user's call tasks run as that user (uid, gid, groups), cannot read the other's private file
nor the daemon's store, and no pool worker ever serves two users. The users reach the daemon's
socket through its group (``group`` in the config), as they would on a shared machine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool import ProcpoolError
from procpoold.identity import Identity
from tests.support.daemon import DaemonProcess, serving
from tests.support.users import ThrowawayUsers, probe_folder, throwaway_users

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: Run as the user: submit the job given as JSON, wait for it, print what its tasks returned.
CLIENT = """
import json, sys
from procpool import Client
with Client(sys.argv[1], timeout=60) as client:
    status = client.submit(json.loads(sys.argv[2]), wait=60)
tasks = {t["name"]: {"state": t["state"], "result": t.get("result"), "error": t.get("error")}
         for t in status["status"]["tasks"]}
print(json.dumps({"state": status["state"], "tasks": tasks}, default=repr))
"""


@pytest.fixture
def setup() -> Iterator[tuple[ThrowawayUsers, DaemonProcess, Path]]:
    with throwaway_users(2) as users, probe_folder() as probes:
        daemon = DaemonProcess(extra_args=["--workers", "2", "--config", str(probes / "procpoold.toml")])
        (probes / "procpoold.toml").write_text(f'group = "{users.group}"\n')
        daemon.dir.chmod(0o755)  # the users reach run/ (the daemon's group may enter it) only
        daemon.state_dir.mkdir()
        daemon.state_dir.chmod(0o755)  # as systemd's StateDirectory= makes it: the daemon closes it
        with serving(daemon.start()):
            yield users, daemon, probes


def submit_as(user: Identity, daemon: DaemonProcess, job: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(daemon.socket), json.dumps(job)],
        user=user.uid, group=user.gid, extra_groups=list(user.groups),
        env={**os.environ, "HOME": "/", "PYTHONNOUSERSITE": "1"}, cwd="/",
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_each_users_tasks_run_as_that_user(setup: tuple[ThrowawayUsers, DaemonProcess, Path]) -> None:
    users, daemon, probes = setup
    secrets = {}
    for user in users.users:
        secret = probes / f"{user.name}.secret"
        secret.write_text(f"{user.name} only")
        os.chown(secret, user.uid, user.gid)
        secret.chmod(0o600)
        secrets[user.name] = str(secret)
    state_db = daemon.state_dir / "state.db"
    assert state_db.exists()
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) & 0o007 == 0
    served: dict[int, set[int]] = {}
    for round_ in range(3):
        for user, other in (users.users, users.users[::-1]):
            job = {"name": f"as-{user.name}-{round_}", "python_path": [str(probes)], "root": {"concurrent": [
                {"name": "who", "call": "ppwho:who"},
                {"name": "mine", "call": "ppwho:read", "args": [secrets[user.name]]},
                {"name": "theirs", "call": "ppwho:read", "args": [secrets[other.name]]},
                {"name": "store", "call": "ppwho:read", "args": [str(state_db)]},
                {"name": "setuid0", "call": "ppwho:become_root"},
            ]}}
            got = submit_as(user, daemon, job)["tasks"]
            uid, gid, groups, _home, name, _cwd, pid = got["who"]["result"]
            assert (uid, gid, name) == (user.uid, user.gid, user.name)
            assert groups == sorted(user.groups) and users.gid in groups
            assert got["mine"]["state"] == "completed"
            for denied in ("theirs", "store", "setuid0"):
                assert got[denied]["state"] == "failed", got[denied]
                assert "PermissionError" in str(got[denied]["error"]), got[denied]
            served.setdefault(pid, set()).add(uid)
        with daemon.client() as client:  # and the daemon's own user in between
            status = client.submit({"name": "as-root", "python_path": [str(probes)],
                                    "root": {"name": "who", "call": "ppwho:who"}}, wait=60)
            (task,) = status["status"]["tasks"]
            assert task["result"][0] == os.geteuid()
            served.setdefault(task["result"][6], set()).add(os.geteuid())
            for w in client.pool()["workers"]:
                if w["pid"] in served:
                    assert served[w["pid"]] == {w["uid"]}, (w, served)
    assert all(len(uids) == 1 for uids in served.values()), served
    out = daemon.procctl("pool")
    assert out.returncode == 0 and out.stdout.splitlines()[0].split()[2] == "USER"


def test_unsafe_python_path_is_refused_at_submission(daemon: DaemonProcess, tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with daemon.client() as client, pytest.raises(ProcpoolError) as caught:
        client.submit({"name": "unsafe", "python_path": [str(open_dir)],
                       "root": {"name": "t", "call": "os:getpid"}})
    assert caught.value.code == "invalid_tree"
    assert caught.value.message.startswith(f"python_path[0]: '{open_dir}' is writable by every user")
    unsticky = tmp_path / "unsticky"
    (unsticky / "inner").mkdir(parents=True)
    unsticky.chmod(0o777)
    with daemon.client() as client, pytest.raises(ProcpoolError) as caught:
        client.submit({"name": "unsafe", "root": {"concurrent": [
            {"name": "ok", "call": "os:getpid"},
            {"name": "t", "call": "os:getpid", "cwd": str(unsticky / "inner")}]}})
    message = caught.value.message
    assert message.startswith("root.concurrent[1].cwd: ") and "not sticky" in message
