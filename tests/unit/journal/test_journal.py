"""The log sink with an injected sender: fields, priorities, MESSAGE_IDs, splitting, backpressure."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procpoold import journal
from procpoold.journal import Entry, FieldSet, LogSink, MessageId, StderrSender
from procpoold.logconfig import LogConfig
from procpoold.logstore import LogStore

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


class FakeLoop:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, source: int, callback: Callable[[], None]) -> None:
        self.readers[source] = callback

    def remove_reader(self, source: int) -> None:
        self.readers.pop(source, None)

    def run_ready(self, timeout: float = 5.0) -> None:
        """Call the callbacks of readable fds (waits up to ``timeout`` for one)."""
        import select

        ready, _, _ = select.select(list(self.readers), [], [], timeout)
        for fd in ready:
            self.readers[fd]()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
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
        journal._active = None


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
    tlog = root_sink.task_log(dict(FIELDS))
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
    tlog = root_sink.task_log(dict(FIELDS))
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
        js.send([(1, time.time(), 6, "hi", fset, {"CODE_LINE": "9"}, "t")])
        data = server.recv(65536)
        lines = data.decode().splitlines()
        assert lines[:2] == ["MESSAGE=hi", "PRIORITY=6"]
        assert "SYSLOG_IDENTIFIER=procpoold" in lines and "PROCPOOL_TASK_ID=7.2" in lines
        assert "CODE_LINE=9" in lines
        # Too big for a datagram: it goes as a sealed memfd.
        big = "x" * (js._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 1000)
        js.send([(2, time.time(), 6, big, fset, None, "t")])
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
    StderrSender(out).send([(1, 0.0, 4, "careful", FieldSet({**FIELDS, "PROCPOOL_STREAM": "stderr"}),
                             {"CODE_FILE": "x.py", "MESSAGE_ID": "ab"}, "procpoold.task")])
    assert out.getvalue() == (
        "WARNING procpoold.task: careful [PROCPOOL_ATTEMPT=1 PROCPOOL_JOB_ID=7 PROCPOOL_JOB_NAME=nightly "
        "PROCPOOL_STREAM=stderr PROCPOOL_TASK_ID=7.2 PROCPOOL_TASK_NAME=fetch MESSAGE_ID=ab]\n")


def test_a_failing_sender_falls_back_to_stderr(sender: ListSender) -> None:
    class Broken:
        target = "journal"

        def send(self, batch: list[Entry]) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

    out = io.StringIO()
    sink = LogSink(Broken(), fallback=StderrSender(out))
    sink.task_log(dict(FIELDS)).line("stdout", logging.INFO, "kept")
    assert sink.errors == 1 and sink.fallbacks == 1
    assert "cannot write 1 record(s) to the journal" in out.getvalue() and "kept" in out.getvalue()


# -- the queue, the writer thread, backpressure -------------------------------------------------

def test_writer_thread_writes_everything_in_order(sender: ListSender) -> None:
    sink = LogSink(sender, queue_size=1000)
    sink.attach(FakeLoop())
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    for i in range(5000):
        if not tlog.line("stdout", logging.INFO, f"line {i}"):
            wait_for(sink.has_room)  # what a paused producer does, minus the loop
    sink.stop()
    sink.close()
    assert [f["MESSAGE"] for f in sender.fields()] == [f"line {i}" for i in range(5000)]
    assert sink.written == 5000 and sink.dropped == 0


def test_writer_keeps_looking_while_busy_and_parks_when_idle(
    sender: ListSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "_PARK_AFTER", 60.0)  # "busy" for the whole first half
    sink = LogSink(sender)
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    try:
        tlog.line("stdout", logging.INFO, "first")
        wait_for(lambda: sink.written == 1)
        assert not sink._idle  # within _PARK_AFTER of a batch it polls: nobody has to wake it
        tlog.line("stdout", logging.INFO, "second")
        wait_for(lambda: sink.written == 2)
        monkeypatch.setattr(journal, "_PARK_AFTER", 0.0)
        tlog.line("stdout", logging.INFO, "third")
        wait_for(lambda: sink.written == 3)
        wait_for(lambda: sink._idle)  # parked: an idle daemon's writer makes no wakeups
        tlog.line("stdout", logging.INFO, "fourth")  # ... and a record wakes it again
        wait_for(lambda: sink.written == 4)
    finally:
        sink.stop()
    assert [f["MESSAGE"] for f in sender.fields()] == ["first", "second", "third", "fourth"]


def test_block_policy_pauses_the_producer_and_wakes_it_through_the_loop(sender: ListSender) -> None:
    sender.gate = threading.Event()  # journald is stuck
    sink = LogSink(sender, queue_size=100, policy="block")
    loop = FakeLoop()
    sink.attach(loop)
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    sent = 0
    while tlog.line("stdout", logging.INFO, f"line {sent}"):
        sent += 1
        assert sent < 1000
    sent += 1
    assert not sink.has_room()
    woken: list[bool] = []
    sink.when_room(lambda: woken.append(True))
    loop.run_ready(timeout=0.05)
    assert woken == []  # still full
    sender.gate.set()  # journald reads again
    loop.run_ready()
    assert woken == [True] and sink.has_room()
    sink.stop()
    assert len(sender.entries) == sent and sink.dropped == 0 and sink.paused == 1
    sink.close()


def test_drop_policy_drops_counts_and_reports_per_task(sender: ListSender) -> None:
    sender.gate = threading.Event()
    sink = LogSink(sender, queue_size=100, policy="drop")
    sink.attach(FakeLoop())
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    for i in range(1000):
        assert tlog.line("stdout", logging.INFO, f"line {i}")  # drop never pauses the producer
    assert sink.has_room()
    assert 800 <= sink.dropped <= 900
    dropped = sink.dropped
    sender.gate.set()
    wait_for(lambda: any(f.get("MESSAGE_ID") == MessageId.LOG_DROPPED for f in sender.fields()))
    [note] = [f for f in sender.fields() if f.get("MESSAGE_ID") == MessageId.LOG_DROPPED]
    assert note["PRIORITY"] == "4" and note["PROCPOOL_TASK_ID"] == "7.2" and note["PROCPOOL_JOB_ID"] == "7"
    assert note["PROCPOOL_DROPPED"] == str(dropped)
    assert f"dropped {dropped} log record(s) of task 7.2" in note["MESSAGE"]
    sink.stop()
    assert sink.stats()["dropped"] == dropped
    # The daemon's own tail still has the newest lines, dropped or not.
    assert sink.store.tail("7.2", 1) == ["line 999"]
    sink.close()


def test_the_daemons_own_records_are_not_dropped_below_the_hard_limit(sender: ListSender) -> None:
    sender.gate = threading.Event()
    sink = LogSink(sender, queue_size=100, policy="drop")
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    for i in range(300):
        tlog.line("stdout", logging.INFO, f"{i}")
    own = (sink.next_seq(), time.time(), 4, "task failed", FieldSet(FIELDS), None, "procpoold.task")
    sink.put(own, "7.2", own=True)
    sender.gate.set()
    sink.stop()
    assert "task failed" in [f["MESSAGE"] for f in sender.fields()]


def test_records_before_start_and_after_stop_are_written_synchronously(sender: ListSender) -> None:
    sink = LogSink(sender)
    sink.task_log(dict(FIELDS)).line("stdout", logging.INFO, "early")
    assert len(sender.entries) == 1
    sink.start()
    sink.stop()
    sink.task_log(dict(FIELDS)).line("stdout", logging.INFO, "late")
    assert [f["MESSAGE"] for f in sender.fields()] == ["early", "late"]


def test_flushed_tells_when_a_record_has_left_the_queue(sender: ListSender) -> None:
    sender.gate = threading.Event()
    sink = LogSink(sender)
    sink.start()
    tlog = sink.task_log(dict(FIELDS))
    tlog.line("stdout", logging.INFO, "one")
    seq = sink.store.last_seq("7", "7.2")
    assert not sink.flushed(seq)
    sender.gate.set()
    wait_for(lambda: sink.flushed(seq))
    sink.stop()


# -- the store and the logs operation ---------------------------------------------------------

def test_store_keeps_a_bounded_tail_per_task_and_merges_a_job() -> None:
    store = LogStore(lines_per_owner=3, max_owners=3)
    sink = LogSink(ListSender(), store=store)
    a = sink.task_log({**FIELDS, "PROCPOOL_TASK_ID": "7.0"})
    b = sink.task_log({**FIELDS, "PROCPOOL_TASK_ID": "7.1", "PROCPOOL_ATTEMPT": "2"})
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


def test_logs_op_returns_the_tail_or_where_to_read_the_journal() -> None:
    tail_sink = LogSink(StderrSender(io.StringIO()))
    tail_sink.task_log(dict(FIELDS)).line("stdout", logging.INFO, "hello")
    reply = journal.logs_op({"id": "7.2"}, job_id="7", task_id="7.2", finished=True, sink=tail_sink)
    assert reply["target"] == "stderr" and reply["source"] == "tail" and reply["finished"]
    assert [r["message"] for r in reply["records"]] == ["hello"]
    assert reply["records"][0]["stream"] == "stdout" and reply["records"][0]["attempt"] == 1
    again = journal.logs_op({"id": "7.2", "after": reply["cursor"]}, job_id="7", task_id="7.2", finished=True,
                            sink=tail_sink)
    assert again["records"] == []

    js = LogSink(ListSender())
    reply = journal.logs_op({"id": "7", "attempt": 2}, job_id="7", task_id=None, finished=False, sink=js,
                            since=12.5)
    assert reply["target"] == "journal" and reply["source"] == "journal" and reply["records"] == []
    assert reply["match"] == {"PROCPOOL_JOB_ID": "7", "PROCPOOL_ATTEMPT": "2"} and reply["since"] == 12.5
    assert not reply["finished"]
    tail = journal.logs_op({"id": "7", "source": "tail"}, job_id="7", task_id=None, finished=False, sink=js)
    assert tail["source"] == "tail"


def test_log_config_validates() -> None:
    assert LogConfig().validate() == LogConfig("auto", 10_000, "block")
    for bad, word in ((LogConfig(target="syslog"), "log_target"),  # type: ignore[arg-type]
                      (LogConfig(policy="maybe"), "log_policy"),  # type: ignore[arg-type]
                      (LogConfig(queue_size=5), "log_queue_size")):
        with pytest.raises(ValueError, match=word):
            bad.validate()


def test_a_target_that_accepts_nothing_turns_pausing_into_dropping_and_says_so(sender: ListSender) -> None:
    from procpoold.loop import EventLoop

    sender.gate = threading.Event()  # journald accepts nothing
    sink = LogSink(sender, queue_size=100, policy="block", put_timeout=0.2)
    loop = EventLoop()
    sink.attach(loop)
    sink.start()
    try:
        tlog = sink.task_log(dict(FIELDS))
        sent = 0
        while tlog.line("stdout", logging.INFO, f"line {sent}"):
            sent += 1
        woken: list[bool] = []
        sink.when_room(lambda: woken.append(True))  # the producer pauses
        started = time.monotonic()
        while not woken:
            loop.run_once(0.05)
            assert time.monotonic() - started < 5, "the paused producer was never resumed"
        assert time.monotonic() - started >= 0.15  # not before put_timeout
        stats = sink.stats()
        assert stats["stalled"] and stats["stalls"] == 1 and stats["stalled_for"] >= 0.2
        for i in range(500):  # no more pausing: what does not fit is dropped and counted
            assert tlog.line("stdout", logging.INFO, f"more {i}")
        assert sink.has_room() and sink.dropped >= 400
        dropped = sink.dropped
        sender.gate.set()  # it accepts again: one record says what happened
        wait_for(lambda: any(f.get("MESSAGE_ID") == MessageId.LOG_STALLED for f in sender.fields()))
        [note] = [f for f in sender.fields() if f.get("MESSAGE_ID") == MessageId.LOG_STALLED]
        assert re.fullmatch(rf"journald accepted no record for \d+\.\d s; {dropped:,} records dropped "
                            r"\(log_put_timeout=0\.2 s\)", note["MESSAGE"]), note["MESSAGE"]
        assert note["PROCPOOL_DROPPED"] == str(dropped) and note["PRIORITY"] == "4"
        assert not sink.stats()["stalled"]
        while tlog.line("stdout", logging.INFO, "again"):  # back to pausing the producer
            pass
        assert not sink.has_room()
    finally:
        sink.stop()
        sink.close()
        loop.close()
