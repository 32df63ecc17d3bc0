"""Typed namespaces through a real daemon, on each engine (the local pool and Dask): views of a
dataclass (``procpool.task.namespace(State)``) and a tree's ``namespace_schema``, checked by
``procctl validate``, at submission, and by the daemon at every update a task makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job, tasks_by_name, wait_task_state

ROOT = str(Path(__file__).resolve().parents[2])

engine = each_engine()

SCHEMA = {
    "count": "int",
    "names": "list[str]",
    "best": "float?",
    "point": {"?": True, "x": "float", "y": "float"},
}


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"tests.support.ns_tasks:{fn}", "args": list(args), **extra}


def job(daemon: DaemonProcess, root: Any, **extra: Any) -> dict[str, Any]:
    return run_job(daemon, root, python_path=[ROOT], **extra)


def test_100_concurrent_typed_increments_end_at_100(daemon: DaemonProcess) -> None:
    status = job(
        daemon,
        {"concurrent": [{"name": f"i{i}", **call("typed_incr")} for i in range(100)]},
        namespace={"count": 0},
        namespace_schema=SCHEMA,
    )
    assert status["job"]["state"] == "completed", [t["error"] for t in status["tasks"] if t["error"]][:3]
    assert status["job"]["namespace"] == {"count": 100}
    assert sorted(t["result"] for t in status["tasks"]) == list(range(1, 101))


def test_typed_updates_cas_and_snapshot(daemon: DaemonProcess) -> None:
    scores = [3.5, 1.0, 7.25, 2.0, 7.0]
    status = job(
        daemon,
        {"concurrent": [{"name": f"r{i}", **call("typed_record", f"n{i}", s)} for i, s in enumerate(scores)]},
        namespace={"best": None},
        namespace_schema=SCHEMA,
    )
    assert status["job"]["state"] == "completed", [t["error"] for t in status["tasks"] if t["error"]][:3]
    ns = status["job"]["namespace"]
    assert ns["best"] == 7.25 and sorted(ns["names"]) == [f"n{i}" for i in range(5)]
    assert ns["point"]["y"] == 1.0 and ns["point"]["x"] in scores
    for t in status["tasks"]:
        assert t["result"]["count"] == 0 and t["result"]["best"] == "float"


def test_a_wrong_type_is_a_task_error_naming_the_field(daemon: DaemonProcess) -> None:
    status = job(
        daemon,
        {"concurrent": [{"name": "count", **call("typed_read", "count")},
                        {"name": "names", **call("typed_read", "names")},
                        {"name": "best", **call("typed_read", "best")}]},
        namespace={"count": "3", "names": ["a", True], "best": 2},  # an untyped namespace
        on_failure="continue",
    )
    t = tasks_by_name(status)
    assert t["count"]["state"] == "failed"
    assert t["count"]["error"]["type"] == "procpool.task.NamespaceTypeError"
    assert t["count"]["error"]["message"] == "namespace field count is declared int (by State), got str"
    assert t["names"]["error"]["message"] == "namespace field names[1] is declared str (by State), got bool"
    assert (t["best"]["state"], t["best"]["result"]) == ("completed", "2.0")  # int widens to float


def test_the_daemon_refuses_an_update_that_breaks_the_schema(daemon: DaemonProcess) -> None:
    status = job(
        daemon,
        {"concurrent": [{"name": "str", **call("untyped_set", "count", "three")},
                        {"name": "bool", **call("untyped_set", "count", True)},
                        {"name": "undeclared", **call("untyped_set", "other", 1)},
                        {"name": "item", **call("untyped_append", "names", 5)},
                        {"name": "nested", **call("untyped_set", "point", {"x": "far"})},
                        {"name": "fits", **call("untyped_append", "names", "ok")}]},
        namespace={"count": 1},
        namespace_schema=SCHEMA,
        on_failure="continue",
    )
    t = tasks_by_name(status)
    expected = {
        "str": "set of 'count': declared int, got str",
        "bool": "set of 'count': declared int, got bool",
        "undeclared": "set of 'other': the key is not declared in the namespace_schema",
        "item": "append to 'names': declared str (the items of list[str]), got int",
        "nested": "set of 'point': point.x is declared float, got str",
    }
    for name, message in expected.items():
        assert t[name]["state"] == "failed", t[name]
        assert t[name]["error"]["message"] == f"namespace: {message} (the job's namespace_schema)"
    assert t["fits"]["state"] == "completed"
    assert status["job"]["namespace"] == {"count": 1, "names": ["ok"]}


def test_validate_and_submit_refuse_bad_initial_values(daemon: DaemonProcess, tmp_path: Path) -> None:
    doc = {"name": "typed", "namespace_schema": SCHEMA, "namespace": {"count": 1, "names": ["a", 2]},
           "root": {"cmd": ["true"]}}
    path = tmp_path / "typed.json"
    path.write_text(json.dumps(doc))
    out = daemon.procctl("validate", str(path))
    assert out.returncode == 2
    assert f"{path}: namespace.names[1]: the namespace_schema declares str, got int" in out.stderr
    with daemon.client() as client, pytest.raises(ProcpoolError) as info:
        client.submit(doc)
    assert info.value.code == ErrorCode.INVALID_TREE
    assert info.value.message == "namespace.names[1]: the namespace_schema declares str, got int"
    out = daemon.procctl("submit", str(path))
    assert out.returncode == 2 and "namespace.names[1]" in out.stderr
    doc["namespace_schema"] = {"count": "integer"}
    path.write_text(json.dumps(doc))
    out = daemon.procctl("validate", str(path))
    assert out.returncode == 2
    assert "namespace_schema.count: unknown type 'integer' (did you mean \"int\"?)" in out.stderr
    doc["namespace"] = {"count": 1, "names": ["a"]}
    doc["namespace_schema"] = SCHEMA
    path.write_text(json.dumps(doc))
    assert daemon.procctl("validate", str(path)).returncode == 0


def test_the_example_job(daemon: DaemonProcess) -> None:
    doc = json.loads((Path(ROOT) / "examples" / "typed-namespace.json").read_text())
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        result = client.wait(job_id, timeout=60)
    status = result["status"]
    assert status["job"]["state"] == "completed", [t["error"] for t in status["tasks"] if t["error"]][:3]
    words = ["job", "namespace", "pool", "typed"]
    assert tasks_by_name(status)["report"]["result"] == {"words": 4, "longest": "namespace", "seen": words}
    assert sorted(tasks_by_name(status)[n]["result"] for n in "abcd") == [1, 2, 3, 4]


def test_the_schema_holds_after_a_restart(tmp_path: Path) -> None:
    """The daemon restores a job's schema with the job (from the tree it stored): a task of a
    job submitted before a crash is still refused a schema-breaking update after it."""
    gate = tmp_path / "gate"
    d = DaemonProcess(extra_args=["--workers", "2"])
    try:
        d.start()
        with d.client() as client:
            job_id = client.submit({
                "name": "typed", "python_path": [ROOT], "namespace_schema": SCHEMA,
                "namespace": {"count": 1}, "on_failure": "continue",
                "root": {"sequential": [
                    {"name": "hold", "call": "tests.support.tasks:pid_then_wait",
                     "args": [str(tmp_path / "pid"), str(gate)]},
                    {"concurrent": [{"name": "bad", **call("untyped_set", "count", "one")},
                                    {"name": "good", **call("typed_incr")}]},
                ]},
            })["id"]
            wait_task_state(client, job_id, "hold")
        d.crash()
        gate.touch()
        d.restart()
        with d.client() as client:
            status = client.wait(job_id, timeout=60)["status"]
        t = tasks_by_name(status)
        assert t["hold"]["state"] == "completed"
        assert t["bad"]["state"] == "failed"
        assert t["bad"]["error"]["message"] == (
            "namespace: set of 'count': declared int, got str (the job's namespace_schema)"
        )
        assert (t["good"]["state"], t["good"]["result"]) == ("completed", 2)
        assert status["job"]["namespace"] == {"count": 2}
        d.stop()
    finally:
        d.stop(check=False)
        d.cleanup()  # (its work dir too)
