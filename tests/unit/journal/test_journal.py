"""The journal: record encoding, senders, the daemon's sink (in-process and with its forwarder
process), backpressure, the daemon's tails and the ``logs`` operation."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procpoold import journal
from procpoold.journal import Entry, FieldSet, LogSink, MessageId, StderrSender, TaskLog
from procpoold.journal import encoding as enc
from procpoold.logconfig import LogConfig
from procpoold.logstore import LogStore
from procpoold.loop import EventLoop

FIELDS = {"PROCPOOL_JOB_ID": "7", "PROCPOOL_JOB_NAME": "nightly", "PROCPOOL_TASK_ID": "7.2",
          "PROCPOOL_TASK_NAME": "fetch", "PROCPOOL_ATTEMPT": "1"}


class ListSender:
    """Collects batches; ``gate`` (when set) makes send() wait, like a journald that does not read."""

    target = "journal"

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.gate: threading.Event | None = None

    def send(self, batch: list[Entry]) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self.entries.extend(batch)

    def fields(self) -> list[dict[str, str]]:
        return [journal.entry_fields(e) for e in self.entries]


def task_log(sink: LogSink, task_id: str = "7.2", attempt: int = 1, name: str = "fetch") -> TaskLog:
    return sink.task_log("7", task_id, name, attempt, lambda: {"PROCPOOL_JOB_NAME": "nightly"})


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, loop: EventLoop | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        if loop is not None:
            loop.run_once(10)
        else:
            time.sleep(0.002)


@pytest.fixture
def sender() -> ListSender:
    return ListSender()


@pytest.fixture
def root_sink(sender: ListSender) -> Iterator[LogSink]:
    """The root logger wired to a sink with the list sender (restored afterwards)."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    sink = journal.setup_logging("debug", sender=sender)
    try:
        yield sink
    finally:
        sink.close()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


@pytest.fixture
def forwarded() -> Iterator[tuple[LogSink, EventLoop]]:
    """A sink and a loop; the test starts the forwarder process (``sink.start(loop)``) itself, so
    that it inherits the fd 2 that ``capfd`` reads during the test (not the one of the setup)."""
    before = _shm_names()
    loop = EventLoop()
    sink = LogSink("stderr", queue_size=100, policy="block")
    try:
        yield sink, loop
    finally:
        pid = sink.forwarder_pid
        sink.close()
        loop.close()
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped, not a zombie
        assert _shm_names() == before


def _shm_names() -> set[str]:
    mine = f"-{os.getpid()}-"  # (other daemons may run beside the tests)
    return {n for n in os.listdir("/dev/shm") if n.startswith("procpool-") and mine in n}


def _task_lines(err: str, prefix: str) -> list[str]:
    return [line.split("procpoold.task: ", 1)[1].split(" [", 1)[0] for line in err.splitlines()
            if line.startswith("INFO    procpoold.task: " + prefix)]


# -- fields and priorities -----------------------------------------------------------------------

@pytest.mark.parametrize(("level", "prio"), [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                             (logging.ERROR, 3), (logging.CRITICAL, 2), (25, 6), (5, 7)])
def test_priority_follows_the_level(level: int, prio: int) -> None:
    assert journal.priority(level) == prio


def test_daemon_records_carry_identifier_priority_code_location_and_given_fields(
        root_sink: LogSink, sender: ListSender) -> None:
    log = logging.getLogger("procpoold.scheduler")
    given = {**FIELDS, "MESSAGE_ID": MessageId.TASK_FAILED}
    log.warning("task %s failed", "fetch", extra={"journal_fields": given})
    this = test_daemon_records_carry_identifier_priority_code_location_and_given_fields
    line = this.__code__.co_firstlineno + 4
    [f] = sender.fields()
    assert f["MESSAGE"] == "task fetch failed"
    assert f["SYSLOG_IDENTIFIER"] == "procpoold"
    assert f["PRIORITY"] == "4"
    assert f["MESSAGE_ID"] == MessageId.TASK_FAILED
    assert {k: f[k] for k in FIELDS} == FIELDS
    assert f["CODE_FILE"] == __file__ and f["CODE_LINE"] == str(line)
    assert f["CODE_FUNC"] == "test_daemon_records_carry_identifier_priority_code_location_and_given_fields"
    assert f["LOGGER"] == "procpoold.scheduler"


