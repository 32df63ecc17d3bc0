"""Who may do what, with real users: the real procctl run as two throwaway users, an administrator
(a member of admin_group) and root, against a real daemon running as root."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.users import User, procctl_as, throwaway
from tests.support.waiting import wait_until

EXIT_DENIED = 4
LONG = {"name": "long", "cwd": "/", "root": {"cmd": ["sleep", "600"]}}
QUICK = {"name": "quick", "cwd": "/", "root": {"cmd": ["true"]}}


@dataclass
class World:
    daemon: DaemonProcess
    alice: User
    bob: User
    boss: User  # in admin_group
    admin_group: str

    def procctl(self, user: User, *args: str, input: str | None = None) -> Any:
        return procctl_as(user.name, str(self.daemon.socket), *args, input=input)

    def submit(self, user: User, job: dict[str, Any]) -> str:
        out = self.procctl(user, "submit", "-", input=json.dumps(job))
        assert out.returncode == 0, out.stderr
        return str(out.stdout.strip())


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with throwaway({"alice": ["sock"], "bob": ["sock"], "boss": ["sock", "admin"]}, ["sock", "admin"]) as (
        users,
        groups,
    ):
        d = DaemonProcess(extra_args=["--workers", "2", "--group", groups["sock"], "--log-target", "stderr"])
        config = d.dir / "procpoold.toml"
        config.write_text(f'[procpoold]\nadmin_group = "{groups["admin"]}"\n')
        d.extra_args += ["--config", str(config)]
        os.chmod(d.dir, 0o711)  # others may reach the socket's folder (which is the group's)
        with serving(d):
            d.start()
            yield World(d, users["alice"], users["bob"], users["boss"], groups["admin"])


def assert_denied(out: Any, *needles: str) -> None:
    assert out.returncode == EXIT_DENIED, (out.returncode, out.stdout, out.stderr)
    first = out.stderr.splitlines()[0]
    assert first.startswith("procctl: error: ") and "Traceback" not in out.stderr
    for needle in needles:
        assert needle in first, first


def test_another_user_may_read_a_job_but_not_touch_it(world: World) -> None:
    job = world.submit(world.alice, LONG)
    bob = world.bob
    # Reads are open: status (text and JSON) shows whose job it is.
    out = world.procctl(bob, "status", job)
    assert out.returncode == 0 and f"{world.alice.name} ({world.alice.uid})" in out.stdout, out.stdout
    listing = json.loads(world.procctl(bob, "--json", "status").stdout)["jobs"]["list"]
    [mine] = [j for j in listing if j["id"] == job]
    assert (mine["user"], mine["uid"]) == (world.alice.name, world.alice.uid)
    table = world.procctl(bob, "status").stdout
    assert "USER" in table and world.alice.name in table
    assert world.procctl(bob, "ping").returncode == 0
    assert world.procctl(bob, "pool").returncode == 0
    # Changing it, waiting on it and reading its logs are not.
    rule = f"only its submitter ({world.alice.name}) or an administrator (root, group '{world.admin_group}')"
    assert_denied(world.procctl(bob, "cancel", job), f"cancel job {job}: {rule} may cancel it")
    assert_denied(world.procctl(bob, "cancel", f"{job}.0"), f"cancel job {job}: {rule}")
    assert_denied(world.procctl(bob, "resume", job), f"resume job {job}: {rule} may resume it")
    assert_denied(world.procctl(bob, "wait", job, "--timeout", "0.1"), f"wait job {job}: {rule}")
    assert_denied(world.procctl(bob, "logs", job), f"logs job {job}: {rule} may read its logs")
    with world.daemon.client() as client:
        assert client.status(job)["job"]["state"] == "running"  # untouched
    # Its submitter may.
    assert world.procctl(world.alice, "wait", job, "--timeout", "0.1").returncode == 124  # not finished
    assert world.procctl(world.alice, "logs", job).returncode == 0
    out = world.procctl(world.alice, "resume", job)
    assert out.returncode == 1 and "not held" in out.stderr  # allowed, but the job is not held
    out = world.procctl(world.alice, "cancel", job)
    assert out.returncode == 0, out.stderr


def test_only_the_submitter_or_an_administrator_may_retry_a_job(world: World) -> None:
    failing = {"name": "failing", "cwd": "/", "root": {"cmd": ["false"]}}
    job = world.submit(world.alice, failing)
    with world.daemon.client() as client:
        assert client.wait(job, timeout=60)["state"] == "failed"
    rule = f"only its submitter ({world.alice.name}) or an administrator (root, group '{world.admin_group}')"
    assert_denied(world.procctl(world.bob, "retry", job), f"retry job {job}: {rule} may retry it")
    with world.daemon.client() as client:
        assert client.status(job)["job"]["run"] == 1  # untouched
    out = world.procctl(world.alice, "retry", job, "--wait")
    assert out.returncode == 1 and f"job {job} run 2: 1 task again" in out.stdout, (out.stdout, out.stderr)
    out = world.procctl(world.boss, "retry", job, "--wait")  # an administrator may
    assert out.returncode == 1 and f"job {job} run 3: 1 task again" in out.stdout, (out.stdout, out.stderr)


def test_only_administrators_stop_or_resize_the_daemon(world: World) -> None:
    rule = f"only an administrator (root, group '{world.admin_group}')"
    assert_denied(world.procctl(world.bob, "shutdown"), f"shutdown: {rule} may stop the daemon")
    assert_denied(
        world.procctl(world.alice, "pool", "resize", "3"), f"pool_resize: {rule} may resize the pool"
    )
    out = world.procctl(world.boss, "pool", "resize", "3")
    assert out.returncode == 0, out.stderr
    with world.daemon.client() as client:
        client.pool_resize(2)  # root, in process


def test_clean_removes_only_the_peers_own_jobs_unless_administrator(world: World) -> None:
    with world.daemon.client() as client:
        ids = {u.name: world.submit(u, QUICK) for u in (world.alice, world.bob, world.boss)}
        for job in ids.values():
            client.wait(job, timeout=30)

    def listed() -> set[str]:
        with world.daemon.client() as client:
            return {j["id"] for j in client.status(limit=1000)["jobs"]["list"]}

    out = world.procctl(world.bob, "clean")
    assert out.returncode == 0, out.stderr
    assert "removed 1 finished job;" in out.stdout and "left" in out.stdout and "other users" in out.stdout
    remaining = listed()
    assert ids[world.bob.name] not in remaining
    assert {ids[world.alice.name], ids[world.boss.name]} <= remaining
    report = json.loads(world.procctl(world.alice, "--json", "clean").stdout)
    assert ids[world.alice.name] in report["removed"] and report["others_left"] >= 1
    assert ids[world.boss.name] in listed()
    # An administrator cleans everyone's, and the daemon logs it.
    report = json.loads(world.procctl(world.boss, "--json", "clean").stdout)
    assert ids[world.boss.name] in report["removed"] and report["others_left"] == 0
    wait_until(lambda: "cleaned" in world.daemon.log(), what="the administrator's clean in the log")


def test_idempotency_keys_are_per_user(world: World) -> None:
    """A key names a job only among its submitter's: another user can neither find that job by
    the key nor claim the key first so that the owner's submit is swallowed."""
    keyed = {**QUICK, "key": "nightly-report"}
    first = world.submit(world.bob, keyed)
    again = world.submit(world.bob, keyed)
    theirs = world.submit(world.alice, keyed)
    assert again == f"{first} (already submitted with this key)"
    assert theirs == str(int(first) + 1)  # a new job, not bob's
    with world.daemon.client() as client:
        assert client.status(theirs)["job"]["uid"] == world.alice.uid


def test_an_administrator_may_change_anyones_job_and_it_is_logged(world: World) -> None:
    for admin in (world.boss, None):  # a member of admin_group, then root
        job = world.submit(world.alice, LONG)
        if admin is None:
            with world.daemon.client() as client:
                assert client.cancel(job)["id"] == job
        else:
            assert world.procctl(admin, "logs", job).returncode == 0
            out = world.procctl(admin, "cancel", job)
            assert out.returncode == 0, out.stderr
        who = "root (uid 0)" if admin is None else f"{admin.name} (uid {admin.uid})"
        line = f"administrator {who}: cancel {job} of {world.alice.name} (uid {world.alice.uid})"
        wait_until(
            world.daemon.log,
            lambda text, line=line: line in text,
            what="the administrator's cancel in the log",
        )


def test_an_administrator_may_stop_the_daemon(world: World) -> None:
    """Last in this module: a member of admin_group stops the shared daemon."""
    out = world.procctl(world.boss, "shutdown")
    assert out.returncode == 0, out.stderr
    assert world.daemon.wait() == 0
    assert "stopping: requested by uid" in world.daemon.log()
