"""Each job's log file (procpoold.logfiles): framing, pages forwards and backwards, filters, the
cap, a cut-off frame, removal, and what a planted file or a bad cursor cannot do."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procpoold import logfiles
from procpoold.journal import encoding as enc
from procpoold.journal.encoding import COMPLETED, STARTED
from procpoold.logfiles import MAGIC, JobLogFiles


class Loop:
    """Collects call_last callbacks; run() is the end of a loop iteration."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def call_last(self, callback: Callable[[], None]) -> None:
        self.due.append(callback)

    def run(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[JobLogFiles, Loop]]:
    f = JobLogFiles(tmp_path / "logs", 64 << 20)
    loop = Loop()
    f.attach(loop)
    yield f, loop
    f.close()


def line(job: int, index: int, text: str, seq: int, attempt: int = 1, stream: int = 1) -> bytes:
    data = text.encode()
    return enc.LINE.pack(enc.K_LINE, 6, stream, job, index, attempt, 99, len(data), seq, time.time()) + data


def names(i: int) -> str:
    return f"t{i}"


def read_all(f: JobLogFiles, job: int, **kw: Any) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    cursor, pages = 0, 0
    while True:
        page = f.read(job, names, after=cursor, **kw)
        out += page["records"]
        cursor = page["cursor"]
        pages += 1
        if not page["more"]:
            return out, pages


def test_records_are_written_per_iteration_and_read_back_in_order(files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    for i in range(5):
        f.add(3, line(3, 0, f"l{i}", i + 1))
    path = f.folder / "3.log"
    f.sync()
    assert not path.exists()  # buffered until the end of the iteration
    loop.run()
    f.sync()
    assert path.read_bytes().startswith(MAGIC) and path.stat().st_size > len(MAGIC)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.folder.stat().st_mode) == 0o700
    records, _ = read_all(f, 3)
    assert [r["message"] for r in records] == [f"l{i}" for i in range(5)]
    assert records[0] == {"seq": 1, "ts": records[0]["ts"], "priority": 6, "stream": "stdout", "attempt": 1,
                          "task_id": "3.0", "message": "l0"}
    # Reading writes what is still buffered first.
    f.add(3, line(3, 0, "late", 6))
    assert read_all(f, 3)[0][-1]["message"] == "late"


