"""Property-based fuzzer of worker-to-daemon messages, sent by a hostile task through its own ring.

A real procpoold runs ``tests.support.pool_probes:fuzz_batch`` tasks that push what hypothesis
draws into their result ring (see docs/pool.md, Trust):

* **well-formed messages with hostile values** (log records, progress reports, namespace
  requests, heartbeats: any level, text, key or value of the right type), many per task: the
  daemon takes them all and the attempt completes with its own result;
* **violations**, one per task after a few well-formed ones (the first one ends its worker):
  random bytes, random msgpack, messages of the right shape with a field of the wrong type,
  messages for someone else's attempt (another job's running attempt among them), truncated and
  oversized records, spill references to objects that are not the worker's (another job's,
  a ring, nothing) or of absurd sizes: the worker is killed with a sentence, and only its
  attempt fails.

After each task the daemon answers ``ping``; every few tasks a normal job completes; a job of
another user... of another job runs throughout and ends with its namespace and its log untouched;
the daemon's RSS stays within a bound. The counts of messages and violations are printed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from procpoold.pool import shm
from procpoold.pool.pool import MAX_UNREAD_REPLIES
from procpoold.pool.protocol import LOG_FIELDS, result_problem
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = str(Path(__file__).resolve().parents[2])
PROBES = "tests.support.pool_probes"
#: The daemon's max_result_bytes here: oversized records stay cheap to make.
LIMIT = 65536
#: Examples of each test (well-formed batches carry up to BATCH messages each).
BATCHES, VIOLATIONS, BATCH = 60, 1000, 200
#: Growth of the daemon's RSS allowed over the whole run (its log tail and caches fill up).
RSS_BOUND = 64 * 2**20

_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    data: bytes = _packer.pack(value)
    return data


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Fuzzed:
    """The daemon under fuzz, its victim job and the counts."""

    def __init__(self, d: DaemonProcess, tmp: Path) -> None:
        self.d = d
        self.client = d.client(timeout=30)
        self.gate = tmp / "victim-gate"
        self.victim = self.client.submit({
            "name": "victim", "python_path": [ROOT], "namespace": {"secret": "victim's"},
            "root": {"name": "v", "call": f"{PROBES}:victim", "args": [str(self.gate)]}})["id"]
        status = wait_until(lambda: self.client.status(self.victim),
                            lambda s: s["tasks"][0]["state"] == "running", what="the victim to run")
        task = status["tasks"][0]
        self.victim_attempt = f"{task['id']}@1#1"
        self.victim_object = shm.write_spill(b"v" * 5000)  # as if the victim's spill were in flight
        self.messages = self.violations = self.kills = self.jobs = 0
        self.rss_start = 0

    def run(self, templates: list[bytes], raw: list[bytes], spills: list[bytes]) -> dict[str, Any]:
        self.jobs += 1
        job = self.client.submit({
            "name": "hostile", "python_path": [ROOT], "on_failure": "continue",
            "root": {"name": "h", "call": f"{PROBES}:fuzz_batch", "args": [templates, raw, spills]}})["id"]
        result = self.client.wait(job, timeout=60)
        assert result["finished"], result
        assert self.client.ping()["pid"] == self.d.pid
        if self.jobs % 10 == 0:
            check = self.client.submit({
                "name": "check", "python_path": [ROOT],
                "root": {"name": "c", "call": f"{PROBES}:add", "args": [self.jobs, 1]}})["id"]
            done = self.client.wait(check, timeout=60)["status"]
            assert done["tasks"][0]["result"] == self.jobs + 1, done
        task: dict[str, Any] = result["status"]["tasks"][0]
        return task


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "procpoold.toml"
    config.write_text(f"max_result_bytes = {LIMIT}\nlog_level = \"warning\"\n")
    d = DaemonProcess(extra_args=["--workers", "4", "--config", str(config), "--log-level", "warning"])
    d.start()
    f = Fuzzed(d, tmp)
    started = time.monotonic()
    try:
        for _ in range(3):  # warm up: the workers, the store, the log tail
            f.run([pack([1, "$self", "stdout", 20, "warm", None])], [], [])
        f.rss_start = rss(d.pid)
        yield f
        f.gate.write_text("go")
        victim = f.client.wait(f.victim, timeout=60)["status"]
        assert victim["tasks"][0]["state"] == "completed", victim
        assert victim["tasks"][0]["result"] == {"secret": "victim's"}
        logs = f.client.call("logs", {"id": f.victim, "source": "daemon"})
        lines = [r["message"] for r in logs["records"] if r.get("stream") in ("stdout", "stderr", "log")]
        assert lines == ["victim line"], lines
        assert Path("/dev/shm", f.victim_object).read_bytes() == b"v" * 5000
        grew = rss(d.pid) - f.rss_start
        print(f"\nworker-message fuzz: {f.messages:,} well-formed hostile messages and "
              f"{f.violations:,} violations ({f.kills:,} workers killed) in {f.jobs:,} tasks, "
              f"{time.monotonic() - started:.1f} s; daemon RSS +{grew / 2**20:.1f} MiB")
        assert grew < RSS_BOUND, f"the daemon's RSS grew by {grew / 2**20:.0f} MiB"
        assert "Traceback" not in d.log(), d.log()[-3000:]
        f.client.close()
        d.stop(check=True)
    finally:
        shm.unlink(f.victim_object)
        d.cleanup()


# -- strategies ----------------------------------------------------------------------------------

ints = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=40)
values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | text | st.binary(max_size=40),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=10,
)
ns_ops = st.sampled_from(["get", "set", "incr", "append", "cas", "delete", "snapshot", "", "drop_all"])
log_message = st.tuples(
    st.just(1), st.just("$self"), st.sampled_from(["log", "stdout", "stderr"]), ints, text,
    st.none() | st.dictionaries(st.sampled_from(sorted(LOG_FIELDS)), text, max_size=4)).map(list)
progress_message = st.fixed_dictionaries({}, optional={
    "fraction": st.floats(0.0, 1.0), "done": ints, "total": ints, "message": text,
}).map(lambda report: [2, "$self", report])
request_message = st.tuples(
    st.just(3), st.just("$self"), ints, st.just("ns") | text,
    st.none()
    | st.dictionaries(st.text(max_size=8), values, max_size=4)
    | st.fixed_dictionaries({"op": ns_ops}, optional={
        "key": text | values, "value": values, "by": values, "expected": values, "default": values}),
).map(list)
well_formed = st.one_of(log_message, progress_message, request_message, st.just([4]))
#: A batch of well-formed messages: requests among them only as many as a worker may leave
#: unanswered (it sends them all before it reads a reply; more is a violation).
well_formed_batch = st.tuples(
    st.lists(st.one_of(log_message, progress_message, st.just([4])),
             min_size=BATCH // 2, max_size=BATCH - MAX_UNREAD_REPLIES),
    st.lists(request_message, max_size=MAX_UNREAD_REPLIES),
).flatmap(lambda parts: st.permutations(parts[0] + parts[1]))

#: A valid message of each kind (the one field replaced by :func:`wrong_type` makes it invalid).
_VALID = {0: [0, "$self", False, {"type": "E"}, 0, None], 1: [1, "$self", "stdout", 20, "x", None],
          2: [2, "$self", {}], 3: [3, "$self", 1, "ns", None]}


@st.composite
def wrong_type(draw: st.DrawFn) -> bytes:
    """A message of the right shape for the task's own attempt with one field of a wrong type
    (the daemon's own check says which values are wrong: any other value is drawn again)."""
    message = list(_VALID[draw(st.sampled_from(sorted(_VALID)))])
    message[draw(st.integers(1, len(message) - 1))] = draw(values)
    assume(result_problem(message) is not None)
    return pack(message)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    data = pack(draw(well_formed))
    return data[: draw(st.integers(0, len(data) - 1))]


def for_someone_else(victim: str) -> Any:
    return st.tuples(well_formed.filter(lambda m: len(m) > 1), st.just(victim) | text).map(
        lambda pair: pack([pair[0][0], pair[1], *pair[0][2:]]))


oversized = st.sampled_from([
    pack([0, "$self", True, b"x" * (LIMIT + 2048), 0, None]),
    pack([1, "$self", "stdout", 20, "y" * (LIMIT + 2048), None]),
])


def spill_refs(victim_object: str) -> Any:
    names = st.sampled_from([victim_object, "procpool-ring-1-1", "passwd", "procpool-spill-$pid-404.0",
                             "procpool-spill-1-1.0", "procpool-spill-../x"]) | text
    return st.tuples(st.integers(0, 2**64 - 1), names).map(
        lambda p: p[0].to_bytes(8, "little") + p[1].encode()) | st.binary(max_size=40)


# -- the fuzzers ---------------------------------------------------------------------------------


@settings(max_examples=BATCHES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(batch=well_formed_batch)
def test_fuzz_well_formed_hostile_messages(fuzzed: Fuzzed, batch: list[Any]) -> None:
    task = fuzzed.run([pack(m) for m in batch], [], [])
    assert (task["state"], task["result"]) == ("completed", "sent"), task
    fuzzed.messages += len(batch)


@settings(max_examples=VIOLATIONS, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_fuzz_violations(fuzzed: Fuzzed, data: st.DataObject) -> None:
    before = data.draw(st.lists(well_formed, max_size=5))
    choice = data.draw(st.sampled_from(["bytes", "msgpack", "type", "someone", "truncated", "oversized",
                                        "spill"]))
    templates = [pack(m) for m in before]  # "$self" in these becomes the task's own attempt id
    raw: list[bytes] = []  # ... and not in these
    spills: list[bytes] = []
    if choice == "bytes":
        raw.append(data.draw(st.binary(max_size=300)))
    elif choice == "msgpack":
        raw.append(pack(data.draw(values)))
    elif choice == "type":
        templates.append(data.draw(wrong_type()))
    elif choice == "someone":
        raw.append(data.draw(for_someone_else(fuzzed.victim_attempt)))
    elif choice == "truncated":
        raw.append(data.draw(truncated()))
    elif choice == "oversized":
        templates.append(data.draw(oversized))
    else:
        spills.append(data.draw(spill_refs(fuzzed.victim_object)))
    task = fuzzed.run(templates, raw, spills)
    fuzzed.messages += len(before)
    fuzzed.violations += 1
    if task["state"] == "completed":  # what was drawn happened to be a valid message (a heartbeat...)
        assert task["result"] == "sent", task
        return
    error = task["error"]
    assert (task["state"], error["type"]) == ("failed", "WorkerDied"), task
    assert " was killed: it sent " in error["message"], error
    assert len(error["message"]) < 600, error
    fuzzed.kills += 1


@pytest.mark.parametrize("how", ["log", "progress", "ns_get", "ns_set", "done"])
def test_a_task_cannot_speak_for_another_jobs_attempt(fuzzed: Fuzzed, how: str) -> None:
    # The issue's vector, through the daemon: another job's namespace read and overwritten, lines
    # injected into its log, naming its attempt id. The victim is checked when the module ends.
    job = fuzzed.client.submit({
        "name": "impostor", "python_path": [ROOT],
        "root": {"name": "i", "call": f"{PROBES}:impersonate", "args": [how, fuzzed.victim_attempt]}})["id"]
    task = fuzzed.client.wait(job, timeout=60)["status"]["tasks"][0]
    kind = {"ns_get": "request", "ns_set": "request"}.get(how, how)
    assert task["state"] == "failed" and task["error"]["type"] == "WorkerDied", task
    assert (f"it sent a {kind} message for attempt '{fuzzed.victim_attempt}', which is not one of its "
            "attempts") in task["error"]["message"]
