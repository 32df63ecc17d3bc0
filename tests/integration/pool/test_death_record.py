"""The daemon's own record of a worker that died mid-task names the task (not "while idle")."""

from __future__ import annotations

import logging

import pytest

from procpoold.journal import MessageId


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_the_worker_died_record_names_the_task_it_ran(
    make_pool: type, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    pool = make_pool(workers=1, respawn_backoff_max=0.05)
    with caplog.at_level(logging.WARNING, logger="procpoold.pool"):
        aid = pool.submit("die", how, "inside", name="resize")
        [out] = pool.wait(aid)
    assert out.error is not None and out.error.type == "WorkerDied"
    [record] = [r for r in caplog.records
                if getattr(r, "journal_fields", {}).get("MESSAGE_ID") == MessageId.WORKER_DIED]
    assert record.getMessage() == out.error.message
    assert "while running task 'resize'" in record.getMessage() and "idle" not in record.getMessage()
