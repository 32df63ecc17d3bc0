"""Workers bound to one user and to one job at a time (real zygote, real workers, real users).

* a job's ``python_path`` and imported modules never reach another job on the same worker;
  a worker that loaded a C extension from a job's folder is replaced rather than reused;
* unsafe ``python_path`` and ``cwd`` entries fail the attempt in the worker;
* an attempt of another user runs in a worker of that user (uid, gid, groups, HOME), which
  cannot become root again, reads spilled arguments and writes spilled results; no worker ever
  serves two users.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procpoold.engines import AttemptSpec, Outcome
from procpoold.identity import Identity
from tests.integration.pool.conftest import PoolHarness
from tests.support.users import ThrowawayUsers, probe_folder, throwaway_users

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_n = iter(range(1, 10**9))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with probe_folder() as path:
        yield path


@pytest.fixture
def users() -> Iterator[ThrowawayUsers]:
    with throwaway_users(2) as made:
        yield made


def spec(call: str, *args: Any, job: str = "j1", user: Identity | None = None,
         python_path: list[str] | None = None, cwd: str | None = None) -> AttemptSpec:
    n = next(_n)
    return AttemptSpec(attempt_id=f"u{n}#1", job_id=job, job_name=job, task_id=f"u{n}", task_name=call,
                       attempt=1, kind="call", call=call, args=list(args), python_path=python_path or [],
                       cwd=cwd, user=user)


def run(pool: PoolHarness, *specs: AttemptSpec) -> list[Outcome]:
    for s in specs:
        pool.pool.submit(s)
    return pool.wait(*(s.attempt_id for s in specs))


def module_dir(root: Path, name: str, body: str) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "m.py").write_text(body)
    return str(folder)


# -- jobs ------------------------------------------------------------------------------------------


def test_a_jobs_python_path_and_modules_do_not_reach_the_next_job(make_pool: Callable[..., PoolHarness],
                                                                   tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    dir_a = module_dir(tmp_path, "a", "def f():\n    return 'A'\n")
    dir_c = module_dir(tmp_path, "c", "def f():\n    return 'C'\n")
    (a,) = run(pool, spec("m:f", job="A", python_path=[dir_a]))
    assert (a.status, a.result) == ("completed", "A")
    pid = pool.pids()
    (b,) = run(pool, spec("m:f", job="B"))
    assert b.status == "failed" and b.error is not None
    assert b.error.type == "ModuleNotFoundError", b.error
    (c,) = run(pool, spec("m:f", job="C", python_path=[dir_c]))
    assert (c.status, c.result) == ("completed", "C")
    # ... and the same worker did it all: restoring, not replacing.
    assert pool.pids() == pid


def test_a_worker_woken_for_the_next_job_forgets_the_last_one(make_pool: Callable[..., PoolHarness],
                                                             tmp_path: Path) -> None:
    """expect_work (a submit on its way) has an idle worker leave its job right away: the next
    job still finds none of its modules, and code compiled for one source is never handed out for
    another (the worker's code cache is keyed by path and source)."""
    pool = make_pool(workers=1)
    dir_a = module_dir(tmp_path, "a", "def f():\n    return 'A'\n")
    dir_c = module_dir(tmp_path, "c", "def f():\n    return 'C'\n")
    (a,) = run(pool, spec("m:f", job="A", python_path=[dir_a]))
    assert (a.status, a.result) == ("completed", "A")
    pid = pool.pids()
    pool.pool.expect_work(None)
    assert pool.pool.info()["prewakes"] == 1
    (b,) = run(pool, spec("m:f", job="B"))
    assert b.status == "failed" and b.error is not None
    assert b.error.type == "ModuleNotFoundError", b.error
    assert pool.pool.info()["prewakes_used"] == 1
    pool.pool.expect_work(None)
    (c,) = run(pool, spec("m:f", job="C", python_path=[dir_c]))
    assert (c.status, c.result) == ("completed", "C")
    Path(dir_a, "m.py").write_text("def f():\n    return 'A, edited'\n")
    pool.pool.expect_work(None)
    (d,) = run(pool, spec("m:f", job="D", python_path=[dir_a]))
    assert (d.status, d.result) == ("completed", "A, edited")
    (e,) = run(pool, spec("m:f", job="E", python_path=[dir_c]))  # (a switch without a wake)
    assert (e.status, e.result) == ("completed", "C")
    assert pool.pool.info()["prewakes"] == pool.pool.info()["prewakes_used"] == 3
    assert pool.pids() == pid


def test_a_worker_that_loaded_a_c_extension_is_replaced_for_the_next_job(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    # A standard extension module that this process (so the zygote) has not loaded, copied into
    # the job's folder: it shadows the standard one, and cannot be unloaded.
    found = [found_spec for name in ("_lsprof", "xxlimited", "_testbuffer", "_queue", "audioop")
             if name not in sys.modules and (found_spec := importlib.util.find_spec(name)) is not None
             and found_spec.origin and found_spec.origin.endswith(".so")]
    if not found:
        pytest.skip("no standard extension module to copy")
    ext = Path(str(found[0].origin))
    folder = tmp_path / "ext"
    folder.mkdir()
    shutil.copy(ext, folder / ext.name)
    modname = ext.name.split(".")[0]
    (folder / "m.py").write_text(f"def f():\n    import {modname}\n    return {modname}.__file__\n")
    (a,) = run(pool, spec("m:f", job="A", python_path=[str(folder)]))
    assert a.status == "completed" and a.result.startswith(str(folder)), a
    first = pool.pids()
    (a2,) = run(pool, spec("m:f", job="A", python_path=[str(folder)]))  # its own job: same worker
    assert a2.status == "completed" and pool.pids() == first
    (b,) = run(pool, spec("os:getpid", job="B"))
    assert b.status == "completed" and b.result not in first
    info = pool.pool.workers_info()
    assert [w["job_id"] for w in info if not w["retiring"]] == ["B"]


def test_unsafe_python_path_and_cwd_fail_the_attempt(make_pool: Callable[..., PoolHarness],
                                                     tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (p,) = run(pool, spec("os:getpid", python_path=[str(open_dir)]))
    assert p.status == "failed" and p.error is not None
    assert p.error.type == "PermissionError"
    assert p.error.message.startswith(f"python_path[0]: '{open_dir}' is writable by every user"), p.error
    unsticky = tmp_path / "unsticky"
    (unsticky / "inner").mkdir(parents=True)
    unsticky.chmod(0o777)
    (c,) = run(pool, spec("os:getpid", job="j2", cwd=str(unsticky / "inner")))
    assert c.status == "failed" and c.error is not None
    assert c.error.message.startswith("cwd: ") and "not sticky" in c.error.message, c.error


# -- users -----------------------------------------------------------------------------------------


def test_each_users_attempts_run_as_that_user_and_no_worker_serves_two(
        make_pool: Callable[..., PoolHarness], users: ThrowawayUsers, shared_dir: Path) -> None:
    pool = make_pool(workers=2)
    path = [str(shared_dir)]
    alice, bob = users.users
    specs = []
    for i in range(6):  # interleaved, with the daemon's own user in between
        specs.append(spec("ppwho:who", job=f"a{i}", user=alice, python_path=path))
        specs.append(spec("ppwho:who", job=f"b{i}", user=bob, python_path=path))
        specs.append(spec("os:getuid", job=f"r{i}"))
    outcomes = run(pool, *specs)
    served: dict[int, set[int]] = {}
    for s, o in zip(specs, outcomes, strict=True):
        assert o.status == "completed", o
        want = os.geteuid() if s.user is None else s.user.uid
        got = o.result if s.user is None else o.result[0]
        assert got == want
        if s.user is not None:
            _uid, gid, groups, home, name, cwd, _pid = o.result
            assert (gid, groups, home, name) == (s.user.gid, sorted(s.user.groups), s.user.home, s.user.name)
            assert users.gid in groups
            assert cwd == "/"  # the home does not exist: not the daemon's folder
        pid = pool.events.started[s.attempt_id][0]
        assert pid is not None
        served.setdefault(pid, set()).add(want)
    assert all(len(uids) == 1 for uids in served.values()), served
    for w in pool.pool.workers_info():
        assert w["uid"] in (os.geteuid(), alice.uid, bob.uid)


def test_a_users_worker_cannot_become_root_or_read_root_files(
        make_pool: Callable[..., PoolHarness], users: ThrowawayUsers, shared_dir: Path,
        tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    alice = users.users[0]
    secret = shared_dir / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    path = [str(shared_dir)]
    root_again, read = run(pool, spec("ppwho:become_root", user=alice, python_path=path),
                           spec("ppwho:read", str(secret), user=alice, python_path=path))
    assert root_again.status == "failed" and root_again.error is not None
    assert root_again.error.type == "PermissionError"
    assert read.status == "failed" and read.error is not None and read.error.type == "PermissionError"


def test_spilled_arguments_and_results_cross_between_users(
        make_pool: Callable[..., PoolHarness], users: ThrowawayUsers, shared_dir: Path) -> None:
    pool = make_pool(workers=1)
    alice = users.users[0]
    payload = os.urandom(3 << 20)  # over the ring's inline limit both ways
    path = [str(shared_dir)]
    echoed, made = run(pool, spec("ppwho:echo", payload, user=alice, python_path=path),
                       spec("ppwho:big", 3 << 20, user=alice, python_path=path))
    assert echoed.status == "completed" and echoed.result == payload
    assert made.status == "completed" and made.result == b"r" * (3 << 20)


def test_a_preloaded_module_a_job_removed_is_put_back(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    pool = make_pool(workers=1)
    body = "import sys\n\ndef f():\n    del sys.modules['json']\n    return 1\n"
    folder = module_dir(tmp_path, "drop", body)
    (a,) = run(pool, spec("m:f", job="A", python_path=[folder]))
    assert a.status == "completed"
    first = pool.pids()
    (b,) = run(pool, spec("sys:getrefcount", job="B"))  # any call: the switch restores first
    (c,) = run(pool, spec("json:dumps", [1], job="C"))
    assert (b.status, c.status, c.result) == ("failed", "completed", "[1]")  # (getrefcount needs an arg)
    assert pool.pids() == first


def test_attempts_of_a_user_no_worker_can_become_fail_saying_so(
        make_pool: Callable[..., PoolHarness]) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    pool = make_pool(workers=1)
    broken = Identity(65534, -1, (), "broken", "/")  # setgid(-1) fails: the worker exits at once
    a, b = run(pool, spec("os:getuid", job="x", user=broken), spec("os:getuid", job="y", user=broken))
    for outcome in (a, b):
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type == "WorkerDied"
        assert "could not become user broken (uid 65534) and exited before running task" in \
            outcome.error.message, outcome.error
    (ok,) = run(pool, spec("os:getuid", job="z"))
    assert (ok.status, ok.result) == ("completed", os.geteuid())


def test_a_relative_python_path_is_checked_where_it_resolves(make_pool: Callable[..., PoolHarness],
                                                             tmp_path: Path) -> None:
    # A relative entry passed every check (it "resolves against the task's cwd"), but the worker
    # imported before entering the attempt's cwd: it resolved against wherever the worker stood,
    # such as a folder anyone may write that an earlier task of the job moved to.
    pool = make_pool(workers=1)
    shared = tmp_path / "shared"
    shared.mkdir()
    module_dir(shared, "planted", "def f():\n    return 'planted'\n")
    shared.chmod(0o777)
    (a,) = run(pool, spec("os:chdir", str(shared), job="B"))
    assert a.status == "completed"
    (b,) = run(pool, spec("m:f", job="B", python_path=["planted"]))
    assert b.status == "failed" and b.error is not None and b.error.type == "PermissionError", b
    assert "writable by every user and not sticky" in b.error.message
    # Against the attempt's own cwd when it has one.
    safe = tmp_path / "safe"
    safe.mkdir()
    module_dir(safe, "lib", "def f():\n    return 'safe'\n")
    (c,) = run(pool, spec("m:f", job="C", python_path=["lib"], cwd=str(safe)))
    assert (c.status, c.result) == ("completed", "safe"), c



def test_what_one_users_tasks_say_of_a_function_does_not_steer_anothers(
        make_pool: Callable[..., PoolHarness], users: ThrowawayUsers, shared_dir: Path) -> None:
    # Whether a function is async def (and how long it takes) was learnt per function name for
    # every user: another user's async "m:f" made this user's sync "m:f" dispatched as async, so
    # stopping it sent no interrupt and its worker was killed kill_grace later.
    pool = make_pool(workers=2, kill_grace=3.0)
    alice, bob = users.users
    for name, body in (("a", "async def f(x):\n    return x\n"),
                       ("b", "import time\n\ndef f(x, started):\n    open(started, 'w').close()\n"
                             "    time.sleep(x)\n    return x\n")):
        (shared_dir / name).mkdir(mode=0o755)
        (shared_dir / name / "m.py").write_text(body)
    marks = shared_dir / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # (bob's function writes there)
    (a,) = run(pool, spec("m:f", 1, job="A", user=alice, python_path=[str(shared_dir / "a")]))
    assert (a.status, a.result) == ("completed", 1), a
    assert pool.pool._async_calls == {(alice.uid, "m:f")}  # learnt for alice only
    b = spec("m:f", 30, str(marks / "b"), job="B", user=bob, python_path=[str(shared_dir / "b")])
    pool.pool.submit(b)
    pool.run_until(lambda: (marks / "b").exists(), what="bob's function running")
    pool.pool.stop_attempt(b.attempt_id, "cancelled")
    [out] = pool.wait(b.attempt_id)
    assert out.status == "cancelled" and out.error is not None, out
    assert "TaskInterrupted" in out.error.type, out.error  # interrupted: not killed kill_grace later


def test_a_jobs_next_attempt_runs_with_the_identity_it_names(
        make_pool: Callable[..., PoolHarness], users: ThrowawayUsers, shared_dir: Path) -> None:
    # An idle worker of the job was taken without looking at who it runs as: once the user's
    # groups were read again (say, after one was taken away), the job's next attempts still ran
    # with the old ones.
    pool = make_pool(workers=1)
    alice = users.users[0]
    path = [str(shared_dir)]
    (first,) = run(pool, spec("ppwho:who", job="J", user=alice, python_path=path))
    assert first.status == "completed" and users.gid in first.result[2], first
    fewer = dataclasses.replace(alice, groups=(alice.gid,))
    (second,) = run(pool, spec("ppwho:who", job="J", user=fewer, python_path=path))
    assert second.status == "completed", second
    assert second.result[2] == [alice.gid], second


def test_a_python_path_through_a_symlink_is_used_as_it_was_checked(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    # The entry was checked resolved but put on sys.path as named: whoever could point the link
    # elsewhere afterwards chose where the job's later imports came from, unchecked.
    pool = make_pool(workers=1)
    good = Path(module_dir(tmp_path, "good", "def f():\n    return 'good'\n"))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "n.py").write_text("def g():\n    return 'planted'\n")
    evil.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(good)
    (a,) = run(pool, spec("m:f", job="J", python_path=[str(link)]))
    assert (a.status, a.result) == ("completed", "good"), a
    link.unlink()
    link.symlink_to(evil)
    (b,) = run(pool, spec("n:g", job="J", python_path=[str(link)]))
    assert b.status == "failed" and b.error is not None and b.error.type == "PermissionError", b
    assert "writable by every user" in b.error.message


def test_an_async_attempts_env_and_cwd_do_not_reach_the_next_job(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    # A sync attempt's env and cwd are undone when it ends; an async attempt's stayed in the
    # worker, and the next job's tasks ran with them.
    from tests.integration.pool.conftest import PROBES, ROOT

    pool = make_pool(workers=1)
    before = run(pool, spec(f"{PROBES}:env_and_cwd", "PP_LEFT", job="A", python_path=[ROOT]))[0].result
    first = AttemptSpec(attempt_id="async-env#1", job_id="B", job_name="B", task_id="async-env",
                        task_name="async", attempt=1, kind="call", call=f"{PROBES}:async_echo",
                        args=[1], python_path=[ROOT], env={"PP_LEFT": "job B's"}, cwd=str(tmp_path))
    (b,) = run(pool, first)
    assert (b.status, b.result) == ("completed", 1), b
    (c,) = run(pool, spec(f"{PROBES}:env_and_cwd", "PP_LEFT", job="C", python_path=[ROOT]))
    assert c.status == "completed" and c.result == before, c


def test_a_job_starts_where_the_worker_started_not_where_the_last_job_left_it(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    from tests.integration.pool.conftest import PROBES, ROOT

    pool = make_pool(workers=1)
    (first,) = run(pool, spec(f"{PROBES}:env_and_cwd", "X", job="A", python_path=[ROOT]))
    (moved,) = run(pool, spec("os:chdir", str(tmp_path), job="A"))
    assert moved.status == "completed"
    (after,) = run(pool, spec(f"{PROBES}:env_and_cwd", "X", job="B", python_path=[ROOT]))
    assert after.status == "completed" and after.result[1] == first.result[1], after


def test_no_task_imports_from_a_folder_others_may_write_on_the_daemons_path(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    # A daemon started with "python -m" in /tmp has /tmp first on sys.path: every task's imports
    # (of a job that named no python_path at all) looked there first, where anyone may plant.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    name = f"ppplanted{os.getpid()}"
    (open_dir / f"{name}.py").write_text("def f():\n    return 'planted'\n")
    open_dir.chmod(0o777)
    sys.path.insert(0, str(open_dir))
    try:
        pool = make_pool(workers=1)
    finally:
        sys.path.remove(str(open_dir))
    (out,) = run(pool, spec(f"{name}:f", job="A"))
    assert out.status == "failed" and out.error is not None, out
    assert out.error.type == "ModuleNotFoundError", out.error


def test_a_relative_cwd_is_checked_where_it_resolves(make_pool: Callable[..., PoolHarness],
                                                     tmp_path: Path) -> None:
    from tests.integration.pool.conftest import PROBES, ROOT

    pool = make_pool(workers=1)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (moved,) = run(pool, spec("os:chdir", str(tmp_path), job="J"))
    assert moved.status == "completed"
    (out,) = run(pool, spec(f"{PROBES}:env_and_cwd", "X", job="J", python_path=[ROOT], cwd="open"))
    assert out.status == "failed" and out.error is not None and out.error.type == "PermissionError", out
    assert "writable by every user and not sticky" in out.error.message


def test_an_async_attempt_with_a_relative_cwd_survives_its_awaits(
        make_pool: Callable[..., PoolHarness], tmp_path: Path) -> None:
    # Its cwd is entered again at each step: a relative one went one level deeper each time.
    from tests.integration.pool.conftest import PROBES, ROOT

    pool = make_pool(workers=1)
    (tmp_path / "sub").mkdir()
    (moved,) = run(pool, spec("os:chdir", str(tmp_path), job="J"))
    assert moved.status == "completed"
    (out,) = run(pool, spec(f"{PROBES}:async_sleep", 0.01, job="J", python_path=[ROOT], cwd="sub"))
    assert (out.status, out.result) == ("completed", 0.01), out
