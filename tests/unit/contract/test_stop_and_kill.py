"""The contract of stop versus kill: signal names, cancel's arguments, ``kill_grace`` in the tree."""

from __future__ import annotations

import pytest

from procpool.contract.codec import RequestError
from procpool.contract.ops import check_args
from procpool.contract.signals import STOP_SIGNALS, signal_name
from procpool.contract.tree import TreeError, json_schema, parse_job

pytestmark = pytest.mark.unit


def test_signal_names_are_normalised_and_only_those_that_end_a_process_pass() -> None:
    assert [signal_name(s) for s in ("int", "INT", "SIGINT", " sigterm ", "KILL")] == [
        "SIGINT", "SIGINT", "SIGINT", "SIGTERM", "SIGKILL"]
    assert [signal_name(s) for s in ("STOP", "CONT", "SIGCHLD", "15", "", "SIG")] == [None] * 6
    assert "SIGTERM" in STOP_SIGNALS and "SIGSTOP" not in STOP_SIGNALS


def test_cancel_arguments_are_checked() -> None:
    check_args("cancel", {"id": "1", "signal": "SIGINT", "grace": 0})
    check_args("cancel", {"ids": ["1", "2.0", "3/x"], "signal": "SIGKILL"})
    check_args("cancel", {"state": "running", "name": "n-*", "user": "a", "all": True, "dry_run": True})
    for args, words in (
        ({"id": "1", "signal": "SIGSTOP"}, "'signal' must be one of SIGTERM"),
        ({"id": "1", "signal": "INT"}, "'signal' must be one of"),  # the wire spells the name
        ({"id": "1", "grace": -1}, "'grace' must be between 0"),
        ({"id": "1", "grace": float("nan")}, "finite"),
        ({"ids": []}, "1 to 1,000 ids"),
        ({"ids": [1]}, "list of ids"),
        ({"ids": ["1"] * 1001}, "1 to 1,000 ids"),
        ({"state": "completed"}, "an unfinished job"),
        ({"all": "yes"}, "'all' must be a boolean"),
    ):
        with pytest.raises(RequestError, match=words):
            check_args("cancel", args)


def test_stop_is_appended_and_submit_takes_replace() -> None:
    from procpool.contract.ops import OPS

    names = list(OPS)  # (appended after retry; pause came later)
    assert names.index("stop") == names.index("retry") + 1
    assert OPS["stop"].mutating and OPS["stop"].args["id"].required
    check_args("submit", {"job": {}, "replace": True})
    with pytest.raises(RequestError, match="'replace' must be a boolean"):
        check_args("submit", {"job": {}, "replace": 1})


def test_kill_grace_on_the_job_and_a_task() -> None:
    spec = parse_job({"kill_grace": 30, "root": {"sequential": [
        {"name": "own", "cmd": ["true"], "kill_grace": 0},
        {"name": "inherits", "cmd": ["true"]},
        {"call": "m:f"},  # (the parser's short cut for a bare call)
    ]}})
    assert spec.kill_grace == 30.0
    assert [t.kill_grace for t in spec.tasks] == [0.0, None, None]
    assert parse_job({"root": {"cmd": ["true"]}}).kill_grace is None
    for doc, path in (
        ({"kill_grace": -1, "root": {"cmd": ["true"]}}, "kill_grace"),
        ({"root": {"cmd": ["true"], "kill_grace": "5"}}, "root.kill_grace"),
        ({"root": {"sequential": [{"cmd": ["true"]}], "kill_grace": 1}}, 'unknown field "kill_grace"'),
    ):
        with pytest.raises(TreeError, match=path):
            parse_job(doc)
    schema = json_schema()
    assert schema["properties"]["kill_grace"]["minimum"] == 0
    assert "kill_grace" in schema["$defs"]["task"]["properties"]
