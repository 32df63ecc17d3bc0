"""The state directory's lock (procpoold.store.lock): one daemon per directory, and a lock file
that nobody else can point elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from procpoold.store.lock import LOCK_NAME, StateLock, StateLocked
from procpoold.store.sqlite import StoreError

pytestmark = pytest.mark.unit


def test_a_second_lock_on_the_same_directory_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    first = StateLock.acquire(tmp_path / "state", "/run/a.sock")
    try:
        with pytest.raises(StateLocked, match=rf"pid {os.getpid()}, socket /run/a.sock"):
            StateLock.acquire(tmp_path / "state", "/run/b.sock")
    finally:
        first.release()
    StateLock.acquire(tmp_path / "state", "/run/b.sock").release()  # released: free again


def test_a_lock_file_planted_in_a_folder_others_may_write_is_never_written(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as a folder under /tmp that someone else made first
    (shared / LOCK_NAME).symlink_to(victim)
    with pytest.raises(StoreError, match="writable by nobody else"):
        StateLock.acquire(shared, "/run/a.sock")
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / LOCK_NAME).symlink_to(victim)
    with pytest.raises(StoreError, match="lock file"):
        StateLock.acquire(state, "/run/a.sock")
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_cannot_be_made_on_a_full_disk_says_so_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from procpoold.store import lock

    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.os, "open", full)
    with pytest.raises(StoreError, match="the disk is full") as caught:
        StateLock.acquire(tmp_path / "state", "/run/a.sock")
    assert caught.value.hint is not None and caught.value.hint.startswith("free space on the file system of")
