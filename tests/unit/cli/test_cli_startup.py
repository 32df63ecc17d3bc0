"""What ``procctl`` loads before it runs a command, and what it checks before it connects.

``--help``, ``--version`` and ``validate`` never connect, so they must not load pyzmq, nor the
job-tree validator unless they validate; the package's version is read (through the slow
``importlib.metadata``) only when it is printed. A job file that the client refuses still gets
its one-line error, with the JSON path of the problem, when no daemon answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from procpool.cli import jobs
from procpool.cli.main import cli
from procpool.contract import tree

#: Prints which of the heavy modules the command loaded (the command's own output goes nowhere).
_PROBE = """
import contextlib, io, sys
sys.argv = ["procctl", *{args!r}]
from procpool.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
heavy = ("zmq", "importlib.metadata", "procpool.client", "procpool.contract.tree")
print(" ".join(name for name in heavy if name in sys.modules))
"""


def loaded(*args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=list(args))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(out.stdout.split())


def test_help_loads_no_client_nor_validator() -> None:
    assert loaded("--help") == set()
    assert loaded("submit", "--help") == set()


def test_version_is_read_only_to_print_it() -> None:
    assert loaded("--version") == {"importlib.metadata"}
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    from procpool.contract.version import __version__

    assert result.output == f"procctl, version {__version__}\n"


def test_validate_loads_the_validator_but_not_the_client(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "j", "root": {"cmd": ["true"]}}))
    assert loaded("validate", str(job)) == {"procpool.contract.tree"}


def test_priorities_are_the_validators() -> None:
    assert jobs.PRIORITIES == tree.PRIORITIES


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"root": {"sequential": [{"cmd": ["x"]}, {"concurrent": [{"cmd": ["y"], "retrys": 1}]}]}},
            'root.sequential[1].concurrent[0]: unknown field "retrys" (did you mean "retries"?)',
        ),
        ([1, 2], "a job must be a JSON object, got"),
    ],
)
@pytest.mark.parametrize("wait", [[], ["--wait"]])
def test_a_bad_tree_is_named_without_a_daemon(
    tmp_path: Path, doc: object, message: str, wait: list[str]
) -> None:
    job = tmp_path / "bad.json"
    job.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "submit", str(job), *wait])
    assert result.exit_code == 2, result.output
    assert f"procctl: error: {job}: {message}" in result.output
    assert "unreachable" not in result.output


def test_a_good_tree_without_a_daemon_is_unreachable(tmp_path: Path) -> None:
    job = tmp_path / "ok.json"
    job.write_text(json.dumps({"name": "ok", "root": {"cmd": ["true"]}}))
    result = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "submit", str(job)])
    assert result.exit_code == 3, result.output
