"""The journal's lifecycle events in the state log: kept in the log (not applied), read back at
start, and a closed segment that holds events the journal has not written is not removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpoold.core.jobs import FULL_ENTRY
from procpoold.store import sqlite
from procpoold.store.log import segment_paths
from procpoold.store.sqlite import StateStore
from tests.support.waiting import wait_until


def test_events_are_logged_read_back_at_start_and_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    store.log_events(1, 3, b"first batch")
    assert store.pending
    store.flush()
    store.log_events(4, 4, b"second batch")  # events alone make a record too
    store.flush()
    store.settle()  # applied to the database: the events are still read back
    store.compactor.stop()  # a crash: the log stays
    store.writer.close()
    again = StateStore(path)
    assert again.logged_events == [(1, 3, b"first batch"), (4, 4, b"second batch")]
    assert [j.id for j in again.load_jobs()] == ["1"]
    again.close()
    assert StateStore(path).logged_events == []  # a clean stop leaves no log behind


def test_a_closed_segment_stays_while_it_holds_events_the_journal_has_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "SEGMENT_BYTES", 200)  # a few records per segment
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    seq = 0
    for n in range(20):
        store.append_tasks("1", [[FULL_ENTRY, n, {"state": "completed", "pad": "x" * 40}]])
        store.log_events(seq + 1, seq + 2, b"events")
        seq += 2
        store.flush()
    assert store.writer.number > 3  # rotated
    store.settle()
    store.compactor.stop()  # (it removes what it may before it ends)
    assert len(segment_paths(tmp_path, "state")) == store.writer.number  # none removed
    store.writer.close()
    again = StateStore(path)
    assert [first for first, _last, _record in again.logged_events] == list(range(1, 40, 2))
    # the journal writes them: the segments closed from here on go once applied and written
    for n in range(20, 40):
        seq += 1
        again.append_tasks("1", [[FULL_ENTRY, n, {"state": "completed", "pad": "x" * 40}]])
        again.log_events(seq, seq, b"events")
        again.events_written(seq - 3)  # (the journal lags a little)
        again.flush()
    again.events_written(seq)
    again.append_tasks("1", [[FULL_ENTRY, 40, {"state": "completed"}]])
    again.flush()  # (the compactor looks again when it has something to apply)
    wait_until(lambda: segment_paths(tmp_path, "state"), lambda found: len(found) == 1,
               what="closed segments removed once their events are written")
    again.close()