def test_exceptions_travel_in_the_message(root_sink: LogSink, sender: ListSender) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("it failed")
    [f] = sender.fields()
    assert f["MESSAGE"].startswith("it failed\nTraceback") and "ValueError: boom" in f["MESSAGE"]
    assert f["PRIORITY"] == "3"


def test_task_lines_carry_the_attempt_fields_stream_and_worker_pid(root_sink: LogSink,
                                                                   sender: ListSender) -> None:
    tlog = task_log(root_sink)
    tlog.set_worker_pid(4242)
    tlog.line("stdout", logging.INFO, "hello")
    tlog.line("stderr", logging.WARNING, "careful")
    location = {"CODE_FILE": "job.py", "CODE_LINE": "3", "CODE_FUNC": "f"}
    tlog.line("log", logging.ERROR, "from logging", location)
    out = sender.fields()
    assert [(f["MESSAGE"], f["PROCPOOL_STREAM"], f["PRIORITY"]) for f in out] == [
        ("hello", "stdout", "6"), ("careful", "stderr", "4"), ("from logging", "log", "3")]
    for f in out:
        assert f["PROCPOOL_WORKER_PID"] == "4242" and f["SYSLOG_IDENTIFIER"] == "procpoold"
        assert {k: f[k] for k in FIELDS} == FIELDS
    assert (out[2]["CODE_FILE"], out[2]["CODE_LINE"], out[2]["CODE_FUNC"]) == ("job.py", "3", "f")


def test_long_lines_are_split_never_dropped(root_sink: LogSink, sender: ListSender) -> None:
    tlog = task_log(root_sink)
    text = "".join(chr(ord("a") + i % 26) for i in range(journal.MAX_MESSAGE * 2 + 10))
    tlog.line("stdout", logging.INFO, text)
    parts = [f["MESSAGE"] for f in sender.fields()]
    assert [len(p) for p in parts] == [journal.MAX_MESSAGE, journal.MAX_MESSAGE, 10]
    assert "".join(parts) == text


def test_message_ids_are_distinct_128_bit_hex() -> None:
    ids = journal.message_ids()
    assert len(ids) >= 14 and len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in ids.values())
    assert ids["daemon_ready"] == "b7e4a2f0c41d4a0e9a6f2d8c3e5b1a70"


def test_logging_docs_list_every_message_id() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "logging.md").read_text()
    for name, value in journal.message_ids().items():
        assert value in doc, f"{name} missing from docs/logging.md"


# -- encodings --------------------------------------------------------------------------------

def test_native_protocol_encodes_newlines_with_a_length() -> None:
    data = journal.encode_fields([("MESSAGE", "two\nlines"), ("PRIORITY", "6"), ("odd-name", "x")])
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=6\nODD_NAME=x\n"


