"""Finding a task's function: a job's ``python_path`` and ``pkg.module:function``.

Used where task code runs (a pool worker, the harness of a remote attempt), never in the daemon.
Light on purpose: a remote attempt's process imports it at start.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from procpoold.pathsafety import check_folders


def use_python_path(entries: list[str] | None, cwd: str | None = None) -> None:
    """Put a job's ``python_path`` in front of ``sys.path``.

    A relative entry is the attempt's ``cwd``'s (the import may run before the attempt enters it,
    and later imports would resolve it wherever the task stands); each entry is checked and used
    resolved, so a symlink pointed elsewhere later does not move the job's imports. Checked as late
    as possible, as the user the process runs as: raises PermissionError for an unsafe folder.
    """
    entries = entries or []
    if not all(os.path.isabs(entry) for entry in entries):
        base = os.path.join(os.getcwd(), cwd or "")
        entries = [os.path.join(base, entry) for entry in entries]
    entries = [os.path.realpath(entry) for entry in entries]
    new = [entry for entry in entries if entry not in sys.path]
    if new:
        problem = check_folders(new, imports=True, what="python_path")
        if problem is not None:
            raise PermissionError(problem)
    for entry in reversed(new):
        sys.path.insert(0, entry)


def resolve(call: str) -> Any:
    """The callable that ``call`` (``"package.module:function"``, or ``:Class.method``) names."""
    module_name, _, qualname = call.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"bad call {call!r}: expected 'package.module:function'")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{call!r} is not callable")
    return obj
