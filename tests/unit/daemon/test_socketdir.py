"""The daemon's check of its socket folder (procpoold.control.socketdir), on folders of this test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from procpoold.control.socketdir import unsafe_socket_folder


def test_a_private_folder_is_safe_and_a_writable_or_shared_one_is_not(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o750)
    assert unsafe_socket_folder(folder) is None
    os.chmod(folder, 0o770)
    assert (
        unsafe_socket_folder(folder)
        == f"{folder} is writable by others (mode 0770), who could replace the socket"
    )
    os.chmod(folder, 0o1777)
    assert unsafe_socket_folder(folder) == (
        "it is a shared folder (mode 1777): anyone could take the socket's name while the daemon is down"
    )
    # Sticky above the socket's own folder is fine (as /tmp is); writable without it is not.
    inner = folder / "mine"
    inner.mkdir(mode=0o750)
    assert unsafe_socket_folder(inner) is None
    os.chmod(folder, 0o777)
    assert f"{folder} (above {inner}) is writable by others" in (unsafe_socket_folder(inner) or "")


def test_a_folder_of_another_user_is_not_safe(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o750)
    os.chown(folder, 4_000_001, -1)  # a uid with no name: neither root nor us
    assert unsafe_socket_folder(folder) == f"{folder} belongs to uid 4000001, who could replace the socket"
    assert unsafe_socket_folder(folder, uid=4_000_001) is None  # a daemon running as that uid
