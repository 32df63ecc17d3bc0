"""Pool pieces without processes: settings validation and the sentences for worker deaths."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from procpoold.pool.slot import PoolSettings, WorkerSlot, death_sentence

pytestmark = pytest.mark.unit


@pytest.fixture
def worker() -> Iterator[WorkerSlot]:
    w = WorkerSlot(3, 1, 4096)
    w.pid = 4711
    yield w
    w.close()


def test_sentences_name_the_cause(worker: WorkerSlot) -> None:
    assert death_sentence(worker, None, signal.SIGKILL, "resize") == (
        "worker 3 (pid 4711) was killed by SIGKILL while running task 'resize'; out of memory?")
    assert death_sentence(worker, None, signal.SIGSEGV, "x").endswith("SIGSEGV while running task 'x'; "
                                                                       "a crash in native code?")
    assert death_sentence(worker, None, signal.SIGTERM, "x").endswith("SIGTERM while running task 'x'")
    assert death_sentence(worker, 3, None, "x") == (
        "worker 3 (pid 4711) exited with code 3 while running task 'x'")
    # When the cgroup's count of OOM kills says who sent the SIGKILL (procpoold.oom):
    assert death_sentence(worker, None, signal.SIGKILL, "resize", oom=True) == (
        "worker 3 (pid 4711) was killed by the kernel's OOM killer (SIGKILL) while running task "
        "'resize': out of memory")
    assert death_sentence(worker, None, signal.SIGKILL, "resize", oom=False) == (
        "worker 3 (pid 4711) was killed by SIGKILL while running task 'resize' (not by the OOM killer)")


def test_settings_defaults_and_validation() -> None:
    s = PoolSettings(workers=2)
    assert (s.async_per_worker, s.kill_grace, s.heartbeat_timeout) == (8, 5.0, 30.0)
    assert s.max_tasks_per_worker is None and s.max_memory_per_worker is None and s.max_worker_age is None
    assert PoolSettings(heartbeat_timeout=0.4).tick == 0.1
    with pytest.raises(ValueError):
        PoolSettings(async_per_worker=0)
    with pytest.raises(ValueError):
        PoolSettings(heartbeat_timeout=0)


def test_close_releases_fds(worker: WorkerSlot) -> None:
    import os

    fds = (worker.res_efd, worker.req_efd)
    worker.close()
    worker.close()  # idempotent
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
