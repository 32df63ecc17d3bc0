"""Memory follows unfinished work, not history: a daemon with many finished jobs in its store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "finished_rss.py"


def test_finished_jobs_cost_little_memory(record_property: Callable[[str, object], None]) -> None:
    """RSS of a daemon started on 10,000 finished jobs, against one on an empty store.

    Kept whole in memory they cost about 5.8 KiB each (+291 MiB for 50,000, see docs/state.md);
    served from the store, their index entries cost well under 1 KiB each.
    """
    run = subprocess.run([sys.executable, str(BENCH), "--jobs", "10000"], capture_output=True, text=True,
                         timeout=600, check=True)
    figures = json.loads(run.stdout)
    print(f"\nRSS with 10,000 finished jobs: {figures}")
    record_property("finished_jobs_rss", figures)
    assert figures["growth_mib"] < 15, figures  # generous: about 4 MiB measured
