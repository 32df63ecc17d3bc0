"""Small ``procctl`` defects of issue 20, each checked without a daemon: ``pool resize 0``, the
age options, round trips in microseconds, counted nouns, ``validate``'s warnings and what ``run
--wait`` exits with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from procpool.cli.jobs import run_exit_status
from procpool.cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, cli
from procpool.cli.pool import micros, pool_summary
from procpool.contract.codec import RequestError
from procpool.contract.ops import POOL_RESIZE_HINT, check_args
from procpool.contract.words import plural

pytestmark = pytest.mark.unit

SOCKET = ["--socket", "/nonexistent/control.sock"]


def procctl(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*SOCKET, *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_pool_of_0_workers_is_refused_by_procctl_and_by_the_contract() -> None:
    code, _, err = procctl("pool", "resize", "0")
    assert code == EXIT_USAGE and "a pool of 0 workers" in err  # refused before connecting
    assert "procctl pause --all" in err and "procctl resume --all" in err
    assert procctl("pool", "resize", "1")[0] == EXIT_UNREACHABLE  # 1 is fine: it went on to connect
    # The daemon checks every request against the same contract, so any client gets this.
    with pytest.raises(RequestError) as info:
        check_args("pool_resize", {"workers": 0})
    assert "between 1 and 1024" in info.value.message and info.value.hint == POOL_RESIZE_HINT
    check_args("pool_resize", {"workers": 1})


@pytest.mark.parametrize("age", ["1y", "2w", "36h", "90", "1.5d"])
def test_ages_take_weeks_and_years(age: str) -> None:
    assert procctl("clean", "--older-than", age)[0] == EXIT_UNREACHABLE
    assert procctl("status", "--since", age)[0] == EXIT_UNREACHABLE


def test_an_age_error_names_its_own_option() -> None:
    code, _, err = procctl("clean", "--older-than", "3x")
    assert code == EXIT_USAGE and "'--older-than'" in err and "--since" not in err
    code, _, err = procctl("status", "--since", "11y")
    assert code == EXIT_USAGE and "'--since'" in err and "more than ten years" in err


@pytest.mark.parametrize(("us", "text"), [
    (13.5, "13.5 us"), (50.0, "50 us"), (2252.5, "2.25 ms"), (4731220.0, "4.73 s"), (999.9, "1 ms"),
])
def test_round_trips_read_in_their_unit(us: float, text: str) -> None:
    assert micros(us) == text


def test_the_pool_summary_has_no_exponent() -> None:
    info = {"dispatched": 1, "completed": 1, "failed": 0, "deaths": 0, "recycled": 0,
            "round_trip_woken": {"samples": 1, "p50_us": 2252.5, "p99_us": 4731220.0}}
    trip = pool_summary(info).splitlines()[1]
    assert trip == "round trip with a wakeup: p50 2.25 ms, p99 4.73 s (1 attempt)"


def test_counted_nouns() -> None:
    assert [plural(n, "task") for n in (0, 1, 2, 20000)] == ["0 tasks", "1 task", "2 tasks", "20,000 tasks"]
    assert plural(1, "child", "children") == "1 child" and plural(3, "child", "children") == "3 children"


def test_submitted_and_failed_lines_count_right() -> None:
    from procpoold.journal.encoding import FAILED, event_message

    assert event_message(FAILED, "fetch", 1, "boom") == 'task "fetch" failed after 1 attempt: boom'
    assert event_message(FAILED, "fetch", 3, "boom") == 'task "fetch" failed after 3 attempts: boom'


def test_validate_warns_of_what_is_not_found_here(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")  # not executable
    job = {"name": "w", "root": {"sequential": [
        {"name": "a", "call": "nosuch.module:fn"},
        {"name": "b", "cmd": ["/no/such/binary"]},
        {"name": "c", "cmd": ["procpool-no-such-program"]},
        {"name": "d", "cmd": [str(script)]},
        {"name": "ok1", "cmd": ["sh", "-c", "true"]},
        {"name": "ok2", "call": "procpool.demo:checksum"},
        {"name": "ok3", "cmd": "nosuch-in-a-shell", "shell": True},
    ]}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    code, out, err = procctl("validate", str(path))
    assert code == EXIT_OK, err
    warnings = [line for line in err.splitlines() if line.startswith("procctl: warning: ")]
    assert len(warnings) == 4, err
    assert "root.sequential[0].call: module 'nosuch.module' is not found here" in warnings[0]
    assert "root.sequential[1].cmd[0]: '/no/such/binary' does not exist here" in warnings[1]
    assert "root.sequential[2].cmd[0]: 'procpool-no-such-program' is not found on PATH" in warnings[2]
    assert f"root.sequential[3].cmd[0]: '{script}' is not executable" in warnings[3]
    assert 'valid job "w" with 7 tasks' in out
    code, out, err = procctl("--json", "validate", str(path))
    assert code == EXIT_OK and err == ""
    assert len(json.loads(out)["warnings"]) == 4


def test_a_commands_own_path_in_its_env_is_where_it_is_looked_for(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o755)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "p", "root": {"cmd": ["mytool"], "env": {"PATH": str(tmp_path)}}}))
    code, _, err = procctl("validate", str(path))
    assert code == EXIT_OK and "warning" not in err


@pytest.mark.parametrize(("task", "code"), [
    ({"kind": "cmd", "state": "completed", "exit_code": 0}, EXIT_OK),
    ({"kind": "call", "state": "completed"}, EXIT_OK),
    ({"kind": "cmd", "state": "failed", "exit_code": 3}, 3),
    ({"kind": "cmd", "state": "failed", "exit_code": 2}, 2),
    ({"kind": "cmd", "state": "failed", "exit_code": -15}, 143),
    ({"kind": "cmd", "state": "failed", "exit_code": -9}, 137),
    ({"kind": "cmd", "state": "failed", "exit_code": None, "signal": "SIGKILL"}, 137),
    ({"kind": "cmd", "state": "failed", "exit_code": None}, EXIT_FAILED),  # could not start
    ({"kind": "call", "state": "failed", "exit_code": None}, EXIT_FAILED),
    ({"kind": "cmd", "state": "timeout", "exit_code": -15}, EXIT_FAILED),
    ({"kind": "cmd", "state": "cancelled", "exit_code": -15}, EXIT_FAILED),
    ({"kind": "cmd", "state": "skipped"}, EXIT_FAILED),
])
def test_what_run_wait_exits_with(task: dict[str, object], code: int) -> None:
    assert run_exit_status(task) == code


def test_run_help_documents_its_exit_status() -> None:
    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "128+N" in out and "exit code" in out


def test_a_callable_on_the_jobs_python_path_is_found(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "ppvalidated.py").write_text("def fn():\n    return 1\n")
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "p", "python_path": [str(tmp_path / "mods")],
                                "root": {"call": "ppvalidated:fn"}}))
    code, _, err = procctl("validate", str(path))
    assert code == EXIT_OK and "warning" not in err
    path.write_text(json.dumps({"name": "p", "root": {"call": "ppvalidated:fn"}}))
    code, _, err = procctl("validate", str(path))
    assert code == EXIT_OK and "module 'ppvalidated' is not found here" in err
