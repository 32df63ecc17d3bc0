"""The task API (``procpool.task``) as a worker runtime installs it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from procpool import task

pytestmark = pytest.mark.unit

FIELDS = {"job_id": "7", "job_name": "nightly", "task_id": "7.3", "task_name": "resize", "attempt": 2,
          "run": 4}


class RecordingChannel:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, op: str, args: dict[str, Any]) -> Any:
        self.requests.append((op, args))
        return 5

    def send(self, op: str, args: dict[str, Any]) -> None:
        self.sent.append((op, args))


def test_outside_a_task_every_call_raises() -> None:
    task._clear()
    with pytest.raises(task.NotInTask):
        task.context()
    with pytest.raises(task.NotInTask):
        task.progress(0.5)
    with pytest.raises(task.NotInTask):
        task.namespace()


def test_context_is_built_from_the_installed_fields() -> None:
    logger = logging.getLogger("procpool.task.test")
    task._install(RecordingChannel(), FIELDS, logger)
    try:
        ctx = task.context()
        assert ctx == task.TaskContext("7", "nightly", "7.3", "resize", 2, 4, logger)
        assert task.context() is ctx  # built once per attempt
    finally:
        task._clear()
    with pytest.raises(task.NotInTask):
        task.context()


def test_context_defaults_and_logger_by_task_name() -> None:
    task._install(RecordingChannel(), {"job_id": 1, "task_id": "1.0", "task_name": "t", "attempt": "1"})
    try:
        ctx = task.context()
        assert (ctx.job_id, ctx.job_name, ctx.attempt, ctx.run) == ("1", "", 1, 1)
        assert ctx.logger.name == "procpool.task.t"
    finally:
        task._clear()


def test_progress_and_namespace_go_through_the_channel() -> None:
    channel = RecordingChannel()
    task._install(channel, FIELDS)
    try:
        task.progress(1.5, done=3, total=4, message="m")
        assert channel.sent == [("progress", {"fraction": 1.0, "done": 3, "total": 4, "message": "m"})]
        assert task.namespace().incr("n", 2) == 5
        assert channel.requests == [("ns", {"op": "incr", "key": "n", "by": 2})]
    finally:
        task._clear()
