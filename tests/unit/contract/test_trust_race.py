"""The client's trust check when the path changes under it: a component that was missing when the
path was checked and appears (someone else's) before the listener is probed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from procpool import trust

MALLORY = 4_000_321  # an untrusted uid (no password entry needed: only the owner of a symlink)


def test_a_symlink_planted_between_the_path_check_and_the_probe_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (gives a symlink to another uid)")
    os.chmod(tmp_path, 0o755)
    real = tmp_path / "real"  # the trusted daemon's folder
    real.mkdir(mode=0o755)
    shared = tmp_path / "shared"  # a shared sticky folder such as /tmp
    shared.mkdir()
    os.chmod(shared, 0o1777)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(real / "control.sock"))
    server.listen(1)
    link = shared / "procpoold"
    probe = trust.probe

    def racing_probe(path: Path) -> trust.Listener | None:
        # Mallory wins the race: her symlink to the real daemon appears after the path check, so
        # the probe finds a trusted listener; she may repoint it before ZeroMQ connects.
        os.symlink(real, link)
        os.lchown(link, MALLORY, MALLORY)
        return probe(path)

    monkeypatch.setattr(trust, "probe", racing_probe)
    try:
        with pytest.raises(trust.UntrustedSocket, match="belongs to uid 4000321"):
            trust.check(link / "control.sock", frozenset({0}))
    finally:
        server.close()


def test_dot_dot_after_a_symlink_is_followed_as_the_kernel_does(tmp_path: Path) -> None:
    """``link/..`` is the parent of the link's target, not the folder holding the link: the check
    must judge the folders the connection goes through, not the path with ``..`` cut out of it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (gives a folder to another uid)")
    os.chmod(tmp_path, 0o755)
    evil = tmp_path / "evil"
    (evil / "sub").mkdir(parents=True)
    os.chown(evil, MALLORY, MALLORY)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.symlink(evil / "sub", mine / "link")
    problem = trust.unsafe_path(Path(f"{mine}/link/../control.sock"), frozenset({0}))
    assert problem == f"{evil} belongs to uid 4000321, who could replace the socket"


def test_an_absolute_path_is_checked_from_a_folder_that_was_removed(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    here = os.getcwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        assert trust.unsafe_path(tmp_path / "control.sock", frozenset({0, os.geteuid()})) is None
    finally:
        os.chdir(here)
