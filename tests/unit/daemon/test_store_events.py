"""The journal's lifecycle events in the state log: kept in the log (not applied), read back at
start, and a closed segment that holds events the journal has not written is not removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpoold import journal
from procpoold.core.jobs import FULL_ENTRY
from procpoold.engines.registry import Engines
from procpoold.journal import LogSink
from procpoold.journal import encoding as enc
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store import sqlite
from procpoold.store.log import segment_paths
from procpoold.store.sqlite import StateStore
from tests.support.waiting import wait_until
from tests.unit.daemon.test_scheduler import RecordingExecutor
from tests.unit.journal.test_journal import ListSender


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


def test_a_start_writes_the_logged_events_above_the_watermark_with_the_stored_names(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    mark = tmp_path / "journal.seq"
    store = StateStore(path)
    loop = EventLoop()
    executor = RecordingExecutor(slots=0)
    scheduler = Scheduler(loop, Engines([executor]), store=store)
    scheduler.recover()
    job, _ = scheduler.submit({"name": "nightly", "root": {"concurrent": [
        {"name": name, "cmd": ["true"]} for name in ("fetch", "parse", "load")]}})
    # one iteration's events, as the journal packs them: starts of tasks 0-2 (a range), the
    # end of task 1, the end of task 2 (seqs 11, 12, 13)
    items = [enc.STARTED, 0, int(job.id), 0, 3, 1, 77, 0,
             enc.COMPLETED, 0, int(job.id), 1, 1, 1, 77, 0,
             enc.FAILED, 0, int(job.id), 2, 1, 1, 78, 4]
    store.log_events(11, 13, enc.events_record(11, 1.0, items, b"boom"))
    store.flush()
    store.compactor.stop()  # the daemon dies: its log stays
    store.writer.close()
    loop.close()
    mark.write_bytes(enc.WATERMARK.pack(11))  # the forwarder had written the starts only

    sender = ListSender()
    sink = LogSink(sender=sender)
    store = StateStore(path)
    loop = EventLoop()
    try:
        sink.keep_watermark(str(mark))
        assert sink.replay_from == 11 and sink.seq >= 11
        scheduler = Scheduler(loop, Engines([executor]), store=store, sink=sink)
        assert scheduler.recover()["replayed"] == 2
        written = [journal.entry_fields(e) for e in sender.entries]
        events = [(f["MESSAGE"], f["PROCPOOL_TASK_ID"], f["PROCPOOL_WORKER_PID"], f["PROCPOOL_JOB_NAME"])
                  for f in written if "MESSAGE_ID" in f and f.get("PROCPOOL_JOB_ID") == job.id]
        assert events == [('task "parse" completed', f"{job.id}.1", "77", "nightly"),
                          ('task "load" failed after 1 attempt: boom', f"{job.id}.2", "78", "nightly")]
        assert enc.WATERMARK.unpack(mark.read_bytes())[0] > 11  # written, and marked so
        assert store.logged_events == []  # handed over
    finally:
        sink.close()
        loop.close()
        store.compactor.stop()  # another crash, straight after the start
        store.writer.close()
    # the replayed events are in the new log already: this crash would write them again
    again = StateStore(path)
    [(first, last, record)] = again.logged_events
    _first, _ts, replayed, texts = enc.unpack_events(record)
    assert last == first + 1 and list(replayed) == items[8:] and texts == [b"", b"boom"]
    again.close()
