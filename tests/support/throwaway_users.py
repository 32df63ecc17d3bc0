"""Throwaway system users (and a group holding them) for the tests of per-user execution.

Created with ``useradd``/``groupadd`` as root and always removed (``userdel``/``groupdel``) in a
``finally``; a test that is not root skips. Names are short and random, so parallel runs do not
collide, and no home folder is created (a task of such a user starts in ``/``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from procpoold.identity import Identity, identity_of

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


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@contextmanager
def throwaway_users(count: int = 2) -> Iterator[ThrowawayUsers]:
    """``count`` new users, each with a private group, all members of one shared group."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    tag = secrets.token_hex(3)
    group = f"ppg{tag}"
    names = [f"ppu{tag}{chr(ord('a') + i)}" for i in range(count)]
    made_group = False
    made: list[str] = []
    try:
        _run("groupadd", group)
        made_group = True
        for name in names:
            _run("useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                 "--user-group", "--groups", group, name)
            made.append(name)
        identity_of.cache_clear()  # a uid freed by an earlier run may be cached under its old name
        import grp
        import pwd

        users = tuple(identity_of(pwd.getpwnam(n).pw_uid) for n in names)
        yield ThrowawayUsers(users, group, grp.getgrnam(group).gr_gid)
    finally:
        for name in made:
            subprocess.run(["userdel", "--force", name], capture_output=True, timeout=60)
        if made_group:
            subprocess.run(["groupdel", group], capture_output=True, timeout=60)
        identity_of.cache_clear()
