"""A user's identity (name, groups) is cached only for a while: a user removed from a group (the
admin group among them), or a uid given to a new user, is seen without restarting the daemon."""

from __future__ import annotations

import os
import pwd

import pytest

from procpoold import identity
from procpoold.identity import IDENTITY_TTL, identity_of

pytestmark = pytest.mark.unit


def test_a_users_groups_are_read_again_once_the_cache_has_aged(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.geteuid()
    try:
        pwd.getpwuid(me)
    except KeyError:
        pytest.skip("the test's user has no password entry")
    identity_of.cache_clear()
    first = identity_of(me)
    monkeypatch.setattr(identity.os, "getgrouplist", lambda _name, gid: [gid, 424242])
    assert identity_of(me).groups == first.groups  # cached
    start = identity.time.monotonic()
    monkeypatch.setattr(identity.time, "monotonic", lambda: start + IDENTITY_TTL + 1)
    assert 424242 in identity_of(me).groups
    monkeypatch.undo()
    identity_of.cache_clear()
