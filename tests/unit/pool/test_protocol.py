"""The pool's ring messages: what the worker builds is what the daemon accepts."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procpoold.pool import protocol
from procpoold.pool.protocol import DONE, F_STOPPED, HEARTBEAT, RESULT_SIZES

pytestmark = pytest.mark.unit


def test_result_message_constants_have_the_accepted_shape() -> None:
    heartbeat = msgpack.unpackb(protocol.HEARTBEAT_MESSAGE)
    assert heartbeat == [HEARTBEAT] and RESULT_SIZES[HEARTBEAT] == len(heartbeat)
    done = msgpack.unpackb(protocol.stopped_before_start("7.3@1#2"))
    assert len(done) == RESULT_SIZES[DONE]
    _, aid, ok, error, flags, took = done
    assert (aid, ok, flags, took) == ("7.3@1#2", False, F_STOPPED, None)
    assert error["type"] == "NotStarted" and set(error) == {"type", "message", "traceback"}


def test_result_kinds_are_distinct_and_request_kinds_too() -> None:
    results = [protocol.DONE, protocol.LOG, protocol.PROGRESS, protocol.REQUEST, protocol.HEARTBEAT]
    requests = [protocol.CALL, protocol.CANCEL, protocol.REPLY, protocol.EXIT]
    assert len(set(results)) == len(results) == len(RESULT_SIZES)
    assert len(set(requests)) == len(requests)
    assert msgpack.unpackb(protocol.EXIT_MESSAGE) == [protocol.EXIT]


def test_a_call_is_laid_out_as_its_field_table_says() -> None:
    from procpoold.engines import AttemptSpec

    spec = AttemptSpec("7.3@4#2", "7", "nightly", "7.3", "resize", 2, "call", call="pkg.mod:fn",
                       args=[1], kwargs={"k": 2}, env={"A": "1"}, cwd="/srv", python_path=["/opt"], run=4,
                       log_level=10, io=True)
    msg = msgpack.unpackb(protocol.encode_call(spec))
    assert len(msg) == len(protocol.CALL_FIELDS) and msg[0] == protocol.CALL
    named = dict(zip(protocol.CALL_FIELDS, msg, strict=True))
    assert named == {
        "kind": protocol.CALL, "id": "7.3@4#2", "fn": "pkg.mod:fn", "ctx": msg[protocol.CALL_CTX],
        "args": [1], "kwargs": {"k": 2}, "env": {"A": "1"}, "cwd": "/srv", "python_path": ["/opt"],
        "log_level": 10, "io": True,
    }
    positions = {"id": protocol.CALL_ID, "fn": protocol.CALL_FN, "ctx": protocol.CALL_CTX,
                 "args": protocol.CALL_ARGS, "kwargs": protocol.CALL_KWARGS, "env": protocol.CALL_ENV,
                 "cwd": protocol.CALL_CWD, "python_path": protocol.CALL_PATH,
                 "log_level": protocol.CALL_LOG_LEVEL, "io": protocol.CALL_IO}
    assert positions == {name: protocol.CALL_FIELDS.index(name) for name in positions}
    assert protocol.context_fields(msg[protocol.CALL_CTX]) == spec.context()
    ctx = msg[protocol.CALL_CTX]
    assert (ctx[protocol.CTX_JOB_ID], ctx[protocol.CTX_TASK_NAME]) == ("7", "resize")
    bare = AttemptSpec("a#1", "1", "j", "1.0", "t", 1, "call", call="m:f")
    empty = msgpack.unpackb(protocol.encode_call(bare))
    assert empty[protocol.CALL_ARGS:] == [None] * 7  # absent optional fields go as nil


def test_context_fields_name_the_call_context() -> None:
    ctx = ["7", "nightly", "7.3", "resize", 2, 4]
    assert protocol.context_fields(ctx) == {
        "job_id": "7", "job_name": "nightly", "task_id": "7.3", "task_name": "resize", "attempt": 2, "run": 4,
    }
    with pytest.raises(ValueError):
        protocol.context_fields(ctx[:5])


def test_what_the_worker_sends_is_well_formed() -> None:
    done = msgpack.unpackb(protocol.stopped_before_start("7.3@1#2"))
    assert protocol.result_problem(done) is None
    assert protocol.result_problem(msgpack.unpackb(protocol.HEARTBEAT_MESSAGE)) is None
    for message in ([protocol.DONE, "a", True, {"x": [1]}, protocol.F_ASYNC, None],
                    [protocol.DONE, "a", True, None, 0, 0.25],
                    [protocol.LOG, "a", "log", 20, "text", {"CODE_FILE": "f", "CODE_LINE": "3"}],
                    [protocol.LOG, "a", "stdout", 20, "text", None],
                    [protocol.PROGRESS, "a", {"fraction": 0.5, "done": 3, "total": 4, "message": "m"}],
                    [protocol.REQUEST, "a", 1, "ns", {"op": "get", "key": "k"}]):
        assert protocol.result_problem(message) is None, message


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=_values | st.tuples(st.integers(0, 5), _values, _values, _values, _values, _values).map(list))
def test_result_problem_never_raises(message: object) -> None:
    problem = protocol.result_problem(message)
    assert problem is None or (isinstance(problem, str) and len(problem) < 300)
