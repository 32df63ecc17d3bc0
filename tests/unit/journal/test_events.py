"""Attempt lifecycle events as one packed stream per loop iteration: what the forwarder makes of
it is what the per-record path made (fields, MESSAGE_IDs, messages), ranges of starts expand to
one record per task, an attempt's output stays between its start and its end, and the daemon's
tail words the same records."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from procpoold.journal import LogSink, MessageId
from procpoold.journal import encoding as enc
from procpoold.journal.forwarder import Forwarder
from procpoold.loop import EventLoop
from tests.unit.journal.test_journal import ListSender

JOB_FIELDS = {"PROCPOOL_JOB_NAME": "nightly", "PROCPOOL_USER": "alice", "PROCPOOL_UID": "1000"}
NAMES = ["fetch", "parse", "load"]
SITE = {"CODE_FILE": "/srv/procpoold/scheduler/attempts.py", "CODE_LINE": "188",
        "CODE_FUNC": "attempt_started", "LOGGER": "procpoold.task"}


def task_fields(index: int, attempt: int) -> dict[str, str]:
    """The fields the scheduler gave a task's records (``Scheduler._fields``) before this stream."""
    return {"PROCPOOL_JOB_ID": "7", "PROCPOOL_JOB_NAME": "nightly", "PROCPOOL_TASK_ID": f"7.{index}",
            "PROCPOOL_TASK_NAME": NAMES[index], "PROCPOOL_ATTEMPT": str(attempt),
            "PROCPOOL_USER": "alice", "PROCPOOL_UID": "1000"}


def per_record(message: str, prio: int, message_id: str, index: int, attempt: int,
               pid: int) -> dict[str, str]:
    """A record as the per-record path made it: a RECORD with every field (what ``logging`` with
    ``journal_fields`` and the attempt's handle both produced), written by the same forwarder."""
    sender = ListSender()
    sink = LogSink(sender=sender)
    try:
        fields = {**task_fields(index, attempt), "MESSAGE_ID": message_id}
        if pid:
            fields["PROCPOOL_WORKER_PID"] = str(pid)
        sink.log_record(1.0, prio, message, fields, SITE, "procpoold.task")
    finally:
        sink.close()
    [fields_written] = sender.fields()
    return fields_written


def packed(items: list[tuple[int, int, int, int, str]]) -> list[dict[str, str]]:
    """The records a forwarder writes for one EVENTS record of ``(code, index, count, pid, text)``
    items of job 7 (attempt 1), after the job's names and the site."""
    ints: list[int] = []
    texts: list[bytes] = []
    for code, index, count, pid, text in items:
        data = text.encode()
        ints += (code, 1, 7, index, count, 1, pid, len(data))
        texts.append(data)
    sender = ListSender()
    fwd = Forwarder(None, sender)
    job = [("PROCPOOL_JOB_ID", "7"), *JOB_FIELDS.items()]
    fwd.write_records([enc.names_record(7, 0, job, NAMES), enc.site_record(1, SITE.items()),
                       enc.events_record(40, 2.0, ints, b"".join(texts))])
    assert fwd.seq == 40 + len(items) - 1
    return sender.fields()


@pytest.mark.parametrize(("code", "text", "pid", "message", "prio", "message_id"), [
    (enc.STARTED, "", 4242, 'task "parse" attempt 1 starting', 6, MessageId.TASK_STARTED),
    (enc.COMPLETED, "", 4242, 'task "parse" completed', 6, MessageId.TASK_COMPLETED),
    (enc.FAILED, "boom", 4242, 'task "parse" failed after 1 attempt: boom', 3, MessageId.TASK_FAILED),
    (enc.TIMED_OUT, "timed out after 2 s", 4242,
     'task "parse" timeout after 1 attempt: timed out after 2 s', 3, MessageId.TASK_TIMED_OUT),
    (enc.CANCELLED, "cancelled by request", 4242, 'task "parse" cancelled: cancelled by request', 6,
     MessageId.TASK_CANCELLED),
    (enc.SKIPPED, 'upstream "fetch" failed', 0, 'task "parse" skipped: upstream "fetch" failed', 6,
     MessageId.TASK_SKIPPED),
    (enc.RETRIED, "failed; retrying in 1.0s: boom", 0,
     'task "parse" attempt 1 failed; retrying in 1.0s: boom', 4, MessageId.TASK_RETRIED),
    (enc.RETRIED, "interrupted (its worker was lost); running it again", 0,
     'task "parse" attempt 1 interrupted (its worker was lost); running it again', 4, MessageId.TASK_RETRIED),
])
def test_each_event_kind_expands_to_exactly_the_fields_and_message_of_its_record_before(
        code: int, text: str, pid: int, message: str, prio: int, message_id: str) -> None:
    [written] = packed([(code, 1, 1, pid, text)])
    assert written == per_record(message, prio, message_id, 1, 1, pid)
    assert written["MESSAGE"] == message and written["MESSAGE_ID"] == message_id


def test_a_range_of_starts_is_one_item_and_one_record_per_task() -> None:
    written = packed([(enc.STARTED, 0, 3, 99, ""), (enc.COMPLETED, 2, 1, 99, "")])
    assert [w["MESSAGE"] for w in written] == [
        'task "fetch" attempt 1 starting', 'task "parse" attempt 1 starting',
        'task "load" attempt 1 starting', 'task "load" completed']
    for i, w in enumerate(written[:3]):
        assert w == per_record(w["MESSAGE"], 6, MessageId.TASK_STARTED, i, 1, 99)


