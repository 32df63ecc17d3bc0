"""Task functions that push a daemon's limits (imported by workers through python_path)."""

from __future__ import annotations

from procpool import task


def fill_namespace(chunk: int, times: int) -> str:
    """Set ``times`` keys of ``chunk`` bytes each; return the error that stopped it, if any."""
    ns = task.namespace()
    for i in range(times):
        try:
            ns.set(f"k{i}", "x" * chunk)
        except Exception as exc:  # the daemon's refusal, as the task sees it
            return f"stopped at {i}: {exc}"
    return "all set"
