"""Is a folder safe to import from, or to run in, on another user's behalf?

A module planted in a folder that others may write runs as whoever imports it: a job that names
``/tmp/lib`` in its ``python_path``, or runs in a folder anyone may rename, hands its user's
rights to anyone on the machine. The rules, checked on the resolved path (symlinks followed):

* every existing ancestor must not be writable by others unless the sticky bit protects its
  entries (``/tmp`` is fine as an ancestor: nobody can rename another user's folder in it);
* a ``python_path`` entry itself must not be writable by others at all (sticky or not, anyone
  could add a module to it) and must be owned by root or by the user the task runs as (a folder
  someone else created in ``/tmp`` is theirs to fill);
* a ``cwd`` may itself be a sticky shared folder such as ``/tmp``.

A path that does not exist yet passes (the import or the ``chdir`` fails on its own, with its own
message); its existing ancestors are still checked, and for a ``python_path`` entry the nearest
one must be one that only root or the user may create entries in (else someone else could create
the entry after the check). Pure functions of the file system; called on
the daemon's loop thread at submission and again by the executor when the attempt starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable


def unsafe_folder(path: str, *, imports: bool, owner_uid: int | None = None) -> str | None:
    """Why ``path`` is unsafe (one short sentence), or None when it is safe.

    ``imports``: the folder goes on ``sys.path`` (stricter, see the module docstring).
    ``owner_uid``: the uid the task runs as (None: this process's), for the ownership rule.

    Every call looks at the file system again (nothing is cached: a folder may be made unsafe at
    any time). A normalized path without symlinks costs one ``lstat`` per component; otherwise
    the path is resolved first (``realpath``) and each folder of the result is looked at.
    """
    if "\x00" in path:
        return "contains a NUL byte"
    if not os.path.isabs(path):
        return None  # resolved against the task's cwd (checked itself); a worker checks it resolved
    uid = os.geteuid() if owner_uid is None else owner_uid
    chain = _plain_chain(path)
    if chain is None:
        real = os.path.realpath(path)
        chain = [(folder, _stat(folder)) for folder in _self_and_ancestors(real)]
    else:
        real = path
    missing = False
    for folder, st in chain:
        if st is None:
            missing = True
            continue  # not there (yet): the import or chdir reports it
        if not stat.S_ISDIR(st.st_mode):
            continue
        others_write = bool(st.st_mode & stat.S_IWOTH)
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if missing and imports:
            # The nearest folder that exists: whoever may create entries in it may create the
            # missing one, and fill it with modules, after this check.
            missing = False
            if others_write:
                return f"{_short(real)} does not exist, and anyone may create it in {_short(folder)}"
            if st.st_uid not in (0, uid):
                return (f"{_short(real)} does not exist, and uid {st.st_uid} may create it in "
                        f"{_short(folder)}")
        if folder == real:
            if imports and others_write:
                return f"{_short(real)} is writable by every user, so anyone could plant a module in it"
            if imports and st.st_uid not in (0, uid):
                return f"{_short(real)} belongs to uid {st.st_uid}, who could plant a module in it"
            if others_write and not sticky:
                return f"{_short(real)} is writable by every user and not sticky"
        elif others_write and not sticky:
            return f"{_short(folder)} (above {_short(real)}) is writable by every user and not sticky"
    return None


def _stat(folder: str) -> os.stat_result | None:
    try:
        return os.stat(folder)
    except OSError:
        return None


def _plain_chain(path: str) -> list[tuple[str, os.stat_result | None]] | None:
    """``path`` and its ancestors with their ``lstat`` (None: not there), deepest first, when
    ``path`` is normalized and none of its existing components is a symlink: then it is its own
    real path and these are what ``stat`` of each would say. None otherwise (resolve it first).

    Looked at from the root down: below a component that is missing or not a folder nothing
    exists, as ``stat`` would say of each.
    """
    if path != os.path.normpath(path) or path.startswith("//"):
        return None
    chain = _self_and_ancestors(path)
    out: list[tuple[str, os.stat_result | None]] = []
    gone = False
    for folder in reversed(chain):
        st: os.stat_result | None = None
        if not gone:
            try:
                st = os.lstat(folder)
            except OSError:
                gone = True
            else:
                if stat.S_ISLNK(st.st_mode):
                    return None
                gone = not stat.S_ISDIR(st.st_mode)
        out.append((folder, st))
    out.reverse()
    return out


def check_folders(
    paths: Iterable[str], *, imports: bool, owner_uid: int | None = None, what: str
) -> str | None:
    """The first problem among ``paths`` as ``"<what>[i] ...: reason"``, or None."""
    for i, path in enumerate(paths):
        problem = unsafe_folder(path, imports=imports, owner_uid=owner_uid)
        if problem is not None:
            return f"{what}[{i}]: {problem}"
    return None


def _self_and_ancestors(path: str) -> list[str]:
    out = [path]
    while True:
        parent = os.path.dirname(out[-1])
        if parent == out[-1]:
            return out
        out.append(parent)


def _short(path: str, limit: int = 120) -> str:
    return repr(path if len(path) <= limit else path[: limit - 3] + "...")
