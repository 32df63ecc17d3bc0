"""Hypothesis strategies for hostile requests and job trees (shared by the unit and integration fuzzers).

Values are what msgpack can carry and a hostile client would send: NaN, the infinities, huge
and negative numbers, NUL bytes, long strings, wrong types, unknown fields, deep nesting. The
commands a generated job may run are harmless (``true``, ``false``), so a tree that happens to
be valid runs nothing of consequence, and nothing repeats forever.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import strategies as st

from procpool.contract.ops import OPS

numbers = st.sampled_from(
    [0, 1, -1, 0.5, 1e17, -1e17, 2**63 - 1, -(2**63), 2**64 - 1, 315_360_001, 1001, 10**9 + 1]
) | st.floats() | st.integers(-(2**63), 2**64 - 1)
strings = (
    st.text(max_size=12)
    | st.sampled_from(["", "\0", "a\0b", "=", "x" * 300, "é" * 200, "forever", "stop", "hold", "normal"])
)
scalars = st.none() | st.booleans() | numbers | strings | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(strings, children, max_size=4),
    max_leaves=5,
)

SAFE_CMDS: list[Any] = [["true"], ["false"], "exit 3", ["true", "a\0b"], [], "", ["/nonexistent/x"]]
_TASK_VALUES: dict[str, Any] = {
    "name": strings | st.sampled_from(["a", "b", "root"]),
    "call": st.sampled_from(["no_such_module.x:f", "m:f", "bad", "m:f\0", ""]) | scalars,
    "args": values,
    "kwargs": values,
    "cmd": st.sampled_from(SAFE_CMDS),
    "shell": st.booleans() | scalars,
    "timeout": numbers | scalars,
    "retries": numbers | scalars,
    "retry_delay": numbers | scalars,
    "priority": strings | scalars,
    "depends_on": st.lists(st.sampled_from(["a", "b", "root", "zz"]) | strings, max_size=3) | values,
    "env": st.dictionaries(strings, strings, max_size=3) | values,
    "cwd": strings | scalars,
    "tags": st.lists(strings, max_size=3) | values,
    "retrys": scalars,
}
_JOB_VALUES: dict[str, Any] = {
    **{k: v for k, v in _TASK_VALUES.items() if k not in ("call", "args", "kwargs", "cmd", "shell")},
    "repeat": st.sampled_from([1, 2, 0, -1, 10**9 + 1, 2**64 - 1, "never"]) | st.floats(),
    "on_failure": strings | scalars,
    "on_interrupt": strings | scalars,
    "namespace": values,
    "python_path": st.lists(strings, max_size=2) | values,
    "key": strings | scalars,
    "nmae": scalars,
}


def _some_fields(table: dict[str, Any], required: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=table)


def _task() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        _some_fields({k: v for k, v in _TASK_VALUES.items() if k != "cmd"}, {"cmd": _TASK_VALUES["cmd"]}),
        _some_fields({k: v for k, v in _TASK_VALUES.items() if k != "call"}, {"call": _TASK_VALUES["call"]}),
    )


nodes = st.recursive(
    _task() | scalars,
    lambda children: st.one_of(
        st.fixed_dictionaries(
            {"sequential": st.lists(children, max_size=3) | scalars},
            optional={"name": strings, "retries": numbers, "timeout": numbers, "env": values},
        ),
        st.fixed_dictionaries(
            {"concurrent": st.lists(children, max_size=3) | scalars},
            optional={"name": strings, "depends_on": values, "tags": values},
        ),
    ),
    max_leaves=4,
)
jobs = st.fixed_dictionaries({"root": nodes}, optional=_JOB_VALUES) | values


def _args_for(op: str) -> st.SearchStrategy[dict[str, Any]]:
    spec = OPS[op].args
    optional: dict[str, Any] = {name: numbers | scalars | values for name in spec}
    if "job" in spec:
        optional["job"] = jobs
    if "wait" in spec:
        optional["wait"] = numbers | scalars
    if "id" in spec:
        optional["id"] = st.sampled_from(["1", "2", "1.0", "1/root", "999", ""]) | strings | scalars
    optional["extra"] = scalars
    return st.fixed_dictionaries({}, optional=optional)


def requests(exclude: tuple[str, ...] = ()) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(op, args) pairs for every operation not excluded, plus unknown operations."""
    ops = [op for op in OPS if op not in exclude]
    return st.one_of(
        *[st.tuples(st.just(op), _args_for(op)) for op in ops],
        st.tuples(strings, st.dictionaries(strings, scalars, max_size=3)),
    )


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | values,
        "id": st.integers(-(2**63), 2**64 - 1) | strings | values,
        "op": st.sampled_from(sorted(OPS)) | strings | values,
        "args": values,
        "pad": values,
    },
)


#: Values a mutant puts in place of a field: each has crashed or could crash a daemon somewhere.
HOSTILE: list[Any] = [
    math.inf, -math.inf, math.nan, 1e17, -1, 0, 2**64 - 1, -(2**63), True, None, "\0", "a\0b",
    "x" * 100_000, "", [], {}, ["\0"], {"\0": "\0"}, [[[[[]]]]], {"cmd": ["true"], "timeout": math.inf},
]
FIELDS = sorted({*_TASK_VALUES, *_JOB_VALUES, "sequential", "concurrent", "root"})


def mutants(doc: Any, rnd: random.Random, count: int) -> list[Any]:
    """``count`` copies of ``doc``, each with one field (at a random depth) set to a hostile value."""
    out = []
    for _ in range(count):
        copy = _copy(doc)
        node = copy
        for _depth in range(rnd.randrange(6)):
            children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
            inner = [v for v in children if isinstance(v, (dict, list))]
            if not inner:
                break
            node = rnd.choice(inner)
        value = rnd.choice(HOSTILE)
        if isinstance(node, dict):
            node[rnd.choice(FIELDS + list(node))] = value
        elif isinstance(node, list) and node:
            node[rnd.randrange(len(node))] = value
        else:
            copy = value
        out.append(copy)
    return out


def frame_mutants(frame: bytes, rnd: random.Random, count: int) -> list[bytes]:
    """``count`` damaged copies of a frame: truncated, or with bytes overwritten."""
    out = []
    for _ in range(count):
        if not frame or rnd.random() < 0.3:
            out.append(frame[: rnd.randrange(len(frame) + 1)])
            continue
        data = bytearray(frame)
        for _flip in range(rnd.randrange(1, 4)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        out.append(bytes(data))
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
