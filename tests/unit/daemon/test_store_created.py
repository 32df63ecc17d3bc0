"""A fresh state directory logs one line, the store created at the current schema (it logged
every migration from 0 as if an old store were upgraded); an older store logs each migration."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from procpoold.store.sqlite import MIGRATIONS, SCHEMA_VERSION, StateStore

pytestmark = pytest.mark.unit


def test_a_new_store_is_logged_as_created_not_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="procpoold.store"):
        StateStore(tmp_path / "new.db").close()
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert infos == [f"created state file {tmp_path / 'new.db'} at schema {SCHEMA_VERSION}"]
    # An existing store of an older schema is migrated, and says so, step by step.
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    step = MIGRATIONS[0]
    assert isinstance(step, str)
    db.executescript(step)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.commit()
    db.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="procpoold.store"):
        StateStore(old).close()
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    steps = range(1, SCHEMA_VERSION)
    assert infos == [f"migrating state file {old} from schema {v} to {v + 1}" for v in steps]
