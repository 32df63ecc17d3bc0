"""The daemon's pause (``procctl pause --all``) and its queues' settings (``procctl queue set``,
``procctl pause --queue``), kept across restarts in the state directory.

One small JSON file, ``paused.json``, present while the daemon is paused: who paused it and when
(``{"by", "uid", "at", "stop"}``). It is written (fsynced, then renamed into place) before the
``pause`` reply and removed before the ``resume`` reply, so a restart comes back paused exactly
when the last answer said it was. A file that cannot be read keeps the daemon paused (the safe
side: nothing starts that an administrator held back) and is logged.

``queues.json`` holds what was changed at run time of each named queue: ``{"queues": {NAME:
{"parallel": N or null, "paused": a pause record or null}}}``, written the same way before the
reply. A parallelism set at run time wins over the config's ``[queues]``. A file that cannot be
read is logged and ignored (the config's queues apply, none paused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from procpool.contract.limits import LOCK_NAME_RE, MAX_PARALLEL_MAX

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
        record = _pause_record(json.loads(data))
        if record is None:
            raise ValueError("not a pause record")
    except ValueError as exc:
        log.error("%s is malformed (%s): the daemon stays paused; procctl resume --all ends it", path, exc)
        return {"by": "an unreadable record", "uid": None, "at": time.time(), "stop": False}
    return record


def _pause_record(record: Any) -> dict[str, Any] | None:
    """A stored pause (``{"by", "uid", "at", "stop"}``, the daemon's or a queue's) with each field
    of its type, or None when it is not one (no finite time ``at``)."""
    if not isinstance(record, dict):
        return None
    at, uid = record.get("at"), record.get("uid")
    if not (isinstance(at, (int, float)) and math.isfinite(at)):
        return None
    return {"by": str(record.get("by", "?"))[:128], "uid": uid if type(uid) is int else None,
            "at": float(at), "stop": bool(record.get("stop"))}


def save(state_dir: Path, record: dict[str, Any] | None) -> None:
    """Store the pause (None: remove it), durably; raises OSError if it cannot."""
    if record is None:
        remove(state_dir, NAME)
        return
    write(state_dir, NAME, {k: record.get(k) for k in ("by", "uid", "at", "stop")})


def remove(state_dir: Path, name: str) -> None:
    """Remove ``name`` from the state directory, durably (nothing if it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / name)
        _sync_dir(state_dir)


def write(state_dir: Path, name: str, data: Any) -> None:
    """Write ``data`` as JSON to ``name`` in the state directory, durably (fsynced, then renamed
    into place); raises OSError if it cannot."""
    path = state_dir / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(state_dir)


QUEUES = "queues.json"


def load_queues(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The queues' settings changed at run time: name -> {"parallel": int | None, "paused": record
    | None}; {} when there are none or the file cannot be read (logged)."""
    path = state_dir / QUEUES
    try:
        raw = json.loads(path.read_bytes())
        queues = raw["queues"]
        if not isinstance(queues, dict):
            raise ValueError("not a queues record")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("cannot read %s (%s): the config's [queues] apply, none paused", path, exc)
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in queues.items():
        if not (isinstance(name, str) and LOCK_NAME_RE.fullmatch(name) and isinstance(entry, dict)):
            log.error("%s: ignored a malformed entry %.80r", path, name)
            continue
        parallel = entry.get("parallel")
        if not (type(parallel) is int and 1 <= parallel <= MAX_PARALLEL_MAX):
            parallel = None
        paused = _pause_record(entry.get("paused"))
        if parallel is not None or paused is not None:
            out[name] = {"parallel": parallel, "paused": paused}
    return out


def save_queues(state_dir: Path, queues: dict[str, dict[str, Any]]) -> None:
    """Store the queues' settings changed at run time, durably; raises OSError if it cannot."""
    if not queues:
        remove(state_dir, QUEUES)
        return
    write(state_dir, QUEUES, {"queues": queues})


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
