"""The state folder and file are the daemon's user's alone (procpoold.store.sqlite.make_private)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from procpoold.store.sqlite import StateStore, StoreError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_store_is_private(tmp_path: Path) -> None:
    db = tmp_path / "new" / "state.db"
    old = os.umask(0o022)  # outside systemd the umask is usually this wide
    try:
        store = StateStore(db)
    finally:
        os.umask(old)
    try:
        assert mode(db.parent) == 0o700
        assert mode(db) == 0o600
        for extra in ("-wal", "-shm"):
            if Path(f"{db}{extra}").exists():
                assert mode(Path(f"{db}{extra}")) == 0o600
        assert mode(db.with_name("state.log.00000001")) == 0o600  # the write-ahead log's segment
    finally:
        store.close()


def test_an_existing_readable_file_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    StateStore(db).close()
    assert mode(db) == 0o600


def test_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(StoreError, match="writable by nobody else"):
        StateStore(folder / "state.db")
    assert not (folder / "state.db").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder away")
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(StoreError, match="must belong to procpoold's user"):
        StateStore(folder / "state.db")
