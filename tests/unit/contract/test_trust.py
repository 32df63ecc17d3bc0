"""The client's check of a socket's path and listener (procpool.trust), on folders of this test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from procpool import trust


def test_trusted_uids_are_root_me_the_service_user_and_what_is_given() -> None:
    uids = trust.trusted_uids([4_000_123], env={trust.TRUST_ENV: "4000124, root"})
    assert {0, os.geteuid(), 4_000_123, 4_000_124} <= uids
    with pytest.raises(ValueError, match="no user named"):
        trust.trusted_uids(env={trust.TRUST_ENV: "no-such-user-here"})


def test_a_folder_others_may_write_is_unsafe_unless_sticky(tmp_path: Path) -> None:
    mine = frozenset({0, os.geteuid()})
    folder = tmp_path / "run"
    folder.mkdir()
    sock = folder / "control.sock"
    assert trust.unsafe_path(sock, mine) is None  # missing socket: no problem here
    os.chmod(folder, 0o777)
    assert trust.unsafe_path(sock, mine) == (
        f"{folder} is writable by others (mode 0777), who could replace the socket"
    )
    os.chmod(folder, 0o1777)  # sticky: others cannot rename what is not theirs
    assert trust.unsafe_path(sock, mine) is None


def test_a_folder_of_an_untrusted_owner_is_unsafe(tmp_path: Path) -> None:
    owner = os.stat(tmp_path).st_uid
    problem = trust.unsafe_path(tmp_path / "x.sock", frozenset({owner + 1}) if owner else frozenset({1}))
    assert problem is not None and "who could replace the socket" in problem


def test_probe_reads_the_listeners_credentials(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    assert trust.probe(path) is None
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(os.fspath(path))
        server.listen(1)
        listener = trust.probe(path)
        assert listener == trust.Listener(os.getpid(), os.geteuid(), os.getegid())
        assert trust.check(path, frozenset({0, os.geteuid()})) == listener
    finally:
        server.close()
