"""The pool's ring messages: what the worker builds is what the daemon accepts."""

from __future__ import annotations

import msgpack
import pytest

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


def test_context_fields_name_the_call_context() -> None:
    ctx = ["7", "nightly", "7.3", "resize", 2, 4]
    assert protocol.context_fields(ctx) == {
        "job_id": "7", "job_name": "nightly", "task_id": "7.3", "task_name": "resize", "attempt": 2, "run": 4,
    }
    with pytest.raises(ValueError):
        protocol.context_fields(ctx[:5])
