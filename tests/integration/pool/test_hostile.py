"""A task is untrusted code that can write anything into its own result ring: the pool accepts a
worker's messages only for the attempts it gave that worker, checks every field, takes only that
worker's spill objects and never gets a signal from reading one. Each vector kills the hostile
worker only; the other attempts, and the other workers, go on."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from procpoold.pool import shm
from tests.integration.pool.conftest import PoolHarness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def killed_for(pool: PoolHarness, aid: str) -> str:
    """The sentence of the hostile attempt, which failed because its worker was killed."""
    [out] = pool.wait(aid)
    assert out.status == "failed" and out.error is not None and out.error.type == "WorkerDied", out
    return out.error.message


def other_job_running(pool: PoolHarness, gate: Path) -> str:
    """An attempt of another job, running on the other worker until ``gate`` exists."""
    other = pool.submit("gated", str(gate))
    pool.run_until(lambda: other in pool.events.started, what="the victim to start")
    return other


@pytest.mark.parametrize("how", ["log", "progress", "ns_get", "ns_set", "done"])
def test_a_task_cannot_speak_for_another_jobs_attempt(pool: PoolHarness, tmp_path: Path, how: str) -> None:
    # The issue's vector: a task read and overwrote another job's namespace and injected lines
    # into its log, naming that job's attempt id. Now its worker is killed at the first word.
    gate = tmp_path / "gate"
    other = other_job_running(pool, gate)
    pool.events.namespace["secret"] = "victim's"
    seen: list[tuple[str, str]] = []
    pool.events.on_namespace = lambda aid, op, args: seen.append((aid, op))
    hostile = pool.submit("impersonate", how, other)
    sentence = killed_for(pool, hostile)
    kind = {"ns_get": "request", "ns_set": "request"}.get(how, how)
    assert f"it sent a {kind} message for attempt '{other}', which is not one of its attempts" in sentence
    gate.write_text("go")
    [out] = pool.wait(other)
    assert (out.status, out.result) == ("completed", pool.events.started[other][0])
    assert pool.events.finish_count[other] == 1
    assert [e for e in pool.events.logs if e[0] == other] == []
    assert [p for p in pool.events.progress if p[0] == other] == []
    assert seen == [] and pool.events.namespace == {"secret": "victim's"}
    assert pool.call("add", 1, 2).result == 3


#: Messages of the right length with a field of the wrong type ($self: the task's own attempt id).
WRONG_TYPES: list[list[Any]] = [
    [0, 7, True, None, 0, None],                                  # attempt id an int
    [0, ["$self"], True, None, 0, None],                          # ... a list (unhashable)
    [0, "$self", "yes", None, 0, None],                           # ok a string
    [0, "$self", True, None, "0", None],                          # flags a string
    [0, "$self", True, None, 0, float("nan")],                    # run time NaN
    [0, "$self", True, None, 0, -1.0],
    [0, "$self", True, None, 0, 10**18],                          # run time an int
    [0, "$self", False, ["not", "a", "map"], 0, None],            # error a list
    [1, "$self", "stdout", "20", "line", None],                   # level a string
    [1, "$self", "stdout", 20, ["line"], None],                   # text a list
    [1, "$self", "daemon", 20, "spoofed", None],                  # a stream that is not output
    [1, "$self", "log", 20, "x", {"PROCPOOL_JOB_ID": "other"}],   # a journal field of the daemon's
    [1, "$self", "log", 20, "x", {"LOGGER": 5}],
    [1, "$self", "log", 20, "x", ["CODE_FILE"]],                  # a list where a map is expected
    [2, "$self", ["fraction", 0.5]],
    [2, "$self", {"fraction": "half"}],
    [2, "$self", {"fraction": 7.0}],
    [2, "$self", {"other": 1}],
    [3, "$self", "1", "ns", {}],                                  # request id a string
    [3, "$self", 1, "ns", ["op", "get"]],
    [3, "$self", 1, 5, {}],
    [4.0],
    [True, "$self", "stdout", 20, "x", None],
]


@pytest.mark.parametrize("message", WRONG_TYPES, ids=[repr(m)[:40] for m in WRONG_TYPES])
def test_a_wrongly_typed_message_kills_only_its_worker(make_pool: type, message: list[Any]) -> None:
    pool = make_pool(workers=2, kill_grace=0.5)
    other = pool.submit("sleep", 0.3)
    pool.run_until(lambda: other in pool.events.started)
    hostile = pool.submit("send_raw", [message])
    sentence = killed_for(pool, hostile)
    assert "it sent a malformed message" in sentence, sentence
    assert pool.wait(other)[0].result == 0.3
    assert pool.call("add", 2, 2).result == 4
    assert [e for e in pool.events.logs if e[0] == hostile] == []


def test_extension_types_and_late_words(pool: PoolHarness) -> None:
    # An extension type in a result fails the attempt (clients cannot decode one); a message
    # about an attempt that has just left the worker is dropped, not a violation.
    out = pool.call("send_raw", [[0, "$self", True, msgpack.ExtType(5, b"x"), 0, None]])
    assert out.error is not None and out.error.type == "ResultNotSerializable", out
    assert "extension type" in out.error.message
    pids = pool.pids()
    first = pool.call("noop")
    out = pool.call("send_raw", [[1, first.attempt_id, "stdout", 20, "late", None]])
    assert out.status == "completed" and pool.pids() == pids  # (ran on the same worker, or not)


def test_a_result_over_max_result_bytes(make_pool: type) -> None:
    pool = make_pool(workers=2, max_result_bytes=100_000)
    pool.idle_workers(2)
    pids = pool.pids()
    out = pool.call("big", 200_000)
    assert out.error is not None and out.error.type == "ResultTooLarge", out
    assert "max_result_bytes (100,000" in out.error.message
    assert pool.call("big", 90_000).status == "completed"
    assert pool.pids() == pids  # the worker did not die for it
    # A hostile worker that sends one anyway, inline or spilled, is killed; nothing is read.
    sentence = killed_for(pool, pool.submit("send_raw", [[0, "$self", True, b"x" * 200_000, 0, None]]))
    assert "a message of 200,0" in sentence and "over max_result_bytes (100,000 bytes)" in sentence
    sentence = killed_for(pool, pool.submit("spill_hostile", "huge"))
    assert f"a message of {2**62:,} bytes, over max_result_bytes (100,000 bytes)" in sentence
    assert pool.call("add", 1, 1).result == 2


@pytest.fixture
def victim_object() -> Any:
    """A spill object of this process (as if the daemon's, or another worker's, were in flight)."""
    name = shm.write_spill(b"precious" * 1000)
    yield name
    shm.unlink(name)


@pytest.mark.parametrize("target", ["victim", "segment", "outside", "traversal", "not utf-8"])
def test_a_task_cannot_make_the_pool_touch_another_object(pool: PoolHarness, victim_object: str,
                                                         target: str) -> None:
    other_name = {"victim": victim_object, "segment": "procpool-ring-1-1", "outside": "passwd",
                  "traversal": "procpool-spill-../../etc/passwd", "not utf-8": ""}[target]
    if target == "not utf-8":
        ref = struct.pack("<Q", 10) + b"procpool-spill-\xff"
        aid = pool.submit("send_raw", [], [ref])
    else:
        aid = pool.submit("spill_hostile", "name", other_name)
    sentence = killed_for(pool, aid)
    assert "it sent a spilled message that could not be taken" in sentence, sentence
    why = "codec can't decode" if target == "not utf-8" else "not a spill object of 'procpool-spill-"
    assert why in sentence
    assert victim_object in shm_names() and Path("/dev/shm", victim_object).stat().st_size == 8000
    assert pool.call("add", 1, 1).result == 2


def test_another_workers_spill_is_refused(pool: PoolHarness, tmp_path: Path) -> None:
    # The other worker's own spill object (its pid in the name): the hostile worker cannot name it.
    gate = tmp_path / "gate"
    other = other_job_running(pool, gate)
    other_pid = pool.events.started[other][0]
    assert other_pid is not None
    name = f"{shm.spill_prefix(other_pid)}999.feed"
    fd = shm.create_named(name, 10)
    os.close(fd)
    try:
        sentence = killed_for(pool, pool.submit("spill_hostile", "name", name))
        assert "not a spill object of 'procpool-spill-" in sentence and name in shm_names()
    finally:
        shm.unlink(name)
    gate.write_text("go")
    assert pool.wait(other)[0].status == "completed"


@pytest.mark.parametrize("how", ["truncated", "fifo", "hardlink"])
def test_a_spill_that_is_not_what_it_says(pool: PoolHarness, victim_object: str, how: str) -> None:
    # Truncated to half the announced size before the daemon reads it: with the object mapped,
    # reading past its end was a SIGBUS that killed the daemon (this process, here). A FIFO
    # would block the daemon's open; a hard link would hand over someone else's object.
    before = signal.getsignal(signal.SIGBUS)
    sentence = killed_for(pool, pool.submit("spill_hostile", how, victim_object))
    assert "it sent a spilled message that could not be taken" in sentence, sentence
    expected = {"truncated": "holds 524288 bytes, not the 1048576 announced",
                "fifo": "not a plain file", "hardlink": "not a plain file with one name"}[how]
    assert expected in sentence
    assert signal.getsignal(signal.SIGBUS) == before
    assert victim_object in shm_names() and Path("/dev/shm", victim_object).read_bytes() == b"precious" * 1000
    assert pool.call("add", 1, 1).result == 2


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_a_task_that_floods_its_ring_does_not_keep_the_pool(pool: PoolHarness) -> None:
    # The loop reads a bounded number of batches from one ring per turn: another attempt is
    # dispatched and finished while the flood goes on.
    flooder = pool.submit("flood", 4.0)
    pool.run_until(lambda: flooder in pool.events.started, what="the flood to start")
    other = pool.submit("add", 20, 22)
    [out] = pool.wait(other, timeout=3.0)
    assert out.result == 42 and flooder not in pool.events.finished
    [flooded] = pool.wait(flooder)
    assert flooded.status == "completed" and flooded.result > 0


def test_a_log_record_made_by_hand_is_still_well_formed(pool: PoolHarness) -> None:
    pool.idle_workers(2)
    pids = pool.pids()
    out = pool.call("odd_log_record")
    assert (out.status, out.result) == ("completed", "logged"), out
    [line] = [e for e in pool.events.logs if e[0] == out.attempt_id]
    assert line[3] == "made by hand" and line[4] is not None and line[4]["CODE_FUNC"] == "None"
    assert pool.pids() == pids


def test_a_task_that_never_reads_its_replies_is_stopped(pool: PoolHarness) -> None:
    # Each request was answered, and a reply that did not fit the worker's (unread) request ring
    # waited in the daemon's memory: 2,000 requests for a 100 kB value held 200 MB there, and a
    # task could go on until the daemon ran out of memory.
    pool.events.namespace["big"] = "x" * 100_000
    answered: list[str] = []
    pool.events.on_namespace = lambda aid, op, args: answered.append(aid)
    sentence = killed_for(pool, pool.submit("request_flood", 2000, "big"))
    assert "it sent requests without reading the replies" in sentence, sentence
    assert len(answered) <= 64
    assert pool.call("add", 1, 1).result == 2
    # A task that asks (and reads) many times in a row is not in violation.
    out = pool.call("ns_incr", "n", 500)
    assert (out.status, out.result) == ("completed", 500), out
