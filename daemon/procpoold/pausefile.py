"""The daemon's pause (``procctl pause --all``), kept across restarts in the state directory.

One small JSON file, ``paused.json``, present while the daemon is paused: who paused it and when
(``{"by", "uid", "at", "stop"}``). It is written (fsynced, then renamed into place) before the
``pause`` reply and removed before the ``resume`` reply, so a restart comes back paused exactly
when the last answer said it was. A file that cannot be read keeps the daemon paused (the safe
side: nothing starts that an administrator held back) and is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("procpoold")

NAME = "paused.json"


def load(state_dir: Path) -> dict[str, Any] | None:
    """The stored pause, or None when the daemon is not paused."""
    path = state_dir / NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read %s (%s): the daemon stays paused; procctl resume --all ends it", path, exc)
        return {"by": "an unreadable record", "uid": None, "at": time.time(), "stop": False}
    try:
        record = json.loads(data)
        if not (isinstance(record, dict) and isinstance(record.get("at"), (int, float))):
            raise ValueError("not a pause record")
    except ValueError as exc:
        log.error("%s is malformed (%s): the daemon stays paused; procctl resume --all ends it", path, exc)
        return {"by": "an unreadable record", "uid": None, "at": time.time(), "stop": False}
    uid = record.get("uid")
    return {"by": str(record.get("by", "?"))[:128], "uid": uid if type(uid) is int else None,
            "at": float(record["at"]), "stop": bool(record.get("stop"))}


def save(state_dir: Path, record: dict[str, Any] | None) -> None:
    """Store the pause (None: remove it), durably; raises OSError if it cannot."""
    path = state_dir / NAME
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            _sync_dir(state_dir)
        return
    tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({k: record.get(k) for k in ("by", "uid", "at", "stop")}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(state_dir)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