def test_journal_sender_speaks_the_native_protocol(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        assert journal.journal_available(path)
        js = journal.JournalSender(path)
        fset = FieldSet({**FIELDS, "PROCPOOL_STREAM": "stdout"})
        js.send([(6, "hi", fset, {"CODE_LINE": "9"}, "t")])
        data = server.recv(65536)
        lines = data.decode().splitlines()
        assert lines[:2] == ["MESSAGE=hi", "PRIORITY=6"]
        assert "SYSLOG_IDENTIFIER=procpoold" in lines and "PROCPOOL_TASK_ID=7.2" in lines
        assert "CODE_LINE=9" in lines
        # Too big for a datagram: it goes as a sealed memfd.
        big = "x" * (js._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 1000)
        js.send([(6, big, fset, None, "t")])
        msg, anc, _flags, _addr = server.recvmsg(16, socket.CMSG_SPACE(4))
        assert msg == b"" and anc
        fd = struct.unpack("i", anc[0][2][:4])[0]
        with os.fdopen(fd, "rb"):
            assert os.pread(fd, 108, 0).startswith(b"MESSAGE=" + b"x" * 100)
        js.close()
    finally:
        server.close()
    assert not journal.journal_available(path)  # nobody listens any more


def test_auto_target_needs_a_service_and_a_journal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert journal.choose_target("auto", path) == "stderr"
    monkeypatch.setenv("INVOCATION_ID", "abc")
    assert journal.choose_target("auto", path) == "stderr"  # no journald: send() would drop silently
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert journal.choose_target("auto", path) == "journal"
    assert journal.choose_target("stderr", path) == "stderr"
    assert journal.choose_target("journal", path) == "journal"


def test_stderr_lines_are_readable_and_carry_the_fields() -> None:
    out = io.StringIO()
    StderrSender(out).send([(4, "careful", FieldSet({**FIELDS, "PROCPOOL_STREAM": "stderr"}),
                             {"CODE_FILE": "x.py", "MESSAGE_ID": "ab"}, "procpoold.task")])
    assert out.getvalue() == (
        "WARNING procpoold.task: careful [PROCPOOL_ATTEMPT=1 PROCPOOL_JOB_ID=7 PROCPOOL_JOB_NAME=nightly "
        "PROCPOOL_STREAM=stderr PROCPOOL_TASK_ID=7.2 PROCPOOL_TASK_NAME=fetch MESSAGE_ID=ab]\n")


def test_task_events_carry_their_message_id_message_and_the_callers_code_location(
        root_sink: LogSink, sender: ListSender) -> None:
    tlog = task_log(root_sink)
    tlog.set_worker_pid(99)
    tlog.event(enc.STARTED)
    this = test_task_events_carry_their_message_id_message_and_the_callers_code_location
    line = this.__code__.co_firstlineno + 4
    tlog.event(enc.FAILED, "boom")
    tlog.event(enc.SKIPPED, "a prerequisite failed")
    started, failed, skipped = sender.fields()
    assert (started["MESSAGE"], started["MESSAGE_ID"], started["PRIORITY"]) == (
        'task "fetch" attempt 1 starting', MessageId.TASK_STARTED, "6")
    assert (failed["MESSAGE"], failed["MESSAGE_ID"], failed["PRIORITY"]) == (
        'task "fetch" failed after 1 attempt: boom', MessageId.TASK_FAILED, "3")
    assert skipped["MESSAGE"] == 'task "fetch" skipped: a prerequisite failed'
    assert started["CODE_FILE"] == __file__ and started["CODE_LINE"] == str(line)
    assert started["LOGGER"] == "procpoold.task" and "PROCPOOL_STREAM" not in started
    assert {k: started[k] for k in FIELDS} == FIELDS and started["PROCPOOL_WORKER_PID"] == "99"
    # the daemon's tail has the same words
    assert root_sink.store.tail("7.2", 3) == [f["MESSAGE"] for f in (started, failed, skipped)]


def test_ring_records_name_tables_once_and_decode_back() -> None:
    data = enc.encode_fields([("A", "1"), ("B", "two\nlines")])
    assert list(enc.decode_fields(data)) == [("A", "1"), ("B", "two\nlines")]
    with pytest.raises(ValueError):
        list(enc.decode_fields(data[:-3]))
    sink = LogSink(sender=ListSender())
    try:
        a = task_log(sink)
        b = task_log(sink, attempt=2)  # the same task: no new table
        assert a.key == b.key and len(sink.tables()) > 0
        tables = sink.tables()
        sink.forget_job("7")
        assert sink.tables() == b""  # written already (in-process): nothing left to keep
        assert tables.count(b"PROCPOOL_JOB_ID=7\n") == 1 and tables.count(b"fetch") == 1
    finally:
        sink.close()


def test_a_failing_sender_falls_back_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    class Broken:
        target = "journal"

        def send(self, batch: list[Entry]) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

    sink = LogSink(sender=Broken())
    try:
        task_log(sink).line("stdout", logging.INFO, "kept")
        assert sink.errors == 1 and sink.fallbacks == 1
        err = capfd.readouterr().err
        assert "cannot write 1 record(s) to the journal" in err and "kept" in err
    finally:
        sink.close()


# -- the forwarder process ----------------------------------------------------------------------

def test_the_forwarder_writes_every_line_in_order_across_iterations(
        forwarded: tuple[LogSink, EventLoop], capfd: pytest.CaptureFixture[str]) -> None:
    sink, loop = forwarded
    sink.start(loop)
    assert sink.forwarder_pid is not None
    a, b = task_log(sink, "7.0", name="a"), task_log(sink, "7.1", name="b")
    sent = 0
    for i in range(3000):
        a.line("stdout", logging.INFO, f"a {i}")
        b.line("stdout", logging.INFO, f"b {i}")
        sent += 2
        if not sink.has_room():  # as a paused producer would: wait for the forwarder
            woken: list[bool] = []
            sink.when_room(functools.partial(woken.append, True))
            wait_for(functools.partial(bool, woken), loop=loop)
        if i % 7 == 0:
            loop.run_once(0)
    sink.stop()
    err = capfd.readouterr().err
    assert _task_lines(err, "a ") == [f"a {i}" for i in range(3000)], err[:2000]
    assert _task_lines(err, "b ") == [f"b {i}" for i in range(3000)]
    assert sink.written == sent and sink.dropped == 0 and sink.paused > 0


def test_block_pauses_producers_until_the_forwarder_has_written_half(
        forwarded: tuple[LogSink, EventLoop], capfd: pytest.CaptureFixture[str]) -> None:
    sink, loop = forwarded
    sink.start(loop)
    pid = sink.forwarder_pid
    assert pid is not None
    tlog = task_log(sink)
    os.kill(pid, signal.SIGSTOP)  # a forwarder that does not get to run
    try:
        sent = 0
        while tlog.line("stdout", logging.INFO, f"line {sent}"):
            sent += 1
            loop.run_once(0)
        sent += 1
        assert sent == 100 and not sink.has_room()
        woken: list[bool] = []
        sink.when_room(lambda: woken.append(True))
        for _ in range(5):
            loop.run_once(20)
        assert not woken  # nothing was written: the producer stays paused
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: bool(woken), loop=loop)  # woken through the doorbell once half is written
    assert sink.queued() <= 50
    sink.stop()
    assert _task_lines(capfd.readouterr().err, "line ") == [f"line {i}" for i in range(sent)]
    assert sink.dropped == 0 and sink.paused == 1


