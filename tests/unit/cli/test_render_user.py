"""procctl shows each job's user."""

from __future__ import annotations

from procpool.cli import render


def test_the_user_column_and_the_job_header() -> None:
    job = {"id": "3", "name": "n", "user": "alice", "uid": 1000, "state": "running", "run": 1, "tasks": 1,
           "counts": {}, "created_at": 0.0}
    assert render.user(job) == "alice (1000)"
    assert render.user({**job, "user": "1000"}) == "1000"
    assert render.user({**job, "uid": None, "user": None}) == "-"
    table = render.job_table([job], now=10.0).splitlines()
    assert table[0].split() == ["ID", "NAME", "USER", "STATE", "TASKS", "START", "END", "DURATION"]
    assert "alice (1000)" in table[1]
