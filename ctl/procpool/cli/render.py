"""Text rendering of replies: pure functions of reply data (no I/O)."""

from __future__ import annotations

from typing import Any


def duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary(data: dict[str, Any]) -> str:
    """The daemon summary of ``procctl status``."""
    workers = data.get("workers", {})
    jobs = data.get("jobs", {}).get("by_state", {})
    lines = [
        f"procpoold {data['version']}  pid {data['pid']}  up {duration(data.get('uptime'))}",
        f"socket   {data.get('socket', '-')}",
        "workers  " + ", ".join(f"{k} {v}" for k, v in sorted(workers.items())),
        "jobs     " + (", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"),
    ]
    return "\n".join(lines)
