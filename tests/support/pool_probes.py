"""Task callables for the worker-pool tests (``tests.support.pool_probes:<name>``).

They run inside pool workers. Each one does one thing a real task might do, including the ways a
worker can die: raise, ``os._exit``, SIGKILL itself, segfault, hang, allocate, flood output.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from procpool import task

log = logging.getLogger("probes")


def echo(value: Any) -> Any:
    return value


def noop() -> None:
    return None


def describe(*args: Any, **kwargs: Any) -> str:
    """The arguments as the task received them."""
    return repr((args, kwargs))


def add(a: int, b: int) -> int:
    return a + b


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def pid() -> int:
    return os.getpid()


def context() -> dict[str, Any]:
    ctx = task.context()
    return {"task_name": ctx.task_name, "attempt": ctx.attempt, "job_id": ctx.job_id}


def env_and_cwd(key: str) -> list[Any]:
    return [os.environ.get(key), os.getcwd()]


def stubborn(seconds: float, marker: str | None = None) -> str:
    """Ignores interrupts (a task stuck in C code behaves the same): only SIGKILL stops it.
    Writes ``marker.started`` once it runs."""
    if marker:
        Path(f"{marker}.started").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:
            if marker:
                Path(marker).write_text("interrupted")
    return "survived"


def interruptible(seconds: float, marker: str) -> str:
    """Records the exception that stopped it, then lets it propagate (``marker.started`` once it
    runs)."""
    Path(f"{marker}.started").touch()
    try:
        time.sleep(seconds)
    except BaseException as exc:
        Path(marker).write_text(type(exc).__name__)
        raise
    return "slept"


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault() -> None:
    ctypes.string_at(0)


def hold_gil(seconds: int) -> None:
    """Sleeps in C without releasing the GIL: the heartbeat thread cannot run (a hung worker)."""
    ctypes.PyDLL(None).sleep(seconds)


def allocate(mib: int, hold: float = 0.0) -> int:
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if hold:
        time.sleep(hold)
    return len(block)


def big(n_bytes: int) -> bytes:
    return b"x" * n_bytes


def length(data: bytes) -> int:
    return len(data)


def unserializable() -> Any:
    return object()


class _DiesWhenEncoded(dict):  # type: ignore[type-arg]
    """A dict whose ``items()`` (called by msgpack's encoder for dict subclasses) kills the worker."""

    def __init__(self, how: str) -> None:
        super().__init__(x=1)
        self.how = how

    def items(self) -> Any:
        _die(self.how)
        return super().items()


def _die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    elif how == "segv":
        ctypes.string_at(0)
    elif how == "runtime":
        # Break the worker runtime itself: the next result it posts raises outside task code.
        from procpoold.pool import worker as runtime

        def broken(self: Any, data: bytes) -> None:
            raise RuntimeError("the worker runtime is broken")

        runtime.Worker.post = broken  # type: ignore[method-assign]


def die(how: str, stage: str) -> Any:
    """Die ``how`` (exit, sigkill, segv, runtime) ``before``/``inside``/``after`` computing or
    while the result is ``encoded``. Stage ``decode`` (the worker dies while it decodes this
    call's arguments) needs a worker armed by :func:`die_when_decoding`: it never gets here."""
    if stage == "decode":
        raise AssertionError("die(..., 'decode') ran: the worker that decoded it was not armed")
    if stage == "before":
        _die(how)
    if stage == "encoded":
        return _DiesWhenEncoded(how)
    total = 0
    for i in range(1000):
        total += i
        if stage == "inside" and i == 500:
            _die(how)
    if stage == "after":
        _die(how)
    return total


def die_when_decoding() -> int:
    """Arm this worker (returns its pid): from now on it dies while it decodes a call of
    ``die(how, "decode")``, inside the runtime's decoder, before the call reaches its inbox. For
    ``runtime`` the decoder fails and the runtime is broken (see :func:`_die`): the worker cannot
    even report that the arguments could not be decoded."""
    from procpoold.pool import worker as runtime
    from procpoold.pool.protocol import CALL

    decode = runtime._unpackb
    target = f"{__name__}:die"

    def unpackb(data: bytes, **options: Any) -> Any:
        msg = decode(data, **options)
        if msg[0] == CALL and msg[2] == target and msg[4] and msg[4][1:] == ["decode"]:
            _die(msg[4][0])
            raise RuntimeError("the worker's decoder is broken")
        return msg

    runtime._unpackb = unpackb
    return os.getpid()


def garble(message: Any) -> None:
    """From now on the worker posts ``message`` (msgpack) instead of each result: a worker whose
    result ring carries something that is not a result message."""
    import msgpack

    from procpoold.pool import worker as runtime

    original = runtime.Worker.post

    def post(self: Any, data: bytes, wake: bool = True) -> None:
        original(self, msgpack.packb(message), wake)

    runtime.Worker.post = post  # type: ignore[method-assign]


def output(lines: int) -> str:
    for i in range(lines):
        print(f"out {i}")
    print("err line", file=sys.stderr)
    log.warning("logged %d", lines)
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("with traceback")
    sys.stdout.write("partial")
    return "printed"


def gated(gate: str) -> int:
    """Waits until the file ``gate`` exists (returns at once if it does, so the pool takes it for a
    short function); then exits with code 5 if the file says ``exit``, else returns the pid."""
    path = Path(gate)
    while not path.exists():
        time.sleep(0.002)
    if path.read_text() == "exit":
        os._exit(5)
    return os.getpid()


def mark_then_wait(marker: str, gate: str) -> str:
    """Writes ``marker`` (the attempt has started), then waits until the file ``gate`` exists
    (returns at once if it does, so the pool takes it for a short function)."""
    Path(marker).write_text("started")
    path = Path(gate)
    while not path.exists():
        time.sleep(0.002)
    return "through"


#: Memory a worker keeps after the attempt that allocated it (see ``hoard``).
_hoard: list[bytearray] = []


def hoard(mib: int) -> int:
    """Allocates ``mib`` MiB (touched, so resident) and keeps it after returning; returns the pid."""
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _hoard.append(block)
    return os.getpid()


def progress() -> str:
    task.progress(0.5)
    task.progress(done=3, total=4, message="three")
    return "reported"


def ns_incr(key: str, times: int = 1) -> Any:
    value = None
    for _ in range(times):
        value = task.namespace().incr(key)
    return value


def ns_get_behind_gil(key: str, fifo: str, ready: str) -> Any:
    """``namespace().get(key)`` while, on the test's cue, another thread of this worker takes
    the GIL and keeps it until the test lets go.

    The thread waits (GIL released) until the test opens the FIFO ``fifo`` for writing, writes
    its thread id to the file ``ready``, then reads one byte of ``fifo`` in C without releasing
    the GIL: until the test writes that byte, the main thread cannot run Python code. The thread
    blocks the interrupt signal, so a signal sent to the worker lands on the main thread.
    """
    libc = ctypes.PyDLL(None)
    byte = ctypes.create_string_buffer(1)

    def hold() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        fd = os.open(fifo, os.O_RDONLY)
        try:
            Path(ready).write_text(str(threading.get_native_id()))
            libc.read(fd, byte, 1)
        finally:
            os.close(fd)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    value = task.namespace().get(key)
    thread.join()
    return value


def ns_then_sleep(key: str, seconds: float) -> Any:
    """``namespace().get(key)``, then sleeps (interruptibly) ``seconds``."""
    value = task.namespace().get(key)
    time.sleep(seconds)
    return value


def ns_try(key: str) -> str:
    """``namespace().get(key)``: "ok", or the error it raised."""
    try:
        task.namespace().get(key)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def ns_bad() -> str:
    try:
        task.namespace().get("forbidden")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def async_fail() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("async boom")


async def async_cancellable(seconds: float, marker: str) -> str:
    """Counts the CancelledErrors it sees into ``marker`` (``marker.started`` once it runs)."""
    Path(f"{marker}.started").touch()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        path = Path(marker)
        count = int(path.read_text()) if path.exists() else 0
        path.write_text(str(count + 1))
        raise
    return "finished"


#: ``async_gated`` attempts running in this worker right now, and the most there were at once.
_gated_now = 0
_gated_peak = 0


async def async_gated(gate_dir: str, name: str) -> int:
    """Creates ``started-<name>`` in ``gate_dir``, waits until ``gate_dir/open`` exists; returns
    the most ``async_gated`` attempts this worker has run at once so far."""
    global _gated_now, _gated_peak
    _gated_now += 1
    _gated_peak = max(_gated_peak, _gated_now)
    try:
        Path(gate_dir, f"started-{name}").touch()
        while not Path(gate_dir, "open").exists():
            await asyncio.sleep(0.005)
    finally:
        _gated_now -= 1
    return _gated_peak


async def async_context(delay: float) -> str:
    """The task context stays right while other async attempts interleave."""
    before = task.context().task_name
    await asyncio.sleep(delay)
    after = task.context().task_name
    print(f"async line of {after}")
    return f"{before}/{after}"


# -- hostile tasks: they write into their own result ring what a well-behaved worker never would --


def _runtime() -> Any:
    """The worker runtime this task runs in: a hostile task reaches it (and its rings) at will."""
    assert task._current is not None
    return task._current.channel.worker  # type: ignore[attr-defined]


def _own_id() -> str:
    assert task._current is not None
    return str(task._current.channel.aid)  # type: ignore[attr-defined]


def send_raw(frames: list[Any], spills: list[bytes] | None = None) -> str:
    """Pushes each of ``frames`` into this worker's result ring as one record (bytes as they are,
    anything else packed with msgpack after each string ``"$self"`` in it became this attempt's
    id), then each of ``spills`` as a spill reference record (``<u64 size><name>``, ``$pid``
    filled in), and returns. The daemon sees them before this attempt's own result."""
    import msgpack
    from procpoold._ring import lib

    from procpoold.pool.ring import KIND_SPILL

    me, pid = _own_id(), str(os.getpid()).encode()

    def fill(value: Any) -> Any:
        if value == "$self":
            return me
        if type(value) is list:
            return [fill(v) for v in value]
        if type(value) is dict:
            return {k: fill(v) for k, v in value.items()}
        return value

    records = [f if type(f) is bytes else msgpack.packb(fill(f), use_bin_type=True) for f in frames]
    runtime = _runtime()
    with runtime.lock:
        runtime._flush_locked(True)
        ring = runtime.res
        for record in records:
            _push_record(ring, record, 0, lib)
        for ref in spills or []:
            _push_record(ring, ref.replace(b"$pid", pid), KIND_SPILL, lib)
        lib.pp_ring_notify(ring._h)
    return "sent"


def _push_record(ring: Any, data: bytes, kind: int, lib: Any) -> None:
    while True:
        rc = lib.pp_ring_push(ring._h, data, len(data), kind, 1)
        if rc == 0:
            return
        if len(data) > ring.max_message:
            raise ValueError("frame larger than a ring record")
        time.sleep(0.001)  # full: the daemon drains it


def impersonate(how: str, other: str) -> Any:
    """Speaks for attempt ``other`` (another job's): ``log`` (a line in its log), ``progress``,
    ``ns_get`` / ``ns_set`` (its job's namespace), ``done`` (its result)."""
    import msgpack

    from procpoold.pool.protocol import DONE, PROGRESS

    runtime = _runtime()
    if how == "log":
        runtime.log(other, "stdout", logging.INFO, "injected line")
    elif how == "progress":
        runtime.emit(msgpack.packb([PROGRESS, other, {"fraction": 0.99, "message": "injected"}]))
    elif how == "ns_get":
        return runtime.request(other, "ns", {"op": "get", "key": "secret"})
    elif how == "ns_set":
        return runtime.request(other, "ns", {"op": "set", "key": "secret", "value": "overwritten"})
    elif how == "done":
        runtime.post(msgpack.packb([DONE, other, True, "forged", 0, None]))
    runtime.flush()
    time.sleep(30)  # the daemon kills this worker first
    return "not killed"


def spill_hostile(how: str, target: str = "") -> str:
    """Hands the daemon a spill reference it must refuse: ``name`` (the object ``target``, which
    is not this worker's), ``truncated`` (its own object, cut to half of the size announced),
    ``fifo`` / ``hardlink`` (its own name on a FIFO / on the object ``target``), ``huge`` (an
    announced size of 2**62 bytes)."""
    import struct

    from procpoold.pool import shm

    size = 1 << 20
    if how == "name":
        name = target
    elif how == "truncated":
        name = shm.write_spill(b"t" * size)
        os.truncate(f"/dev/shm/{name}", size // 2)
    elif how == "fifo":
        name = shm.new_name(shm.SPILL_PREFIX)
        os.mkfifo(f"/dev/shm/{name}", 0o600)
    elif how == "hardlink":
        name = shm.new_name(shm.SPILL_PREFIX)
        os.link(f"/dev/shm/{target}", f"/dev/shm/{name}")
        size = os.stat(f"/dev/shm/{target}").st_size
    elif how == "huge":
        name = shm.write_spill(b"h" * 100)
        size = 2**62
    else:
        raise ValueError(how)
    send_raw([], [struct.pack("<Q", size) + name.encode()])
    time.sleep(30)  # the daemon kills this worker first
    return "not killed"


def fuzz_batch(templates: list[bytes], raw: list[bytes], spills: list[bytes]) -> str:
    """The worker-message fuzzer's hostile task: pushes into its own result ring each template
    (msgpack; every string ``"$self"`` in it becomes this attempt's id), then each raw frame as it
    is, then each spill reference (``$pid``: this worker's pid), and returns."""
    import msgpack

    frames = [msgpack.unpackb(t, strict_map_key=False) for t in templates]
    return send_raw([*frames, *raw], spills)


def victim(gate: str) -> Any:
    """Another job's task, beside the fuzzer's: one line of output, then it waits for ``gate``
    and returns its job's namespace (which nobody else may have touched)."""
    print("victim line")
    path = Path(gate)
    while not path.exists():
        time.sleep(0.01)
    return task.namespace().snapshot()


def flood(seconds: float) -> int:
    """Pushes heartbeats into its result ring, 256 per call, as fast as it can for ``seconds``."""
    from procpoold.pool.protocol import HEARTBEAT_MESSAGE

    runtime = _runtime()
    batch = [HEARTBEAT_MESSAGE] * 256
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        with runtime.lock:
            sent += runtime.res.push_many(batch, wake=True)
    return sent


def odd_log_record() -> str:
    """Logs a record made by hand (no function, no logger name: None fields)."""
    record = logging.makeLogRecord({"msg": "made by hand", "levelno": logging.WARNING})
    logging.getLogger().handle(record)
    return "logged"


def request_flood(count: int, key: str) -> str:
    """Asks the daemon for namespace ``key`` ``count`` times without ever reading a reply (a
    well-behaved worker waits for each), then waits to be killed."""
    send_raw([[3, "$self", rid, "ns", {"op": "get", "key": key}] for rid in range(1, count + 1)])
    time.sleep(30)
    return "not killed"