def test_big_files_are_read_in_bounded_pages_forwards_and_backwards(files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    count = 60_000
    for i in range(count):
        f.add(1, line(1, i % 3, str(i), i + 1))
    loop.run()
    f.sync()
    assert (f.folder / "1.log").stat().st_size > 2 * logfiles.SCAN_BYTES
    records, pages = read_all(f, 1)
    assert [r["message"] for r in records] == [str(i) for i in range(count)]
    assert pages > 2
    # A small page budget bounds a reply too.
    first = f.read(1, names, page_bytes=10_000)
    assert 0 < len(first["records"]) < 200 and first["more"]
    # The last N, further back with "older" when one reply does not hold them.
    last = f.read(1, names, lines=5)
    assert [r["message"] for r in last["records"]] == [str(i) for i in range(count - 5, count)]
    assert last["older"] is None and last["cursor"] == (f.folder / "1.log").stat().st_size
    want = 30_000
    got: list[dict[str, Any]] = []
    page = f.read(1, names, lines=want)
    got = page["records"]
    backs = 0
    while page["older"] is not None and len(got) < want:
        page = f.read(1, names, lines=want - len(got), before=page["older"])
        got = page["records"] + got
        backs += 1
    assert backs > 0
    assert [r["message"] for r in got] == [str(i) for i in range(count - want, count)]
    # One task's lines only, and all of them.
    task1, _ = read_all(f, 1, task=1)
    assert [r["message"] for r in task1] == [str(i) for i in range(1, count, 3)]
    assert {r["task_id"] for r in task1} == {"1.1"}


def test_events_go_to_their_jobs_file_and_are_worded_with_the_task_names(
        files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    items = [STARTED, 0, 4, 0, 3, 1, 50, 0,  # job 4, tasks 0-2 start
             STARTED, 0, 5, 0, 1, 1, 51, 0,  # job 5
             COMPLETED, 0, 4, 1, 1, 1, 50, 0]
    texts = [b"", b"", b""]
    f.add_events(100, time.time(), items, texts, enc.events_record(100, time.time(), items, b""))
    loop.run()
    four, _ = read_all(f, 4)
    assert [(r["seq"], r["task_id"], r["message"]) for r in four] == [
        (100, "4.0", 'task "t0" attempt 1 starting'), (100, "4.1", 'task "t1" attempt 1 starting'),
        (100, "4.2", 'task "t2" attempt 1 starting'), (102, "4.1", 'task "t1" completed')]
    assert [r["task_id"] for r in read_all(f, 5)[0]] == ["5.0"]
    assert [r["message"] for r in read_all(f, 4, task=1)[0]] == ['task "t1" attempt 1 starting',
                                                                 'task "t1" completed']
    assert read_all(f, 4, attempt=2)[0] == []


def test_the_cap_keeps_the_start_says_so_and_bounds_the_file(tmp_path: Path) -> None:
    cap = 64 * 1024
    f = JobLogFiles(tmp_path / "logs", cap)
    loop = Loop()
    f.attach(loop)
    for i in range(50_000):  # about 2.5 MB of output
        f.add(7, line(7, 0, f"line {i}", i + 1))
        if i % 1000 == 0:
            loop.run()
    loop.run()
    f.sync()
    size = (f.folder / "7.log").stat().st_size
    assert cap - 100 < size <= cap + 1000  # (and the record that says so)
    # Lifecycle and daemon records go on past the cap, up to twice it.
    items = [COMPLETED, 0, 7, 0, 1, 1, 9, 0]
    f.add_events(60_000, time.time(), items, [b""], enc.events_record(60_000, time.time(), items, b""))
    f.finish(7)
    records, _ = read_all(f, 7)
    messages = [r["message"] for r in records]
    assert messages[0] == "line 0"
    kept = [m for m in messages if m.startswith("line ")]
    assert kept == [f"line {i}" for i in range(len(kept))]
    [note] = [m for m in messages if "reached log_job_max_bytes" in m and "further output" in m]
    assert messages.index(note) == len(kept)
    assert messages[-2] == 'task "t0" completed'
    dropped = 50_000 - len(kept)
    assert messages[-1].startswith(f"{dropped:,} record(s) of this job were not kept (")
    assert f.stats()["dropped"] == dropped
    # Own records stop at twice the cap.
    f.attach(loop)
    for i in range(5_000):
        f.add(7, enc.plain_record(i, time.time(), 6, "x", "y" * 100, ()), True)
    loop.run()
    f.sync()
    assert (f.folder / "7.log").stat().st_size <= 2 * cap
    info = f.info(7)
    assert info["capped"] and info["max_bytes"] == cap
    f.close()


def test_a_cut_off_frame_is_never_read_and_is_cut_when_the_file_is_next_written(
        files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    for i in range(3):
        f.add(2, line(2, 0, f"ok {i}", i + 1))
    f.finish(2)
    f.sync()
    path = f.folder / "2.log"
    whole = path.stat().st_size
    with open(path, "ab") as out:  # a crash in the middle of a write
        frame = line(2, 0, "torn", 4)
        out.write(len(frame).to_bytes(4, "little") + frame[:10])
    assert [r["message"] for r in read_all(f, 2)[0]] == ["ok 0", "ok 1", "ok 2"]
    f.add(2, line(2, 0, "after", 5))
    loop.run()
    assert [r["message"] for r in read_all(f, 2)[0]] == ["ok 0", "ok 1", "ok 2", "after"]  # (read syncs)
    assert path.stat().st_size > whole


def test_a_cursor_inside_a_frame_reads_nothing_and_breaks_nothing(files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    for i in range(100):
        f.add(8, line(8, 0, "x" * i, i + 1))
    loop.run()
    f.sync()
    size = (f.folder / "8.log").stat().st_size
    for cursor in (1, 9, 13, 37, size - 3, size + 100, 2**53):
        page = f.read(8, names, after=cursor)
        assert isinstance(page["records"], list) and not page["more"]
        f.read(8, names, lines=3, before=cursor)  # (no exception)


def test_removal_and_the_sweep_take_only_job_files(files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    for job in (1, 2, 3):
        f.add(job, line(job, 0, "x", job))
    loop.run()
    other = f.folder / "notes.txt"
    other.write_text("not ours to judge")
    f.remove([2])
    f.sync()
    assert sorted(p.name for p in f.folder.iterdir()) == ["1.log", "3.log", "notes.txt"]
    assert f.sweep(lambda job: job == 1) == 1
    f.sync()
    assert sorted(p.name for p in f.folder.iterdir()) == ["1.log", "notes.txt"]
    assert f.read(2, names)["records"] == []


def test_a_planted_link_is_not_followed(tmp_path: Path, files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.symlink(target, f.folder / "9.log")
    f.add(9, line(9, 0, "x", 1))
    loop.run()
    assert target.read_text() == "keep me"
    assert f.read(9, names)["records"] == []
    assert f.stats()["errors"] == 1


def test_records_of_another_thread_are_written_at_once(files: tuple[JobLogFiles, Loop]) -> None:
    import threading

    f, loop = files
    f.add(6, line(6, 0, "from the loop", 1))
    loop.run()
    thread = threading.Thread(target=lambda: f.add(6, enc.plain_record(2, time.time(), 4, "t", "elsewhere",
                                                                       (("PROCPOOL_JOB_ID", "6"),)), True))
    thread.start()
    thread.join(10)
    assert [r["message"] for r in read_all(f, 6)[0]] == ["from the loop", "elsewhere"]


def test_a_job_that_prints_nothing_gets_no_file_until_it_does(files: tuple[JobLogFiles, Loop]) -> None:
    f, loop = files

    def event(job: int, code: int, seq: int) -> None:
        items = [code, 0, job, 0, 1, 1, 50, 0]
        f.add_events(seq, time.time(), items, [b""], enc.events_record(seq, time.time(), items, b""))

    for job in (1, 2):
        f.add(job, enc.plain_record(job, time.time(), 6, "s", f"job {job} submitted", ()), True)
        event(job, STARTED, 10 + job)
    f.add(2, line(2, 0, "output", 20))
    for job in (1, 2):
        event(job, COMPLETED, 30 + job)
        loop.run()
        f.finish(job)
    f.sync()
    assert sorted(p.name for p in f.folder.iterdir()) == ["2.log"]  # (a file costs the kernel ~250 us)
    assert [r["message"] for r in read_all(f, 1)[0]] == ["job 1 submitted", 'task "t0" attempt 1 starting',
                                                         'task "t0" completed']
    assert [r["message"] for r in read_all(f, 2)[0]] == ["job 2 submitted", 'task "t0" attempt 1 starting',
                                                         "output", 'task "t0" completed']
    assert f.stats()["quiet_jobs"] == 1
    f.remove([1])
    assert read_all(f, 1)[0] == [] and f.stats()["quiet_bytes"] == 0


def test_the_cap_is_a_setting_with_a_range() -> None:
    from procpoold.config import Config, ConfigError

    assert Config().log_job_max_bytes == 64 * 1024 * 1024
    Config(log_job_max_bytes=0).validate()  # no files
    Config(log_job_max_bytes=64 * 1024).validate()
    for bad in (1, 65535, (1 << 40) + 1, -1):
        with pytest.raises(ConfigError, match="log_job_max_bytes must be 0"):
            Config(log_job_max_bytes=bad).validate()
