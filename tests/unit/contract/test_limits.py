"""Input limits: number ranges, NUL bytes, size limits that name themselves, short echoes."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procpool.contract.codec import RequestError, decode_request, encode_request, pack
from procpool.contract.errors import ErrorCode
from procpool.contract.limits import ECHO_MAX, SECONDS_MAX, Limits, shorten
from procpool.contract.ops import check_args
from procpool.contract.tree import TreeError, packed_size, parse_job

BIG = "x" * 10_000_000


def tree_error(doc: Any, limits: Limits | None = None) -> TreeError:
    with pytest.raises(TreeError) as info:
        parse_job(doc, limits) if limits is not None else parse_job(doc)
    assert len(info.value.message.encode()) < ECHO_MAX + 200, "an error echoes too much"
    return info.value


def job(root: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "t", "root": root, **extra}


# -- numbers ------------------------------------------------------------------------------------

BAD_SECONDS = [math.inf, -math.inf, math.nan, 1e17, SECONDS_MAX + 1, -1]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize("field", ["timeout", "retry_delay"])
def test_bad_seconds_are_refused_at_every_level(field: str, value: float) -> None:
    task = {"cmd": ["x"]}
    assert tree_error(job({**task, field: value})).path == f"root.{field}"
    assert tree_error(job({"sequential": [{**task, field: value}]})).path == f"root.sequential[0].{field}"
    assert tree_error(job({"concurrent": [task], field: value})).path == f"root.{field}"
    assert tree_error(job(task, **{field: value})).path == field


def test_the_largest_allowed_values_pass() -> None:
    spec = parse_job(job({"cmd": ["x"], "timeout": SECONDS_MAX, "retries": 1000, "retry_delay": SECONDS_MAX}))
    assert spec.tasks[0].timeout == SECONDS_MAX
    assert parse_job(job({"cmd": ["x"]}, repeat=10**9)).repeat == 10**9


@pytest.mark.parametrize(
    ("extra", "node", "path"),
    [
        ({}, {"retries": 1001}, "root.retries"),
        ({}, {"retries": 2**80}, "root.retries"),
        ({"repeat": 10**9 + 1}, {}, "repeat"),
        ({"repeat": math.inf}, {}, "repeat"),
    ],
)
def test_counts_are_bounded(extra: dict[str, Any], node: dict[str, Any], path: str) -> None:
    assert tree_error(job({"cmd": ["x"], **node}, **extra)).path == path


# -- NUL bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (job({"cmd": ["echo", "a\0b"]}), "root.cmd[1]"),
        (job({"cmd": "echo a\0b", "shell": True}), "root.cmd"),
        (job({"cmd": ["x"], "env": {"A": "1\0"}}), "root.env.A"),
        (job({"cmd": ["x"], "env": {"A\0": "1"}}), "root.env"),
        (job({"cmd": ["x"], "cwd": "/tmp\0/x"}), "root.cwd"),
        (job({"cmd": ["x"]}, cwd="/\0"), "cwd"),
        (job({"call": "m:f"}, python_path=["/ok", "/bad\0"]), "python_path[1]"),
        (job({"cmd": ["x"]}, name="a\0b"), "name"),
        (job({"cmd": ["x"]}, key="k\0"), "key"),
        (job({"call": "m:f\0"}), "root.call"),
        (job({"cmd": ["x"], "name": "a\0"}), "root.name"),
        (job({"cmd": ["x"], "tags": ["t\0"]}), "root.tags[0]"),
    ],
)
def test_nul_bytes_are_refused_with_their_path(doc: dict[str, Any], path: str) -> None:
    err = tree_error(doc)
    assert err.path == path, err.message


# -- size limits --------------------------------------------------------------------------------


def test_a_huge_job_name_names_the_limit_and_is_not_echoed() -> None:
    err = tree_error(job({"cmd": ["x"]}, name=BIG))
    assert err.message == "name: job name is 10000000 bytes, the limit is max_name_bytes = 256"


@pytest.mark.parametrize(
    ("doc", "limits", "path", "setting"),
    [
        (job({"cmd": ["x"]}, key="k" * 300), Limits(), "key", "max_name_bytes"),
        (job({"cmd": ["x"], "tags": ["t" * 300]}), Limits(), "root.tags[0]", "max_name_bytes"),
        (job({"cmd": ["x"], "tags": [str(i) for i in range(65)]}), Limits(), "root.tags", "max_tags"),
        (job({"cmd": ["x"], "env": {f"V{i}": "" for i in range(1025)}}), Limits(), "root.env",
         "max_env_vars"),
        (job({"cmd": ["x"], "env": {"A": "v" * 300_000}}), Limits(), "root.env", "max_env_bytes"),
        (job({"cmd": ["x"]}, env={"A": "v" * 1200}), Limits(max_env_bytes=1000), "env", "max_env_bytes"),
        (
            job({"cmd": ["x"], "env": {"B": "v" * 600}}, env={"A": "v" * 600}),
            Limits(max_env_bytes=1000),
            "root.env",
            "max_env_bytes",
        ),
        (job({"call": "m:f", "args": ["a" * 2000]}), Limits(max_args_bytes=1000), "root.args",
         "max_args_bytes"),
        (job({"call": "m:f", "kwargs": {"a": "b" * 2000}}), Limits(max_args_bytes=1000), "root.kwargs",
         "max_args_bytes"),
        (job({"cmd": ["x"]}, namespace={"a": "b" * 2000}), Limits(max_namespace_bytes=1000), "namespace",
         "max_namespace_bytes"),
        (job({"sequential": [{"cmd": ["x"]}] * 10}), Limits(max_nodes=5), "root.sequential[4]", "max_nodes"),
        (job({"sequential": [{"sequential": [{"cmd": ["x"]}]}]}), Limits(max_depth=1),
         "root.sequential[0].sequential[0]", "max_depth"),
    ],
)
def test_each_limit_names_itself(doc: dict[str, Any], limits: Limits, path: str, setting: str) -> None:
    err = tree_error(doc, limits)
    assert err.path == path, err.message
    assert f"{setting} = {getattr(limits, setting)}" in err.message


def test_values_that_msgpack_cannot_carry_are_refused() -> None:
    assert "cannot be encoded" in tree_error(job({"call": "m:f", "args": [2**70]})).message


# -- short echoes -------------------------------------------------------------------------------


def test_shorten_never_builds_or_returns_much() -> None:
    assert shorten("abc") == "'abc'"
    for value in (BIG, BIG.encode(), [BIG] * 1000, {BIG: BIG}, "é" * 10_000, 10**300):
        started = time.perf_counter()
        text = shorten(value)
        assert len(text.encode()) <= ECHO_MAX
        assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    "doc",
    [
        {"root": {"cmd": ["x"]}, BIG: 1},
        job({"cmd": ["x"], BIG: 1}),
        job({"cmd": ["x"], "priority": BIG}),
        job({"cmd": ["x"]}, on_failure=BIG),
        job({"cmd": ["x"]}, on_interrupt=BIG),
        job({"cmd": ["x"]}, repeat=BIG),
        job({"call": BIG}),
        job({"cmd": ["x"], "name": BIG}),
        job({"cmd": ["x"], "env": {BIG: "1"}}),
        job({"cmd": ["x"], "cwd": BIG + "\0"}),
        job({"cmd": ["x"], "depends_on": [BIG]}),
        job({"sequential": [{"cmd": ["x"]}], BIG: 1}),
    ],
)
def test_no_tree_error_echoes_more_than_200_bytes(doc: dict[str, Any]) -> None:
    started = time.perf_counter()
    err = tree_error(doc)
    assert len(err.message.encode()) <= 2 * ECHO_MAX + 100, err.message[:300]
    assert BIG[:ECHO_MAX + 1] not in err.message
    assert time.perf_counter() - started < 1.0


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("wait", {"id": "1", "timeout": math.inf}),
        ("wait", {"id": "1", "timeout": math.nan}),
        ("wait", {"id": "1", "timeout": 1e17}),
        ("wait", {"id": "1", "timeout": -1}),
        ("submit", {"job": {}, "wait": math.inf}),
        ("status", {"since": math.nan}),
        ("status", {"since": 1e300}),
        ("status", {"limit": -1}),
        ("status", {"limit": 2**60}),
        ("clean", {"before": -math.inf}),
        ("logs", {"id": "1", "lines": -5}),
        ("logs", {"id": "1", "after": 2**63}),
        ("logs", {"id": "1", "attempt": -1}),
        ("pool_resize", {"workers": 10**6}),
        ("pool_resize", {"workers": -1}),
    ],
)
def test_request_numbers_out_of_range_name_the_argument(op: str, args: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as info:
        check_args(op, args)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    name = next(k for k, v in args.items() if isinstance(v, (int, float)))
    assert f"argument {name!r}" in info.value.message


def test_request_errors_echo_little() -> None:
    for op, args in (("ping", {BIG: 1}), (BIG, {}), ("status", {"job": 1, BIG: 2})):
        with pytest.raises(RequestError) as info:
            check_args(op, args)
        assert len(info.value.message.encode()) <= ECHO_MAX + 100
        assert len((info.value.hint or "").encode()) <= 1000


def test_a_million_envelope_keys_are_refused_cheaply() -> None:
    frame = pack({"v": 1, "id": 1, "op": "ping", **{f"k{i}": i for i in range(1_000_000)}})
    started = time.perf_counter()
    with pytest.raises(RequestError) as info:
        decode_request(frame)
    elapsed = time.perf_counter() - started
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "max_map_items = 65536" in info.value.message
    assert elapsed < 0.05, elapsed


def test_extra_envelope_fields_are_refused_before_they_are_walked() -> None:
    frame = pack({"v": 1, "id": 1, "op": "ping", **{BIG[:1000] + str(i): i for i in range(1000)}})
    with pytest.raises(RequestError) as info:
        decode_request(frame)
    assert "at most 4" in info.value.message and len(info.value.message) < 200


def test_container_limits_are_configurable() -> None:
    frame = encode_request(1, "submit", {"job": {"root": {"call": "m:f", "args": list(range(100))}}})
    decode_request(frame)
    with pytest.raises(RequestError) as info:
        decode_request(frame, limits=Limits(max_array_items=10))
    assert "max_array_items = 10" in info.value.message


def test_clip_bounds_bytes_not_characters() -> None:
    from procpool.contract.limits import ECHO_MAX, clip

    assert clip("/run/procpoold") == "/run/procpoold"
    assert clip("a" * ECHO_MAX) == "a" * ECHO_MAX
    cut = clip("a" * 10_000)
    assert cut.endswith("...") and len(cut.encode()) == ECHO_MAX
    wide = clip("\u00e9" * 10_000)  # two bytes each: 200 characters would be 400 bytes
    assert wide.endswith("...") and len(wide.encode()) <= ECHO_MAX
    assert len(clip("x\udcff" * 500).encode("utf-8", "backslashreplace")) <= ECHO_MAX


_packable = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=20),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(_packable)
def test_packed_size_is_the_length_of_the_encoding(value: Any) -> None:
    assert packed_size(value) == len(pack(value))


@pytest.mark.parametrize("size", [0, 255, 256, 65535, 65536, 1 << 20])
def test_packed_size_counts_bytes_at_every_header_width_without_packing_them(size: int) -> None:
    for value in ([b"x" * size], {"k": b"x" * size}, [b"a"] * 16 + [b"x" * size], b"x" * size):
        assert packed_size(value) == len(pack(value))


def test_a_1_mib_argument_is_measured_against_max_args_bytes() -> None:
    doc = job({"call": "m:f", "args": [b"x" * (1 << 20)]})
    parse_job(doc, Limits(max_args_bytes=(1 << 20) + 6))  # list header 1 + bin32 header 5
    assert "max_args_bytes" in tree_error(doc, Limits(max_args_bytes=(1 << 20) + 5)).message