def test_a_killed_forwarder_is_replaced_and_the_records_in_its_ring_are_written(
        forwarded: tuple[LogSink, EventLoop], capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    sink, loop = forwarded
    sink.start(loop)
    tlog = task_log(sink)
    for i in range(50):
        tlog.line("stdout", logging.INFO, f"line {i}")
    loop.run_once(0)
    wait_for(lambda: sink.stats()["queued"] == 0, loop=loop)  # written: the forwarder holds nothing
    pid = sink.forwarder_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    for i in range(50, 90):  # these wait in the ring
        tlog.line("stdout", logging.INFO, f"line {i}")
    loop.run_once(0)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sink.restarts == 1 and sink.forwarder_pid not in (None, pid), loop=loop)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the dead one was reaped
    tlog.event(enc.COMPLETED)  # the new forwarder knows the task's names from its snapshot
    for i in range(90, 100):
        tlog.line("stdout", logging.INFO, f"line {i}")
    loop.run_once(0)
    sink.stop()
    err = capfd.readouterr().err
    assert _task_lines(err, "line ") == [f"line {i}" for i in range(100)]
    [said] = [r.getMessage() for r in caplog.records if r.name == "procpoold.journal"]
    assert f"the journal forwarder (pid {pid}) killed by signal 9; started another" in said
    [done] = [line for line in err.splitlines() if 'task "fetch" completed' in line]
    assert "PROCPOOL_TASK_ID=7.2" in done and "PROCPOOL_JOB_NAME=nightly" in done


