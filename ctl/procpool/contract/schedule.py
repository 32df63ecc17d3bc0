"""When a job's runs start: a cron ``schedule`` in a time zone, or an ``every`` interval.

Both sides use it: the tree parser checks a job's ``schedule`` and ``timezone`` (``procctl
validate`` says what is wrong before the daemon sees the job), and the daemon computes each
run's start time. Cron syntax is parsed by ``croniter`` (the five-field Vixie cron syntax with
its usual extensions, such as ``*/5``, ``MON-FRI`` and ``@daily``), imported on first use: a job
without a schedule never loads it. Zones are IANA names read by :mod:`zoneinfo`.

Times are wall-clock seconds (``time.time()``), as every time a job shows.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: What a daemon that was down does about the runs whose time passed meanwhile.
Missed = Literal["run_once", "skip"]
MISSED_POLICIES: tuple[Missed, ...] = ("run_once", "skip")
#: The longest cron expression accepted (a real one is a few dozen characters).
CRON_MAX_CHARS = 256
_ZONE_HINT = 'use an IANA name such as "Europe/Paris" or "UTC"'


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be used; the message says why."""


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``UTC``, ``Europe/Paris``); raises ScheduleError."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name or "\0" in name:
        raise ScheduleError(f"unknown time zone {name[:64]!r}; {_ZONE_HINT}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {name!r}; {_ZONE_HINT}") from None


def check_cron(expression: str) -> None:
    """Raise ScheduleError unless ``expression`` is a cron schedule croniter can iterate."""
    if len(expression) > CRON_MAX_CHARS:
        raise ScheduleError(f"is {len(expression)} characters, the most allowed is {CRON_MAX_CHARS}")
    if len(expression.split()) not in (1, 5):
        raise ScheduleError(
            f"{expression!r} is not a cron schedule: five fields (minute hour day-of-month month "
            "day-of-week, e.g. \"*/15 * * * *\") or a nickname such as \"@daily\""
        )
    next_time(expression, "UTC", 0.0)


def next_time(expression: str, timezone: str, after: float) -> float:
    """The first time strictly after ``after`` (seconds since the epoch) that ``expression``
    names, read in ``timezone``; raises ScheduleError for an expression croniter refuses or
    one that names no time (``0 0 30 2 *``: February 30th)."""
    from croniter import CroniterError, croniter  # type: ignore[import-untyped]  # (on first use)

    start = datetime.fromtimestamp(after, zone(timezone))
    try:
        found: Any = croniter(expression, start).get_next(float)
    except CroniterError as exc:
        raise ScheduleError(f"{expression!r} is not a cron schedule: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:  # croniter's own checks let some through
        raise ScheduleError(f"{expression!r} is not a cron schedule: {exc}") from None
    return float(found)


def next_interval(every: float, last: float, now: float, missed: Missed) -> float:
    """The start of the next run of an ``every`` job whose previous slot was ``last``
    (its end, or its planned start): ``last + every``, unless that is past at ``now`` (the daemon
    was down) and ``missed`` is ``skip``: then the first slot of that cadence after ``now``."""
    due = last + every
    if due >= now or missed == "run_once" or every <= 0:
        return due
    skipped = int((now - last) // every)
    return last + (skipped + 1) * every
