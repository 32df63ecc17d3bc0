"""Throwaway users and groups for tests that need another uid (root only; always removed)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


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
            subprocess.run(["groupadd", name], check=True, capture_output=True)
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
            subprocess.run([*cmd, name], check=True, capture_output=True)
            made_users.append(name)
            created[label] = User(name, pwd.getpwnam(name).pw_uid)
        yield created, group_names
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], capture_output=True)
        for name in made_groups:
            subprocess.run(["groupdel", name], capture_output=True)


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
