"""Keys that are not strings (msgpack also decodes bytes keys) and a dependency cycle through
thousands of tasks: each is a named, short refusal, never an internal error."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from procpool.contract.codec import RequestError, decode_request
from procpool.contract.errors import ErrorCode
from procpool.contract.limits import ECHO_MAX
from procpool.contract.tree import TreeError, parse_job
from procpool.contract.version import PROTOCOL_VERSION


def frame(msg: dict[Any, Any]) -> bytes:
    data: bytes = msgpack.packb(msg, use_bin_type=True)
    return data


@pytest.mark.parametrize(
    "extra",
    [{b"op": "ping"}, {b"x": 1, "zz": 2}, {b"args": {}}],
)
def test_an_envelope_key_that_is_not_a_string_is_malformed(extra: dict[Any, Any]) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(frame({"v": PROTOCOL_VERSION, "id": 7, **extra}))
    assert info.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("where", ["job", "task", "group"])
def test_an_env_name_that_is_not_a_string_is_a_tree_error(where: str) -> None:
    env = {b"PATH": "/tmp"}
    task: dict[str, Any] = {"cmd": ["true"]}
    doc: dict[str, Any] = {"root": task}
    if where == "job":
        doc["env"] = env
    elif where == "task":
        task["env"] = env
    else:
        doc["root"] = {"sequential": [task], "env": env}
    with pytest.raises(TreeError) as info:
        parse_job(doc)
    assert "env" in info.value.path


def test_a_long_dependency_cycle_is_named_briefly() -> None:
    count, pad = 2000, "x" * 120
    tasks = [
        {"name": f"{pad}{i}", "cmd": ["true"], "depends_on": [f"{pad}{(i + 1) % count}"]}
        for i in range(count)
    ]
    with pytest.raises(TreeError) as info:
        parse_job({"root": {"concurrent": tasks}})
    message = info.value.message
    assert "dependency cycle" in message
    assert len(message.encode()) < ECHO_MAX + 200, len(message)


@pytest.mark.parametrize(
    "doc",
    [
        {"root": {"cmd": ["echo", "\ud800"]}},
        {"root": {"cmd": "echo \udfff", "shell": True}},
        {"root": {"cmd": ["true"], "env": {"A": "\ud800"}}},
        {"root": {"cmd": ["true"], "env": {"A\ud800": "x"}}},
        {"root": {"cmd": ["true"], "cwd": "/tmp/\ud800"}},
        {"name": "n\ud800", "root": {"cmd": ["true"]}},
        {"root": {"cmd": ["true"], "tags": ["\ud800"]}},
        {"python_path": ["/x\ud800"], "root": {"call": "m:f"}},
    ],
)
def test_a_lone_surrogate_from_a_json_file_is_refused_where_it_is(doc: dict[str, Any]) -> None:
    """JSON may spell a lone surrogate (\\ud800), which no encoding carries: ``procctl validate``
    called such a job valid and ``submit`` then failed with an encoder's message."""
    with pytest.raises(TreeError) as info:
        parse_job(doc)
    assert "Unicode" in info.value.message
