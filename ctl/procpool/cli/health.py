"""``procctl health``: the daemon's verdict (healthy, degraded, unhealthy) with its reasons.

The verdict is computed by the daemon (procpoold.metrics_report.health, the one definition; it is
also the systemd status line's); a daemon too old to give one is judged here from its summary, as
procctl did before (procpool.cli.render.health).
"""

from __future__ import annotations

import sys

from procpool.cli.main import Settings, cli, emit, pass_settings

VERDICTS = ("healthy", "degraded", "unhealthy")


@cli.command()
@pass_settings
def health(settings: Settings) -> None:
    """Print healthy, degraded or unhealthy with the reasons; exit 0, 1 or 2.

    \b
    Unhealthy: an engine is down (say, the Dask scheduler cannot be reached), the
    log target has stalled, the state file cannot be written, or workers are
    crash-looping. Degraded: log records were dropped, the pool has fewer live
    workers than its size, more tasks are queued than [health] max_queued, or
    fewer of the last [health] success_window tasks succeeded than
    [health] min_success_rate. For monitors: 3 means the daemon did not answer.

    \b
    Examples:
      procctl health
      procctl --json health
    """
    with settings.client() as client:
        data = client.status(limit=0)
    verdict = data.get("health")
    if isinstance(verdict, dict) and verdict.get("health") in VERDICTS:
        level, reasons = VERDICTS.index(verdict["health"]), [str(r) for r in verdict.get("reasons", [])]
    else:  # a daemon from before the verdict moved there
        from procpool.cli.render import health as judge

        level, reasons = judge(data)
    emit(settings, {"health": VERDICTS[level], "reasons": reasons},
         "\n".join([VERDICTS[level], *(f"  {r}" for r in reasons)]))
    sys.exit(level)