def test_the_sink_gathers_starts_into_ranges_and_seals_before_output(
        forwarded: tuple[LogSink, EventLoop]) -> None:
    sink, loop = forwarded
    sink.start(loop)  # (the events of an iteration wait for its end only with a forwarder process)
    records: list[bytes] = []
    sink.on_events = lambda _first, _last, record: records.append(record)
    job = sink.name_job("7", JOB_FIELDS, NAMES)
    site = sink.caller_site()
    for index in range(3):
        sink.started(job, index, 1, 99, site)  # one range
    sink.started(job, 0, 2, 99, site)  # another attempt: a new item
    assert len(sink._ev) == 2 * enc.ITEM_INTS and not records
    sink.line("7", "7.1", job, 1, 1, 99, "stdout", logging.INFO, "hello")  # seals first
    sink.event(enc.COMPLETED, job, 1, 1, 99, "", site)
    assert len(records) == 1
    loop.run_once(0)  # the end of the iteration seals the rest
    assert len(records) == 2
    first, _ts, items, texts = enc.unpack_events(records[0])
    assert list(items[: enc.ITEM_INTS]) == [enc.STARTED, site, 7, 0, 3, 1, 99, 0] and len(texts) == 2
    assert enc.unpack_events(records[1])[0] == first + 3  # after the two items and the line
    # the daemon's tail words them, in order with the output
    tail = [(r.seq, r.task_id, r.message) for r in sink.store.records("7")]
    assert [t[2] for t in tail] == [
        'task "fetch" attempt 1 starting', 'task "parse" attempt 1 starting',
        'task "load" attempt 1 starting', 'task "fetch" attempt 2 starting', "hello",
        'task "parse" completed']
    assert [t[0] for t in tail] == sorted(t[0] for t in tail)
    assert sink.store.tail("7.1") == ['task "parse" attempt 1 starting', "hello", 'task "parse" completed']
    assert sink.store.last_seq("7") == first + 3


@pytest.fixture
def forwarded() -> Iterator[tuple[LogSink, EventLoop]]:
    loop = EventLoop()
    sink = LogSink("stderr", queue_size=100, policy="block")
    try:
        yield sink, loop
    finally:
        sink.close()
        loop.close()


def test_through_the_forwarder_process_an_attempts_output_stays_between_its_start_and_end(
        forwarded: tuple[LogSink, EventLoop], capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sink, loop = forwarded
    sink.start(loop)
    mark = str(tmp_path / "journal.seq")
    sink.keep_watermark(mark)
    job = sink.name_job("7", JOB_FIELDS, NAMES)
    site = sink.caller_site()
    # one loop iteration: starts, output, ends
    sink.started(job, 0, 1, 11, site)
    sink.started(job, 1, 1, 11, site)
    sink.line("7", "7.0", job, 0, 1, 11, "stdout", logging.INFO, "out of fetch")
    sink.event(enc.COMPLETED, job, 0, 1, 11, "", site)
    sink.event(enc.FAILED, job, 1, 1, 11, "boom", site)
    loop.run_once(0)
    last = sink.seq
    pid = sink.forwarder_pid
    assert pid is not None
    sink.stop()
    err = [line.split(": ", 1)[1].split(" [", 1)[0] for line in capfd.readouterr().err.splitlines()
           if "procpoold.task: " in line]
    assert err == ['task "fetch" attempt 1 starting', 'task "parse" attempt 1 starting', "out of fetch",
                   'task "fetch" completed', 'task "parse" failed after 1 attempt: boom']
    with open(mark, "rb") as f:
        assert enc.WATERMARK.unpack(f.read()) == (last,)  # what was written, kept for a restart
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the forwarder stopped and was reaped


def test_a_big_jobs_names_travel_in_records_of_bounded_size() -> None:
    sink = LogSink(sender=ListSender())
    names = [f"task-{i:05d}" for i in range(20_000)]
    try:
        job = sink.name_job("7", JOB_FIELDS, names)
        records = [r for (kind, number, _first), r in sink._tables.items()
                   if kind == enc.K_NAMES and number == job]
        assert len(records) > 5 and max(len(r) for r in records) < 40 * 1024
        fwd = Forwarder(None, ListSender())
        fwd.load_tables(sink.tables())
        fields, known = fwd.jobs[7]
        assert known == names and fields["PROCPOOL_JOB_NAME"] == "nightly"
    finally:
        sink.close()


def test_a_busy_iterations_events_are_packed_in_records_of_bounded_size(
        forwarded: tuple[LogSink, EventLoop], capfd: pytest.CaptureFixture[str]) -> None:
    sink, loop = forwarded
    sink.start(loop)
    sizes: list[int] = []
    sink.on_events = lambda first, last, record: sizes.append(last - first + 1)
    job = sink.name_job("7", JOB_FIELDS, [f"t{i}" for i in range(5000)])
    site = sink.caller_site()
    for i in range(5000):
        sink.event(enc.FAILED, job, i, 1, 11, "x" * 20, site)  # 100 KB of texts in all
    loop.run_once(0)
    assert sum(sizes) == 5000 and len(sizes) >= 2 and max(sizes) <= 4096
    sink.stop()
    failed = [line for line in capfd.readouterr().err.splitlines() if "failed after 1 attempt" in line]
    assert len(failed) == 5000 and 'task "t4999"' in failed[-1]
