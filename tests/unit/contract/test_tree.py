"""The job-tree format: parsing, defaults, error paths, ordering, cycles, the published schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.tree import TreeError, compile_job, json_schema, parse_job


def job(root: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "t", "root": root, **extra}


def error(doc: Any) -> str:
    with pytest.raises(TreeError) as info:
        parse_job(doc)
    return info.value.message


def test_defaults_inherit_through_groups_and_inner_values_win() -> None:
    spec = parse_job(
        job(
            {
                "sequential": [
                    {"cmd": ["a"]},
                    {"concurrent": [{"cmd": ["b"], "retries": 5}], "retries": 2, "env": {"B": "2"}},
                ],
                "timeout": 9,
                "env": {"A": "1"},
            },
            priority="high",
        )
    )
    a, b = spec.tasks
    assert (a.timeout, a.retries, a.priority, a.env) == (9.0, 0, "high", {"A": "1"})
    assert (b.timeout, b.retries, b.env) == (9.0, 5, {"A": "1", "B": "2"})
    assert [t.name for t in spec.tasks] == ["root.0", "root.1.0"]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (
            job({"sequential": [{"cmd": ["x"]}, {"concurrent": [{"cmd": ["y"], "retrys": 1}]}]}),
            'root.sequential[1].concurrent[0]: unknown field "retrys" (did you mean "retries"?)',
        ),
        (job({"cmd": ["x"], "priority": "urgent"}), 'root.priority: unknown priority "urgent"'),
        (job({"call": "nomodule"}), 'root.call: "nomodule" is not of the form "pkg.module:function"'),
        (job({"cmd": "echo hi"}), 'root.cmd: a string command needs "shell": true'),
        (job({"cmd": []}), "root.cmd: must be a non-empty array"),
        (job({"call": "a:b", "cmd": ["x"]}), "exactly one of call, cmd"),
        (job({"sequential": []}), "root.sequential: must not be empty"),
        (job({"sequential": [1]}), "root.sequential[0]: a node must be an object"),
        (job({"seqential": [{"cmd": ["x"]}]}), 'did you mean "sequential"'),
        (job({"cmd": ["x"], "timeout": -1}), "root.timeout: must be a positive number of seconds, got -1"),
        (job({"cmd": ["x"], "kill_grace": -2}), "root.kill_grace: must be a number >= 0 of seconds, got -2"),
        (job({"cmd": ["x"], "every": 0}), "root.every: must be a positive number of seconds, got 0"),
        (job({"cmd": ["x"], "timeout": True}), "root.timeout: must be a positive number, got a boolean"),
        (job({"cmd": ["x"], "retries": 1.5}), "root.retries: must be an integer >= 0"),
        (job({"cmd": ["x"]}, repeat=0), 'repeat: must be a positive integer or "forever"'),
        (job({"cmd": ["x"]}, on_failure="ignore"), "on_failure"),
        (job({"cmd": ["x"]}, bogus=1), 'unknown field "bogus"'),
        ({"name": "x"}, 'missing field "root"'),
        ([1], "a job must be a JSON object"),
        (
            job({"concurrent": [{"name": "a", "cmd": ["x"]}, {"name": "a", "cmd": ["y"]}]}),
            'root.concurrent[1]: duplicate name "a" (also used at root.concurrent[0])',
        ),
        (job({"call": "a:b", "args": {"x": 1}}), "root.args: must be an array"),
        (job({"cmd": ["x"], "args": [1]}), '"args" belongs to call tasks'),
        (job({"cmd": ["x"], "env": {"A": 1}}), "root.env: must be an object of string values"),
        (job({"cmd": ["x"], "name": "bad name"}), 'invalid name "bad name"'),
    ],
)
def test_errors_name_the_json_path(doc: Any, fragment: str) -> None:
    assert fragment in error(doc)


def test_unknown_dependency_and_self_dependency() -> None:
    msg = error(
        job({"concurrent": [{"name": "fetch", "cmd": ["x"]}, {"cmd": ["y"], "depends_on": ["fetc"]}]})
    )
    assert msg == 'root.concurrent[1].depends_on[0]: unknown task "fetc" (did you mean "fetch"?)'
    assert "depends on itself" in error(job({"name": "a", "cmd": ["x"], "depends_on": ["a"]}))


def test_cycles_are_named_including_those_formed_with_sequential_order() -> None:
    direct = error(
        job(
            {
                "concurrent": [
                    {"name": "a", "cmd": ["x"], "depends_on": ["b"]},
                    {"name": "b", "cmd": ["x"], "depends_on": ["a"]},
                ]
            }
        )
    )
    assert "dependency cycle" in direct and '"a"' in direct and '"b"' in direct
    # sequential order says first -> second; the edge says second -> first
    seq = error(
        job(
            {
                "sequential": [
                    {"name": "first", "cmd": ["x"], "depends_on": ["second"]},
                    {"name": "second", "cmd": ["x"]},
                ]
            }
        )
    )
    assert "dependency cycle" in seq and '"first"' in seq and '"second"' in seq
    # a task that depends on its own enclosing group can never start
    own = error(job({"name": "g", "concurrent": [{"name": "a", "cmd": ["x"], "depends_on": ["g"]}]}))
    assert "dependency cycle" in own


def test_compiled_order_respects_every_edge() -> None:
    spec = parse_job(
        job(
            {
                "sequential": [
                    {"name": "a", "cmd": ["x"]},
                    {
                        "concurrent": [
                            {"name": "b", "cmd": ["x"]},
                            {"name": "c", "cmd": ["x"], "depends_on": ["b"]},
                        ]
                    },
                    {"name": "d", "cmd": ["x"]},
                ]
            }
        )
    )
    order = [spec.tasks[i].name for i in compile_job(spec).start_order()]
    assert order == ["a", "b", "c", "d"]


def test_repeat_forever_and_key() -> None:
    spec = parse_job(job({"cmd": ["x"]}, repeat="forever", key="k1"))
    assert spec.repeat is None and spec.key == "k1"


def test_deep_nesting_is_bounded() -> None:
    node: dict[str, Any] = {"cmd": ["x"]}
    for _ in range(70):
        node = {"sequential": [node]}
    assert "nesting deeper than" in error(job(node))


def test_published_schema_is_generated_from_the_same_tables() -> None:
    path = Path(__file__).parents[3] / "ctl" / "procpool" / "contract" / "jobtree.schema.json"
    assert json.loads(path.read_text()) == json_schema(), "run 'make schema' to regenerate it"


def test_examples_are_valid() -> None:
    for path in (Path(__file__).parents[3] / "examples").glob("*.json"):
        parse_job(json.loads(path.read_text()))


def test_the_short_cut_for_plain_call_tasks_parses_as_the_general_path_does() -> None:
    # Tasks with only "call" (and perhaps "name") take a short cut in their group's loop; an
    # explicit default ("retries": 0) sends the same task down the general path.
    plain = [{"call": "m:f"}, {"name": "x", "call": "m:f"}, {"call": "pkg.mod:g"}]
    general = [{**t, "retries": 0} for t in plain]
    defaults = {"env": {"A": "1"}, "timeout": 5, "tags": ["t"], "priority": "high"}
    fast = parse_job({"name": "j", **defaults, "root": {"concurrent": plain}})
    slow = parse_job({"name": "j", **defaults, "root": {"concurrent": general}})
    assert fast.tasks == slow.tasks and fast.groups == slow.groups
    for bad, fragment in (
        ({"call": "not a ref"}, 'root.concurrent[1].call'),
        ({"name": "x y", "call": "m:f"}, "root.concurrent[1].name"),
        ({"name": "root.0", "call": "m:f"}, 'duplicate name "root.0"'),
        ({"name": 7, "call": "m:f"}, "root.concurrent[1].name"),
        ({"call": ["m:f"]}, "root.concurrent[1].call"),
    ):
        with pytest.raises(TreeError, match=re.escape(fragment)):
            parse_job({"name": "j", "root": {"concurrent": [{"call": "m:f"}, bad]}})


def test_every_field_of_a_task_is_set_on_both_paths_of_the_parser() -> None:
    from dataclasses import fields

    from procpool.contract.tree import TaskSpec

    spec = parse_job({"name": "j", "timeout": 9, "root": {"name": "g", "concurrent": [
        {"call": "m:f"},  # the short cut for a task that only names its callable
        {"call": "m:f", "args": [1], "engine": "pool"},
        {"cmd": ["true"], "name": "c", "depends_on": ["g.0"]},
    ]}})
    for task in spec.tasks:
        missing = [f.name for f in fields(TaskSpec) if not hasattr(task, f.name)]
        assert not missing, f"{task.path}: fields the parser does not set: {missing}"
    shared = {"timeout": 9, "retries": 0, "retry_delay": 1.0, "priority": "normal", "env": {}, "cwd": None,
              "tags": [], "parent": 0}
    assert spec.tasks == [
        TaskSpec(index=0, name="g.0", path="root.concurrent[0]", kind="call", call="m:f", **shared),
        TaskSpec(index=1, name="g.1", path="root.concurrent[1]", kind="call", call="m:f", args=[1],
                 engine="pool", **shared),
        TaskSpec(index=2, name="c", path="root.concurrent[2]", kind="cmd", cmd=["true"], depends_on=["g.0"],
                 **shared),
    ]


def test_io_is_inherited_from_the_job_and_groups_and_an_inner_value_wins() -> None:
    spec = parse_job({"name": "j", "io": True, "root": {"sequential": [
        {"call": "m:f"},  # the short cut: the job's io
        {"name": "g", "io": False, "concurrent": [{"call": "m:f", "name": "cpu"},
                                                  {"call": "m:f", "name": "net", "io": True}]},
        {"cmd": ["true"], "name": "c"},  # a command inherits nothing of it
        {"call": "m:f", "name": "own", "args": [1], "io": False},
    ]}})
    assert {t.name: t.io for t in spec.tasks} == {
        "root.0": True, "cpu": False, "net": True, "c": False, "own": False}
    assert [t.io for t in parse_job({"root": {"call": "m:f"}}).tasks] == [False]


def test_io_errors_name_the_json_path() -> None:
    bad = "root.concurrent[1].io: must be true or false, got a string"
    with pytest.raises(TreeError, match=re.escape(bad)):
        parse_job({"root": {"concurrent": [{"call": "m:f"}, {"call": "m:f", "io": "yes"}]}})
    bad = "root.sequential[0].io: must be true or false, got an integer"
    with pytest.raises(TreeError, match=re.escape(bad)):
        parse_job({"root": {"sequential": [{"io": 1, "concurrent": [{"call": "m:f"}]}]}})
    with pytest.raises(TreeError, match=re.escape('io: must be true or false')):
        parse_job({"io": None, "root": {"call": "m:f"}})
    with pytest.raises(TreeError, match=re.escape('root.concurrent[0].io: "io": true is for call tasks')):
        parse_job({"root": {"concurrent": [{"cmd": ["true"], "io": True}]}})
    assert parse_job({"root": {"cmd": ["true"], "io": False}}).tasks[0].io is False