def test_drop_counts_and_reports_per_task(capfd: pytest.CaptureFixture[str]) -> None:
    loop = EventLoop()
    sink = LogSink("stderr", queue_size=100, policy="drop")
    sink.start(loop)
    pid = sink.forwarder_pid
    assert pid is not None
    try:
        tlog = task_log(sink)
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(1000):
                assert tlog.line("stdout", logging.INFO, f"line {i}")  # drop never pauses
            loop.run_once(0)
            assert sink.dropped == 900 and sink.has_room()
            tlog.event(enc.FAILED, "x")  # the daemon's own records are kept below the hard limit
            assert sink.dropped == 900
        finally:
            os.kill(pid, signal.SIGCONT)
        sink.stop()
        err = capfd.readouterr().err
        assert _task_lines(err, "line ") == [f"line {i}" for i in range(100)]
        [note] = [line for line in err.splitlines() if MessageId.LOG_DROPPED in line]
        assert "dropped 900 log record(s) of task 7.2" in note and "PROCPOOL_DROPPED=900" in note
        assert 'task "fetch" failed' in err
        assert sink.stats()["dropped"] == 900
        assert sink.store.tail("7.2", 1) == ['task "fetch" failed after 1 attempt: x']
    finally:
        sink.close()
        loop.close()


def test_records_before_start_and_after_stop_are_written_at_once(capfd: pytest.CaptureFixture[str]) -> None:
    loop = EventLoop()
    sink = LogSink("stderr", queue_size=100)
    try:
        task_log(sink).line("stdout", logging.INFO, "early")
        assert "early" in capfd.readouterr().err
        sink.start(loop)
        sink.stop()
        task_log(sink).line("stdout", logging.INFO, "late")
        assert "late" in capfd.readouterr().err
    finally:
        sink.close()
        loop.close()


def test_flushed_tells_when_a_record_has_been_written(forwarded: tuple[LogSink, EventLoop]) -> None:
    sink, loop = forwarded
    sink.start(loop)
    tlog = task_log(sink)
    tlog.line("stdout", logging.INFO, "x")
    seq = sink.store.last_seq("7", "7.2")
    assert not sink.flushed(seq)  # not even in the ring yet
    wait_for(lambda: sink.flushed(seq), loop=loop)


# -- the store and the logs operation ---------------------------------------------------------

def test_store_keeps_a_bounded_tail_per_task_and_merges_a_job() -> None:
    store = LogStore(lines_per_owner=3, max_owners=3)
    sink = LogSink(sender=ListSender(), store=store)
    a = task_log(sink, "7.0")
    b = task_log(sink, "7.1", attempt=2)
    for i in range(5):
        a.line("stdout", logging.INFO, f"a{i}")
        b.line("stderr", logging.WARNING, f"b{i}")
    assert [r.message for r in store.records("7", "7.0")] == ["a2", "a3", "a4"]
    assert [r.message for r in store.records("7")] == ["a2", "b2", "a3", "b3", "a4", "b4"]
    assert [r.message for r in store.records("7", attempt=2)] == ["b2", "b3", "b4"]
    assert [r.message for r in store.records("7", limit=2)] == ["a4", "b4"]
    cursor = store.records("7")[3].seq
    assert [r.message for r in store.records("7", after=cursor)] == ["a4", "b4"]
    assert store.truncated("7")
    assert store.tail("7.1", 2) == ["b3", "b4"]
    for n in range(3):  # more owners than allowed: the oldest is forgotten
        store.add(f"8.{n}", "8", store.records("7")[0])
    assert store.records("7", "7.0") == []
    sink.close()


