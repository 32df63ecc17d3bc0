"""The write-ahead log: its record format, torn tails, damage, and replay at start."""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from procpoold.core.jobs import FULL_ENTRY, START_ENTRY
from procpoold.store import sqlite
from procpoold.store.compactor import ADD, APPEND, DELETE, JOB, SNAPSHOT, Applier
from procpoold.store.log import MAGIC, LogCorrupt, LogWriter, frame, read_segment, segment_paths
from procpoold.store.protocol import StoreError
from procpoold.store.sqlite import StateStore
from procpoold.store.values import LARGE_VALUE, SPARES
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit


def write_segment(folder: Path, payloads: list[bytes], number: int = 1) -> Path:
    writer = LogWriter(folder, "state", number, sync=False)
    for payload in payloads:
        writer.append(payload)
    writer.close()
    return writer.path


def test_records_are_read_back_in_order_with_their_checksums(tmp_path: Path) -> None:
    payloads = [b"a", b"bb" * 1000, bytes(range(256))]
    path = write_segment(tmp_path, payloads)
    assert path.name == "state.log.00000001" and path.read_bytes().startswith(MAGIC)
    segment = read_segment(path)
    assert segment.payloads == payloads and not segment.torn and segment.end == path.stat().st_size
    length, crc = struct.unpack_from("<II", frame(b"xyz"))
    assert length == 3 and frame(b"xyz")[8:] == b"xyz"
    assert crc == zlib.crc32(b"xyz", zlib.crc32(b"\x03\0\0\0"))  # of the length and the payload
    assert frame(b"xyz") != frame(b"xyw")  # the checksum covers the payload


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20])
def test_a_torn_tail_is_detected_and_everything_before_it_kept(tmp_path: Path, cut: int) -> None:
    path = write_segment(tmp_path, [b"first", b"second", b"x" * 30])
    size = path.stat().st_size
    os.truncate(path, size - cut)  # the last write cut short (a kill in the middle of it)
    segment = read_segment(path)
    assert segment.payloads == [b"first", b"second"] and segment.torn
    assert segment.end == size - len(frame(b"x" * 30))


def test_a_tail_of_zeros_after_a_power_loss_is_a_torn_tail(tmp_path: Path) -> None:
    path = write_segment(tmp_path, [b"first", b"second"])
    with open(path, "r+b") as f:
        f.seek(-len(frame(b"second")), os.SEEK_END)
        f.write(bytes(len(frame(b"second"))) + bytes(100))  # its blocks never reached the disk
    segment = read_segment(path)
    assert segment.payloads == [b"first"] and segment.torn


def test_a_bad_checksum_in_the_middle_is_a_clear_error(tmp_path: Path) -> None:
    path = write_segment(tmp_path, [b"first", b"second", b"third"])
    data = bytearray(path.read_bytes())
    at = len(MAGIC) + len(frame(b"first"))
    data[at + 8] ^= 0xFF  # one byte of "second" flipped
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match=rf"{path} is damaged at offset {at}: a record with a bad checksum"):
        read_segment(path)


def test_a_file_that_is_not_a_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.log.00000001"
    path.write_bytes(b"something else entirely")
    with pytest.raises(LogCorrupt, match="not a procpool state log"):
        read_segment(path)
    path.write_bytes(MAGIC[:3])  # created, its header half written: an empty segment
    assert read_segment(path).payloads == []


def test_segments_are_listed_in_order(tmp_path: Path) -> None:
    for number in (10, 2, 1):
        write_segment(tmp_path, [], number)
    (tmp_path / "state.log.x").touch()
    assert [n for n, _ in segment_paths(tmp_path, "state")] == [1, 2, 10]


