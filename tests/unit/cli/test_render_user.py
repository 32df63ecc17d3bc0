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


def test_a_jobs_head_names_a_few_cycling_nodes_and_counts_the_others() -> None:
    cycles = [{"kind": "task", "index": i, "name": f"t{i}", "cycle": 2, "repeat": 3, "next_cycle_at": None}
              for i in range(1_000)]
    job = {"id": "3", "name": "n", "user": "alice", "uid": 1000, "state": "running", "run": 1,
           "repeat": 1, "tasks": 1_200, "counts": {}, "created_at": 0.0, "started_at": 0.0,
           "cycles": cycles, "cycles_total": 1_200}
    [line] = [x for x in render._job_head(job, now=10.0) if x.startswith("  cycles: ")]
    assert line == ("  cycles: task t0 cycle 2/3; task t1 cycle 2/3; task t2 cycle 2/3; task t3 cycle 2/3; "
                    "task t4 cycle 2/3; and 1195 more")
