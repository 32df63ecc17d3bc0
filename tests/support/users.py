"""Throwaway users and groups for tests that need another uid (root only; always removed).

Created with ``useradd``/``groupadd`` as root and always removed (``userdel``/``groupdel``) in a
``finally``; a test that is not root skips. Names are short and random, so parallel runs do not
collide, and no home folder is created (a task of such a user starts in ``/``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from procpoold.identity import Identity, identity_of


@dataclass(frozen=True)
class User:
    name: str
    uid: int


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (creates users with useradd)")


@contextmanager
def throwaway(
    users: dict[str, list[str]], groups: list[str]
) -> Iterator[tuple[dict[str, User], dict[str, str]]]:
    """Create ``groups`` and ``users`` (label -> labels of the groups they join); yield
    ({label: User}, {group label: group name}); remove them all afterwards, whatever happened."""
    need_root()
    suffix = uuid.uuid4().hex[:6]
    group_names = {g: f"pp{g[:6]}{suffix}" for g in groups}
    made_groups: list[str] = []
    made_users: list[str] = []
    try:
        for name in group_names.values():
            subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=60)
            made_groups.append(name)
        created: dict[str, User] = {}
        for label, joins in users.items():
            name = f"pp{label[:6]}{suffix}"
            cmd = [
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--home-dir",
                "/nonexistent",
            ]
            if joins:
                cmd += ["--groups", ",".join(group_names[g] for g in joins)]
            subprocess.run([*cmd, name], check=True, capture_output=True, timeout=60)
            made_users.append(name)
            created[label] = User(name, pwd.getpwnam(name).pw_uid)
        identity_of.cache_clear()  # a uid freed by an earlier run may be cached under its old name
        yield created, group_names
    finally:
        for name in made_users:
            subprocess.run(["userdel", "--force", name], capture_output=True, timeout=60)
        for name in made_groups:
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)
        identity_of.cache_clear()


def run_as(
    user: str, *cmd: str, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``user`` with that user's groups (runuser sets them as a login would)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", *cmd],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": "/nonexistent"},
    )


def procctl_as(
    user: str, socket: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real procctl, run as ``user`` against ``socket``."""
    return run_as(user, sys.executable, "-m", "procpool.cli", "--socket", socket, *args, input=input)


#: A module of task functions for per-user tests (``ppwho:<name>``), written by :func:`probe_folder`.
WHO_PROBE = """
import os

def who():
    return [os.getuid(), os.getgid(), sorted(os.getgroups()), os.environ.get("HOME"),
            os.environ.get("USER"), os.getcwd(), os.getpid()]

def become_root():
    os.setuid(0)
    return "root again"

def read(path):
    with open(path, "rb") as f:
        return f.read()

def echo(value):
    return value

def big(n):
    return b"r" * n
"""


@contextmanager
def probe_folder() -> Iterator[Path]:
    """A folder every user may read (0755, root's) holding the module ``ppwho``; removed after."""
    path = Path(tempfile.mkdtemp(prefix="ppusr-", dir="/tmp"))
    try:
        path.chmod(0o755)
        (path / "ppwho.py").write_text(WHO_PROBE)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class ThrowawayUsers:
    """The users made for one test, and the group they share."""

    users: tuple[Identity, ...]
    group: str
    gid: int


@contextmanager
def throwaway_users(count: int = 2) -> Iterator[ThrowawayUsers]:
    """``count`` new users, each with a private group, all members of one shared group."""
    labels = [chr(ord("a") + i) for i in range(count)]
    with throwaway({label: ["shared"] for label in labels}, ["shared"]) as (made, groups):
        users = tuple(identity_of(made[label].uid) for label in labels)
        yield ThrowawayUsers(users, groups["shared"], grp.getgrnam(groups["shared"]).gr_gid)
