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


def test_a_symlink_another_user_planted_for_the_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Another user's symlink in a shared folder (where a non-root daemon's default folder lives)
    pointing at a folder of the daemon's user: the daemon neither binds through it (its owner could
    repoint it) nor changes the mode of what it points to."""
    if os.geteuid() != 0:
        pytest.skip("needs root (gives a symlink to another uid)")
    from procpoold.control.server import BindError, prepare_socket_dir

    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    link = shared / "procpoold-0"
    os.symlink(target, link)
    os.lchown(link, 4_000_001, 4_000_001)
    assert unsafe_socket_folder(link) == f"{link} belongs to uid 4000001, who could replace the socket"
    # "link/.." is the parent of the link's target, as the kernel resolves it: the link is on the way.
    (target / "sub").mkdir()
    sub_link = shared / "sub"
    os.symlink(target / "sub", sub_link)
    os.lchown(sub_link, 4_000_001, 4_000_001)
    assert unsafe_socket_folder(Path(f"{sub_link}/..")) == (
        f"{sub_link} belongs to uid 4000001, who could replace the socket"
    )
    with pytest.raises(BindError, match="belongs to uid 4000001"):
        prepare_socket_dir(link / "control.sock", None)
    assert os.stat(target).st_mode & 0o7777 == 0o755
