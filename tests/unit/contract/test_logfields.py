"""Log context: names and values of PROCPOOL_X_ fields from the tree and from tasks, the daemon's
check of what a worker sends, and the tree's log_fields and log_level."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from procpool.contract import logfields
from procpool.contract.logfields import MAX_FIELDS, MAX_NAME, MAX_VALUE, task_fields, wire_field_ok
from procpool.contract.tree import TreeError, parse_job
from procpoold.pool.protocol import LOG, result_problem
from procpoold.pool.worker import extra_fields


def tree_error(doc: dict[str, Any]) -> str:
    with pytest.raises(TreeError) as info:
        parse_job(doc)
    return str(info.value)


def test_tree_fields_are_inherited_and_overridden_and_levels_parsed() -> None:
    job = parse_job({
        "log_fields": {"request_id": "r-1", "Team": "ops", "n": 3, "ok": True},
        "log_level": "WARNING",
        "root": {"sequential": [
            {"name": "plain", "call": "m:f"},
            {"log_fields": {"team": "web"}, "log_level": "debug", "concurrent": [
                {"name": "inner", "call": "m:f", "log_fields": {"request_id": "r-2"}},
                {"name": "cmd", "cmd": ["true"], "log_level": "error"},
            ]},
        ]},
    })
    t = {task.name: task for task in job.tasks}
    assert t["plain"].log_fields == {"PROCPOOL_X_REQUEST_ID": "r-1", "PROCPOOL_X_TEAM": "ops",
                                     "PROCPOOL_X_N": "3", "PROCPOOL_X_OK": "true"}
    assert t["plain"].log_level == logging.WARNING
    assert t["inner"].log_fields["PROCPOOL_X_REQUEST_ID"] == "r-2"
    assert t["inner"].log_fields["PROCPOOL_X_TEAM"] == "web"
    assert t["inner"].log_level == logging.DEBUG
    assert t["cmd"].log_fields["PROCPOOL_X_REQUEST_ID"] == "r-1" and t["cmd"].log_level == logging.ERROR
    assert parse_job({"root": {"call": "m:f"}}).tasks[0].log_fields == {}
    assert parse_job({"root": {"call": "m:f"}}).tasks[0].log_level is None


@pytest.mark.parametrize(("doc", "expected"), [
    ({"log_fields": {"bad-name": 1}}, "root.log_fields.bad-name: invalid log field name"),
    ({"log_fields": {"x" * 54: 1}}, "invalid log field name"),
    ({"log_fields": {"ünï": 1}}, "invalid log field name"),
    ({"log_fields": {"a": None}}, "root.log_fields.a: a value must be a string, a number or a boolean"),
    ({"log_fields": {"a": [1]}}, "root.log_fields.a: a value must be"),
    ({"log_fields": {"a": "x\0y"}}, "root.log_fields.a: must not contain a NUL byte"),
    ({"log_fields": {"a": "x" * (MAX_VALUE + 1)}}, "the most allowed is 4,096"),
    ({"log_fields": {f"k{i}": i for i in range(MAX_FIELDS + 1)}}, "root.log_fields: 33 fields"),
    ({"log_fields": {"a": 1, "A": 2}}, "root.log_fields.A: PROCPOOL_X_A is named twice"),
    ({"log_fields": "a=1"}, "root.log_fields: must be an object"),
    ({"log_level": "loud"}, "root.log_level: must be one of debug, info, warning, error, critical"),
    ({"log_level": 10}, "root.log_level: must be one of"),
])
def test_a_bad_log_field_or_level_in_the_tree_names_its_path(doc: dict[str, Any], expected: str) -> None:
    assert expected in tree_error({"root": {"call": "m:f", **doc}})


def test_a_bad_field_of_the_job_names_its_path() -> None:
    message = tree_error({"log_fields": {"MESSAGE ID": "x"}, "root": {"call": "m:f"}})
    assert message.startswith("log_fields.MESSAGE ID: invalid log field name")
    nested = {"root": {"sequential": [{"call": "m:f"}, {"call": "m:g", "log_fields": {"a.b": 1}}]}}
    assert tree_error(nested).startswith("root.sequential[1].log_fields.a.b: invalid log field name")


def test_a_task_cannot_name_a_field_outside_its_prefix() -> None:
    got = task_fields([("PROCPOOL_JOB_ID", "9"), ("MESSAGE_ID", "0" * 32), ("MESSAGE", "m"),
                       ("_PID", "1"), ("request-id", "r"), ("a\0b", "x"), ("", "e"), ("---", "d"),
                       (7, "int"), ("ünï", "u")])
    assert got == {"PROCPOOL_X_PROCPOOL_JOB_ID": "9", "PROCPOOL_X_MESSAGE_ID": "0" * 32,
                   "PROCPOOL_X_MESSAGE": "m", "PROCPOOL_X__PID": "1", "PROCPOOL_X_REQUEST_ID": "r",
                   "PROCPOOL_X_A_B": "x", "PROCPOOL_X__N_": "u"}
    assert all(logfields.WIRE_NAME_RE.fullmatch(k) for k in got)


def test_task_values_are_bounded_and_counted_and_never_raise() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    got = task_fields([("huge", "h" * 10_000_000), ("nul", "a\0b"), ("bad", Bad()), ("n", 1.5),
                       ("long" + "x" * 500, "y")])
    assert len(got["PROCPOOL_X_HUGE"]) == MAX_VALUE and got["PROCPOOL_X_HUGE"].endswith(" [cut]")
    assert got["PROCPOOL_X_NUL"] == "a\ufffdb" and got["PROCPOOL_X_N"] == "1.5"
    assert "PROCPOOL_X_BAD" not in got
    assert [k for k in got if k.startswith("PROCPOOL_X_LONG")] == ["PROCPOOL_X_LONG" + "X" * (MAX_NAME - 4)]
    many = task_fields((f"k{i}", i) for i in range(10_000))
    assert len(many) == MAX_FIELDS
    assert all(wire_field_ok(k, v) for k, v in {**got, **many}.items())


def test_a_records_extra_becomes_fields_and_a_plain_record_has_none() -> None:
    logger = logging.getLogger("logctx-unit")
    made: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)
            made.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain")
        logger.warning("with", extra={"request_id": "r-9", "MESSAGE_ID": "x"})
    finally:
        logger.removeHandler(handler)
    assert extra_fields(made[0]) is None
    assert extra_fields(made[1]) == {"PROCPOOL_X_REQUEST_ID": "r-9", "PROCPOOL_X_MESSAGE_ID": "x"}


def _log(fields: Any) -> list[Any]:
    return [LOG, "1.0@1#1", "log", 30, "message", fields]


def test_the_daemon_refuses_a_worker_field_outside_the_prefix() -> None:
    code = {"CODE_FILE": "f", "CODE_LINE": "1", "CODE_FUNC": "g", "LOGGER": "l"}
    assert result_problem(_log(code)) is None
    assert result_problem(_log({**code, "PROCPOOL_X_REQUEST_ID": "r"})) is None
    ok_many = {**code, **{f"PROCPOOL_X_K{i}": "v" for i in range(MAX_FIELDS)}}
    assert result_problem(_log(ok_many)) is None
    for bad in ({"PROCPOOL_JOB_ID": "9"}, {"MESSAGE_ID": "x"}, {"MESSAGE": "x"}, {"PROCPOOL_X_": "x"},
                {"PROCPOOL_X_a": "x"}, {"PROCPOOL_X_A": 1}, {"PROCPOOL_X_A": "a\0b"},
                {"PROCPOOL_X_A": "v" * (MAX_VALUE + 1)}, {"PROCPOOL_X_" + "A" * (MAX_NAME + 1): "v"},
                {f"PROCPOOL_X_K{i}": "v" for i in range(MAX_FIELDS + 1)}, {"CODE_FILE": 3}):
        assert result_problem(_log({**code, **bad})) is not None, bad
