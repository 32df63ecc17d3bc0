"""A daemon that is not root but holds CAP_SETUID and CAP_SETGID (``can_switch_users``) runs a
command as another user without passing those capabilities on: the command's effective, permitted
and ambient sets are empty (it could otherwise setuid(0)). Where there is no ``setpriv`` to clear
them, such a daemon refuses to start the command rather than run it with them. Root only (it makes
the non-root daemon with ``capsh``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sets up a daemon with capabilities)")

SCRIPT = r"""
import json, time
from procpoold.engines import AttemptSpec
from procpoold.engines.commands import CommandExecutor
from procpoold.identity import Identity, can_switch_users
from procpoold.loop import EventLoop

class Events:
    def __init__(self):
        self.outcomes, self.lines = [], []
    def attempt_started(self, *args):
        pass
    def attempt_finished(self, outcome):
        self.outcomes.append(outcome)
    def attempt_log(self, attempt_id, stream, level, message, fields=None):
        self.lines.append(message)

result = {"can_switch": can_switch_users()}
script = "id -u; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status"
for how in ("find", None):
    loop, events = EventLoop(), Events()
    executor = CommandExecutor(1, switcher=how)
    executor.start(loop, events)
    user = Identity(65533, 65533, (65533,), "other", "/")
    executor.submit(AttemptSpec("a#1", "1", "j", "1.0", "t", 1, "cmd", cmd=["sh", "-c", script], user=user))
    deadline = time.monotonic() + 20
    while not events.outcomes and time.monotonic() < deadline:
        loop.run_once(100)
    outcome = events.outcomes[0]
    result[str(how)] = {"status": outcome.status, "lines": events.lines,
                        "error": outcome.error.message if outcome.error else None}
print(json.dumps(result))
"""


def test_a_non_root_daemon_with_setuid_does_not_pass_its_capabilities_to_a_command() -> None:
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("no capsh to make a non-root daemon with capabilities")
    with tempfile.NamedTemporaryFile("w", dir="/tmp", suffix=".py") as f:
        f.write(SCRIPT)
        f.flush()
        os.chmod(f.name, 0o644)
        caps = "cap_setuid,cap_setgid,cap_kill"
        done = subprocess.run(
            [capsh, "--keep=1", "--user=nobody", f"--inh={caps}", f"--addamb={caps}", "--",
             "-c", 'exec "$0" "$1"', sys.executable, f.name],
            capture_output=True, text=True, timeout=60, cwd="/",
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["can_switch"], "the test daemon could not switch users at all"
    with_setpriv = result["find"]
    assert with_setpriv["status"] == "completed", with_setpriv
    assert with_setpriv["lines"][0] == "65533"
    caps_lines = {line.split(":")[0]: int(line.split()[1], 16) for line in with_setpriv["lines"][1:]}
    assert caps_lines == {"CapPrm": 0, "CapEff": 0, "CapAmb": 0}, with_setpriv["lines"]
    without = result["None"]
    if without["status"] == "completed":
        caps_lines = {line.split(":")[0]: int(line.split()[1], 16) for line in without["lines"][1:]}
        assert caps_lines == {"CapPrm": 0, "CapEff": 0, "CapAmb": 0}, without["lines"]
    else:
        assert without["status"] == "failed" and "capabilit" in (without["error"] or ""), without
