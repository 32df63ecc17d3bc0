"""The daemon's pause in the state directory: stored, read back, removed; a bad file keeps it paused."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpoold import pausefile

pytestmark = pytest.mark.unit


def test_a_pause_is_stored_read_back_and_removed(tmp_path: Path) -> None:
    assert pausefile.load(tmp_path) is None
    record = {"by": "alice (uid 1000)", "uid": 1000, "at": 12.5, "stop": True, "stopping": 3}
    pausefile.save(tmp_path, record)
    assert pausefile.load(tmp_path) == {"by": "alice (uid 1000)", "uid": 1000, "at": 12.5, "stop": True}
    pausefile.save(tmp_path, None)
    assert pausefile.load(tmp_path) is None and not list(tmp_path.iterdir())
    pausefile.save(tmp_path, None)  # (removing what is not there is fine)


@pytest.mark.parametrize("text", ["{", "[]", '{"by": "x"}', '{"at": "noon"}', '{"at": NaN}',
                                  '{"at": Infinity}'])
def test_a_record_that_cannot_be_read_keeps_the_daemon_paused(tmp_path: Path, text: str) -> None:
    (tmp_path / pausefile.NAME).write_text(text)
    record = pausefile.load(tmp_path)
    assert record is not None and record["by"] == "an unreadable record"
