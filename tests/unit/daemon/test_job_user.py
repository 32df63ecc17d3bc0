"""The job's "user" field: who may name whom, and what an unknown name gives (scheduler.job_user)."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.tree import JobSpec, TreeError, json_schema, parse_job
from procpoold.core.jobs import Job
from procpoold.identity import Authority, can_switch_users
from procpoold.scheduler import Scheduler, job_user

NOBODY = pwd.getpwnam("nobody").pw_uid
DAEMON_USER = pwd.getpwnam("daemon").pw_uid


def spec(user: str | None = None) -> JobSpec:
    return parse_job({"root": {"cmd": ["true"]}, **({"user": user} if user is not None else {})})


def test_the_field_is_a_login_name_and_is_in_the_schema() -> None:
    assert parse_job({"user": "alice", "root": {"cmd": ["true"]}}).user == "alice"
    assert parse_job({"root": {"cmd": ["true"]}}).user is None
    for bad in ("", "a b", "-x", "a/b", "a\nb", "a\x00b", "x" * 300):
        with pytest.raises(TreeError) as err:
            parse_job({"user": bad, "root": {"cmd": ["true"]}})
        assert err.value.path == "user" and len(err.value.message) < 200
    with pytest.raises(TreeError, match="must be a user name"):
        parse_job({"user": 1000, "root": {"cmd": ["true"]}})
    assert json_schema()["properties"]["user"]["type"] == "string"


def test_an_unknown_user_is_an_invalid_tree_naming_the_path() -> None:
    with pytest.raises(TreeError) as err:
        job_user(spec("no-such-user-pp"), 0, Authority())
    assert err.value.code == ErrorCode.INVALID_TREE
    assert err.value.message == 'user: no user named "no-such-user-pp"'


def test_nobody_but_an_administrator_names_another_user() -> None:
    with pytest.raises(ProcpoolError) as err:
        job_user(spec("daemon"), NOBODY, Authority())
    assert err.value.code == ErrorCode.PERMISSION_DENIED
    assert "only root or an administrator may run a job as another user" in err.value.message
    assert err.value.hint


def test_naming_yourself_is_the_same_as_naming_nobody() -> None:
    assert job_user(spec("nobody"), NOBODY, Authority()) == job_user(spec(), NOBODY, Authority())


@pytest.mark.skipif(not can_switch_users(), reason="a daemon that cannot switch users")
def test_root_and_the_admin_group_may_name_another_user() -> None:
    assert job_user(spec("daemon"), 0, Authority()) == DAEMON_USER
    assert job_user(spec(), NOBODY, Authority()) == NOBODY
    group = pwd.getpwuid(NOBODY).pw_gid  # nobody's own primary group makes nobody an administrator
    admin = Authority(grp.getgrgid(group).gr_name)
    assert job_user(spec("daemon"), NOBODY, admin) == DAEMON_USER


def test_a_daemon_that_cannot_switch_users_refuses_another_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, stand in for a daemon without CAP_SETUID (the decision reads can_switch_users()).
    monkeypatch.setattr("procpoold.scheduler.submission.can_switch_users", lambda: False)
    with pytest.raises(ProcpoolError) as err:
        job_user(spec("daemon"), os.geteuid(), Authority())
    assert "cannot run jobs as another user" in err.value.message


@pytest.mark.skipif(not can_switch_users(), reason="a daemon that cannot switch users")
def test_a_stored_job_without_run_as_uid_runs_as_its_submitter_not_as_root() -> None:
    """A job stored by a daemon that could not switch users (run_as_uid None) never runs as root
    once the daemon can: it runs as whoever submitted it."""
    job = Job("1", spec(), {"root": {"cmd": ["true"]}}, 0.0, submitter_uid=NOBODY, run_as_uid=None)
    who = Scheduler._run_as(job)
    assert who is not None and who.uid == NOBODY
    own = Job("2", spec(), {"root": {"cmd": ["true"]}}, 0.0, submitter_uid=os.geteuid(), run_as_uid=None)
    assert Scheduler._run_as(own) is None  # the daemon's own user: nothing to switch
