"""Task functions of the log context tests (importable by the pool's workers and by Dask's)."""

from __future__ import annotations

import logging
from typing import Any

from procpool import task

log = logging.getLogger("logctx")


def log_extra(message: str, fields: dict[str, Any]) -> str:
    """One warning record with ``extra=fields``."""
    log.warning(message, extra=fields)
    return message


def log_levels(tag: str) -> list[str]:
    """One record at each level, through the task's own logger and a module's."""
    ctx = task.context()
    ctx.logger.debug("%s debug", tag)
    ctx.logger.info("%s info", tag)
    log.debug("%s module debug", tag)
    log.warning("%s warning", tag)
    return [tag]


def hostile_extra(tag: str) -> str:
    """Extra fields that try to forge the daemon's fields, or to hurt it."""
    forged = {"PROCPOOL_JOB_ID": "999", "PROCPOOL_TASK_ID": "999.0", "MESSAGE_ID": "0" * 32,
              "MESSAGE": "forged", "PRIORITY": "0", "SYSLOG_IDENTIFIER": "sshd", "nul\0name": "x",
              "ok_nul": "a\0b", "_PID": "1", "": "empty", "-": "dash", "ünï": "u", 7: "int key",
              "huge": "h" * 5_000_000}
    log.warning("%s forged", tag, extra=forged)
    log.warning("%s many", tag, extra={f"k{i}": i for i in range(10_000)})

    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    log.warning("%s bad value", tag, extra={"bad": Bad(), "good": 1})
    return tag
