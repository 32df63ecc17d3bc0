"""Who a request comes from, who a job runs as, and who is an administrator.

Runs on the daemon's loop thread (the lookups read the password and group databases, which is
cheap for local files; results are cached per uid for at most ``IDENTITY_TTL`` seconds, so a user
removed from a group (or from ``admin_group``), or a uid given to a new user, is seen without a
restart, the way ``atd`` and ``cron`` read a user's groups when a job starts).

The model is that of the system daemons that run other people's work (atd, cron, Slurm) and of
systemd's own manager API:

* a job runs as its submitter (uid, primary gid and supplementary groups), so being allowed to
  submit grants nothing the user does not already have;
* reads are open to whoever may connect; changing a job needs its owner or an administrator;
* administrators are root, the daemon's own user, and members of ``admin_group``.

When the daemon cannot change uid (it is not root), every task runs as the daemon's user: see
:func:`can_switch_users`.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from dataclasses import dataclass
from functools import lru_cache

#: Seconds a user's identity (name, groups) is reused before the databases are read again.
IDENTITY_TTL = 60.0


@dataclass(frozen=True, slots=True)
class Identity:
    """A user as a task runs as them: uid, primary gid, supplementary groups, name and home."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str


class UnknownUser(LookupError):
    """No such user in the password database."""


class _Identities:
    """``identity_of(uid)``: the identity of ``uid``, read again once ``IDENTITY_TTL`` has passed.

    A uid with no password entry runs with its own gid and no groups. Raises
    :class:`UnknownUser` only for negative uids: an unnamed uid (a container's) is still a real
    principal that the kernel vouched for.
    """

    def __call__(self, uid: int) -> Identity:
        return _lookup(uid, int(time.monotonic() // IDENTITY_TTL))

    def cache_clear(self) -> None:
        _lookup.cache_clear()


identity_of = _Identities()


@lru_cache(maxsize=4096)
def _lookup(uid: int, _period: int) -> Identity:
    """The identity of ``uid`` as read in the period ``_period`` (older periods age out)."""
    if uid < 0:
        raise UnknownUser(f"no user with uid {uid}")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Identity(uid, uid, (uid,), str(uid), "/")
    return Identity(uid, entry.pw_gid, _groups(entry.pw_name, entry.pw_gid), entry.pw_name, entry.pw_dir)


def identity_by_name(name: str) -> Identity:
    """The identity of the user called ``name`` (raises :class:`UnknownUser`)."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: an embedded NUL byte
        raise UnknownUser(f"no user named {name!r}") from None
    return identity_of(entry.pw_uid)


def user_name(uid: int | None) -> str | None:
    """The name of ``uid`` (its number as text when it has none); None for None."""
    if uid is None:
        return None
    try:
        return identity_of(uid).name
    except UnknownUser:
        return str(uid)


def _groups(name: str, gid: int) -> tuple[int, ...]:
    try:
        return tuple(sorted(set(os.getgrouplist(name, gid))))
    except OSError:  # pragma: no cover - a broken NSS setup
        return (gid,)


def can_switch_users() -> bool:
    """True when this process may run tasks as other users (it is root, or holds CAP_SETUID and
    CAP_SETGID in its effective set)."""
    if os.geteuid() == 0:
        return True
    return _has_caps(6, 7)  # CAP_SETGID, CAP_SETUID


def _has_caps(*caps: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
                    return all(eff & (1 << c) for c in caps)
    except OSError:  # pragma: no cover - /proc not mounted
        return False
    return False  # pragma: no cover


def run_as_uid(submitter_uid: int | None) -> int | None:
    """The uid a job submitted by ``submitter_uid`` runs as: its submitter when this daemon can
    switch users, else None (the daemon's own user)."""
    if submitter_uid is None or not can_switch_users():
        return None
    return submitter_uid


class Authority:
    """Decides who is an administrator. Cheap: called for every request that changes something."""

    def __init__(self, admin_group: str | None = None) -> None:
        self.admin_group = admin_group
        self._admin_gid: int | None = None
        if admin_group is not None:
            self._admin_gid = grp.getgrnam(admin_group).gr_gid

    def is_admin(self, uid: int | None) -> bool:
        """Root, the daemon's own user, or a member of ``admin_group`` (primary or supplementary)."""
        if uid is None:
            return False
        if uid == 0 or uid == os.geteuid():
            return True
        if self._admin_gid is None:
            return False
        try:
            return self._admin_gid in identity_of(uid).groups
        except UnknownUser:
            return False