def tables(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT job_id, seq FROM task_log ORDER BY job_id, seq").fetchall()
        jobs = db.execute("SELECT id, state FROM jobs ORDER BY id").fetchall()
        return rows, jobs
    finally:
        db.close()


def crashed_store(path: Path) -> StateStore:
    """A store with two jobs whose changes are only in the log (the compactor never ran)."""
    store = StateStore(path)
    store.compactor.stop()  # as if the daemon died before the compactor applied anything
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    store.add_job("2", "k", "b", "running", 1.0, {"root": {}}, {"state": "running"})
    store.flush()
    store.append_tasks("1", [[START_ENTRY, 0, 1, "1#1", 2.0]])
    store.flush()
    store.append_tasks("1", [[FULL_ENTRY, 0, {"state": "completed"}]])
    store.job_changed("2", "cancelled", 3.0, {"state": "cancelled"}, {"summary": 1}, 7)
    store.flush()
    store.snapshot_tasks("2", [[FULL_ENTRY, 0, {"state": "cancelled"}]])
    store.flush()
    store.writer.close()
    return store


def test_the_start_replays_the_log_in_order_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    crashed_store(path)
    assert tables(path) == ([], [])  # nothing applied: all of it is in the log
    store = StateStore(path)
    assert tables(path) == ([(1, 0), (1, 1), (2, 0)], [(1, "running"), (2, "cancelled")])
    assert segment_paths(tmp_path, "state") == [(2, tmp_path / "state.log.00000002")]  # a new one
    jobs = {j.id: j for j in store.load_jobs()}
    assert [e[0] for e in jobs["1"].entries] == [START_ENTRY, FULL_ENTRY]
    assert jobs["2"].data == {"state": "cancelled"} and store.key_and_uid("2") == ("k", 7)
    assert store.summaries(["2"]) == {"2": {"summary": 1}}
    # Records go on from where the log ended; sequences of task_log rows too.
    store.append_tasks("1", [[FULL_ENTRY, 1, {"state": "completed"}]])
    store.flush()
    assert store.lsn == 5
    store.close()
    assert tables(path)[0] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert segment_paths(tmp_path, "state") == []  # a clean stop leaves no log behind


def test_a_torn_last_record_is_cut_at_start(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    crashed_store(path)
    [(_, segment)] = segment_paths(tmp_path, "state")
    os.truncate(segment, segment.stat().st_size - 3)  # the snapshot's record, cut short
    store = StateStore(path)
    rows, jobs = tables(path)
    assert rows == [(1, 0), (1, 1)] and jobs == [(1, "running"), (2, "cancelled")]  # without record 4
    assert store.lsn == 3
    store.close()


def test_damage_in_the_middle_of_the_log_stops_the_start_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    crashed_store(path)
    [(_, segment)] = segment_paths(tmp_path, "state")
    data = bytearray(segment.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # inside the first record
    segment.write_bytes(bytes(data))
    damaged = rf"state log {segment} is damaged at offset 8: .* move the log aside"
    with pytest.raises(StoreError, match=damaged):
        StateStore(path)
    assert segment.exists()  # never silently dropped


def test_records_already_applied_are_skipped_and_a_gap_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    store.flush()
    store.settle()  # record 1 applied
    store.compactor.stop()
    store.append_tasks("1", [[START_ENTRY, 0, 1, "1#1", 2.0]])
    store.flush()  # record 2: only in the log
    store.writer.close()
    again = StateStore(path)  # record 1 is in the log and the tables: applied once
    assert tables(path) == ([(1, 0)], [(1, "running")])
    again.close()

    writer = LogWriter(tmp_path, "state", 7, sync=False)
    writer.append(msgpack.packb([9, []]))  # record 9 after 2: 3 to 8 are missing
    writer.close()
    with pytest.raises(StoreError, match="records 3 to 8 are missing"):
        StateStore(path)


def dump_tables(db: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
    return (
        db.execute("SELECT * FROM jobs ORDER BY id").fetchall(),
        db.execute("SELECT * FROM task_log ORDER BY job_id, seq").fetchall(),
        db.execute("SELECT * FROM meta WHERE key IN ('next_job_id', 'log_applied') ORDER BY key").fetchall(),
    )


def test_a_batch_folded_into_one_transaction_ends_as_its_records_applied_one_by_one(tmp_path: Path) -> None:
    """The compactor folds a batch (last job fields win, a snapshot drops the rows before it);
    the tables must end as if every record had been applied on its own, in order."""
    add = [ADD, 1, "k", "a", "running", 1.0, b"doc", b"d0", None]
    add2 = [ADD, 2, None, "b", "running", 1.0, b"doc", b"d0", 5]
    records: list[tuple[int, list[Any]]] = [
        (1, [add, add2, [APPEND, 1, 0, b"e0"]]),
        (2, [[JOB, 1, "running", None, b"d1", None, 7], [APPEND, 1, 1, b"e1"], [APPEND, 2, 0, b"x"]]),
        (3, [[JOB, 1, "completed", 3.0, b"d2", b"sum", None], [SNAPSHOT, 1, 2, b"snap"]]),
        (4, [[APPEND, 1, 3, b"e3"], [JOB, 1, "completed", 3.0, b"d3", None, None]]),
        (5, [[DELETE, [2], 3]]),
    ]
    results = []
    for folded in (False, True):
        store = StateStore(tmp_path / f"{folded}.db")
        store.compactor.stop()
        db = sqlite3.connect(tmp_path / f"{folded}.db", isolation_level=None)
        db.execute("PRAGMA foreign_keys=ON")
        applier = Applier(db, store.values)
        for batch in [records] if folded else [[r] for r in records]:
            db.execute("BEGIN")
            applier.apply(batch)
            db.execute("COMMIT")
        results.append(dump_tables(db))
        db.close()
    assert results[0] == results[1]
    jobs, rows, meta = results[1]
    assert [(j[0], j[3], j[7], j[8], j[9]) for j in jobs] == [(1, "completed", b"d3", 7, b"sum")]
    assert rows == [(1, 2, b"snap"), (1, 3, b"e3")]
    assert meta == [("log_applied", "5"), ("next_job_id", "3")]


def test_with_sync_full_records_are_replayed_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path, sync="full")
    store.compactor.stop()
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    store.append_tasks("1", [[START_ENTRY, 0, 1, "1#1", 2.0]])
    store.flush()
    store.writer.close()
    again = StateStore(path, sync="full")
    [job] = list(again.load_jobs())
    assert [e[0] for e in job.entries] == [START_ENTRY]
    again.close()


def test_value_files_of_dropped_values_are_recycled_as_spares(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    values = store.values
    big = b"v" * (LARGE_VALUE * 2)
    store.add_job("1", None, "a", "running", 1.0, {"args": [big]}, {"state": "running"})
    store.flush()
    assert (values.fresh, values.reused) == (1, 0)  # no spare yet: a new file
    store.settle()
    spare_dir = tmp_path / "state-values" / ".spare"
    assert values.spares == 0 and not spare_dir.exists()  # none written ahead
    store.delete_jobs(["1"])
    store.settle()  # its file became a spare
    assert not (tmp_path / "state-values" / "1").exists()
    assert values.spares == 1 and len(os.listdir(spare_dir)) == 1
    store.add_job("2", None, "b", "running", 1.0, {"args": [big[:LARGE_VALUE]]}, {"state": "running"})
    store.flush()  # (smaller than the spare: written into it, cut to its length)
    assert (values.fresh, values.reused) == (1, 1) and values.spares == 0
    stored = store.load_job("2")
    assert stored is not None and stored.doc == {"args": [big[:LARGE_VALUE]]}
    for n in range(3, 3 + SPARES + 2):  # more dropped files than spares kept: the rest are removed
        store.add_job(str(n), None, "c", "running", 1.0, {"args": [big]}, {"state": "running"})
        store.flush()
    store.delete_jobs([str(n) for n in range(3, 3 + SPARES + 2)])
    store.settle()
    assert values.spares == SPARES and len(os.listdir(spare_dir)) == SPARES
    store.close()
    assert not spare_dir.exists()  # a stopped daemon keeps no spare


def test_full_segments_are_closed_removed_once_applied_and_replayed_across(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "SEGMENT_BYTES", 200)  # a few records per segment
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.add_job("1", None, "a", "running", 1.0, {"root": {}}, {"state": "running"})
    for n in range(20):
        store.append_tasks("1", [[FULL_ENTRY, n, {"state": "completed", "pad": "x" * 40}]])
        store.flush()
    assert store.writer.number > 3  # rotated
    store.settle()
    # applied (and checkpointed): every closed segment goes; the open one stays
    wait_until(lambda: segment_paths(tmp_path, "state"), lambda found: len(found) == 1,
               what="closed segments removed")
    store.compactor.stop()  # a crash from here on: records only in the log
    for n in range(20, 30):
        store.append_tasks("1", [[FULL_ENTRY, n, {"state": "completed"}]])
        store.flush()
    store.writer.close()
    assert len(segment_paths(tmp_path, "state")) > 1
    again = StateStore(path)  # replays the records of several segments, in order
    [job] = list(again.load_jobs())
    assert [e[1] for e in job.entries] == list(range(30))
    again.close()