def test_logs_op_returns_the_tail_or_where_to_read_the_journal() -> None:
    tail_sink = LogSink(sender=StderrSender(io.StringIO()))
    task_log(tail_sink).line("stdout", logging.INFO, "hello")
    reply = journal.logs_op(tail_sink, {"id": "7.2"}, job_id="7", task_id="7.2", finished=True)
    assert reply["target"] == "stderr" and reply["source"] == "tail" and reply["finished"]
    assert [r["message"] for r in reply["records"]] == ["hello"]
    assert reply["records"][0]["stream"] == "stdout" and reply["records"][0]["attempt"] == 1
    again = journal.logs_op(tail_sink, {"id": "7.2", "after": reply["cursor"]}, job_id="7", task_id="7.2",
                            finished=True)
    assert again["records"] == []

    js = LogSink(sender=ListSender())
    reply = journal.logs_op(js, {"id": "7", "attempt": 2}, job_id="7", task_id=None, finished=False,
                            since=12.5)
    assert reply["target"] == "journal" and reply["source"] == "journal" and reply["records"] == []
    assert reply["match"] == {"PROCPOOL_JOB_ID": "7", "PROCPOOL_ATTEMPT": "2"} and reply["since"] == 12.5
    assert not reply["finished"]
    tail = journal.logs_op(js, {"id": "7", "source": "tail"}, job_id="7", task_id=None, finished=False)
    assert tail["source"] == "tail"
    tail_sink.close()
    js.close()


def test_log_config_validates() -> None:
    assert LogConfig().validate() == LogConfig("auto", 10_000, "block")
    for bad, word in ((LogConfig(target="syslog"), "log_target"),  # type: ignore[arg-type]
                      (LogConfig(policy="maybe"), "log_policy"),  # type: ignore[arg-type]
                      (LogConfig(queue_size=5), "log_queue_size")):
        with pytest.raises(ValueError, match=word):
            bad.validate()


def test_a_target_that_accepts_nothing_turns_pausing_into_dropping_and_says_so(
        capfd: pytest.CaptureFixture[str]) -> None:
    loop = EventLoop()
    sink = LogSink("stderr", queue_size=100, policy="block", put_timeout=0.2)
    sink.start(loop)
    pid = sink.forwarder_pid
    assert pid is not None
    try:
        tlog = task_log(sink)
        os.kill(pid, signal.SIGSTOP)  # the forwarder (and so the target) accepts nothing
        try:
            sent = 0
            while tlog.line("stdout", logging.INFO, f"line {sent}"):
                sent += 1
            loop.run_once(0)
            woken: list[bool] = []
            sink.when_room(lambda: woken.append(True))  # the producer pauses
            started = time.monotonic()
            wait_for(lambda: bool(woken), loop=loop)
            assert time.monotonic() - started >= 0.15  # not before put_timeout
            stats = sink.stats()
            assert stats["stalled"] and stats["stalls"] == 1 and stats["stalled_for"] >= 0.2
            for i in range(500):  # no more pausing: what does not fit is dropped and counted
                assert tlog.line("stdout", logging.INFO, f"more {i}")
            assert sink.has_room() and sink.dropped == 500
        finally:
            os.kill(pid, signal.SIGCONT)  # it accepts again: one record says what happened
        wait_for(lambda: not sink.stats()["stalled"], loop=loop)
        while tlog.line("stdout", logging.INFO, "again"):  # back to pausing the producer
            pass
        assert not sink.has_room()
        sink.stop()
        [note] = [line for line in capfd.readouterr().err.splitlines() if MessageId.LOG_STALLED in line]
        assert re.search(r"stderr accepted no record for \d+\.\d s; 500 records dropped "
                         r"\(log_put_timeout=0\.2 s\)", note), note
        assert note.startswith("WARNING") and "PROCPOOL_DROPPED=500" in note
    finally:
        sink.close()
        loop.close()
