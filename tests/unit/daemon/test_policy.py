"""The access policy: one rule per operation, applied to peers (no daemon, no sockets)."""

from __future__ import annotations

import logging
import os
import pwd
from typing import Any

import pytest

from procpool.contract.codec import Request
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.ops import OPS
from procpoold.control.policy import POLICY, Policy, Rule, check_complete
from procpoold.control.server import Peer
from procpoold.identity import Authority

ALICE = 4_000_001  # uids with no password entry: real principals with no groups but their own
BOB = 4_000_002
JOBS = {"7": ALICE, "8": None}  # job id -> submitter uid ("8": stored before uids were recorded)


def owner_of(ref: str) -> tuple[str, int | None]:
    job_id = ref.partition(".")[0].partition("/")[0]
    if job_id not in JOBS:
        raise ProcpoolError(ErrorCode.NOT_FOUND, f"no job or task {ref!r}")
    return job_id, JOBS[job_id]


def member_of_a_group() -> tuple[int, str]:
    """A real user (not root, not us) and the name of their primary group."""
    import grp

    for entry in pwd.getpwall():
        if entry.pw_uid not in (0, os.geteuid()):
            try:
                return entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_name
            except KeyError:
                continue
    pytest.skip("no user with a named primary group on this machine")


def policy(admin_group: str | None = None) -> Policy:
    return Policy(Authority(admin_group), owner_of)


def request(op: str, **args: Any) -> Request:
    return Request(1, op, args)


def peer(uid: int | None) -> Peer | None:
    return None if uid is None else Peer(uid, uid, 1234)


def denied(p: Policy, op: str, uid: int | None, **args: Any) -> str:
    with pytest.raises(ProcpoolError) as info:
        p.authorize(request(op, **args), peer(uid))
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    assert info.value.hint
    return info.value.message


def test_every_operation_has_exactly_one_rule() -> None:
    assert set(POLICY) == set(OPS)
    check_complete()
    assert {op for op, a in POLICY.items() if a.rule is Rule.READ} == {
        "ping", "status", "pool", "explain", "metrics", "queue"}
    admin = {"shutdown", "pool_resize", "queue_set"}
    assert {op for op, a in POLICY.items() if a.rule is Rule.ADMIN} == admin
    owner = {"cancel", "resume", "wait", "logs", "retry", "stop", "pause"}
    assert {op for op, a in POLICY.items() if a.rule is Rule.OWNER} == owner


@pytest.mark.parametrize("op", ["ping", "status", "pool"])
@pytest.mark.parametrize("uid", [None, BOB, ALICE, 0])
def test_reads_are_open_to_anyone_who_connects(op: str, uid: int | None) -> None:
    got = policy().authorize(request(op), peer(uid))
    assert got == peer(uid)


@pytest.mark.parametrize("op", ["cancel", "resume", "wait", "logs"])
def test_job_operations_need_the_submitter_or_an_administrator(op: str) -> None:
    p = policy()
    assert p.authorize(request(op, id="7"), peer(ALICE)) == Peer(ALICE, ALICE, 1234, admin=False)
    assert p.authorize(request(op, id="7.0"), peer(ALICE)) is not None  # a task of the job
    message = denied(p, op, BOB, id="7/first")
    assert message.startswith(f"{op} job 7: only its submitter (4000001) or an administrator (root")
    assert "7/first" not in message  # the job is named by its id, not by what the client sent
    root = p.authorize(request(op, id="7"), peer(0))
    assert root is not None and root.admin


def test_a_job_of_an_unknown_submitter_is_for_administrators_only() -> None:
    p = policy()
    assert "only its submitter (unknown)" in denied(p, "cancel", ALICE, id="8")
    assert p.authorize(request("cancel", id="8"), peer(0)) is not None


def test_an_unknown_job_is_not_found_not_denied() -> None:
    with pytest.raises(ProcpoolError) as info:
        policy().authorize(request("cancel", id="99"), peer(BOB))
    assert info.value.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("op,args", [("shutdown", {}), ("pool_resize", {"workers": 3})])
def test_daemon_wide_changes_are_for_administrators(op: str, args: dict[str, Any]) -> None:
    p = policy()
    message = denied(p, op, BOB, **args)
    assert message.startswith(f"{op}: only an administrator (root")
    assert "you are 4000002 (uid 4000002)" in message
    assert p.authorize(request(op, **args), peer(0)) is not None


@pytest.mark.parametrize(
    "op,args", [("submit", {"job": {}}), ("cancel", {"id": "7"}), ("clean", {}), ("shutdown", {})]
)
def test_a_peer_without_credentials_may_only_read(op: str, args: dict[str, Any]) -> None:
    assert "may only read" in denied(policy(), op, None, **args)


def test_clean_is_allowed_and_marks_administrators_so_the_handler_can_scope_it() -> None:
    p = policy()
    bob = p.authorize(request("clean"), peer(BOB))
    assert bob is not None and not bob.admin
    root = p.authorize(request("clean"), peer(0))
    assert root is not None and root.admin


def test_members_of_the_admin_group_are_administrators(caplog: pytest.LogCaptureFixture) -> None:
    uid, group = member_of_a_group()
    p = policy(group)
    assert f"group '{group}'" in p.admins()
    with caplog.at_level(logging.INFO, logger="procpoold.control"):
        got = p.authorize(request("cancel", id="7"), peer(uid))
    assert got is not None and got.admin
    assert p.authorize(request("shutdown"), peer(uid)) is not None
    # Their action on another user's job is logged, naming both.
    [record] = [r for r in caplog.records if "administrator" in r.getMessage()]
    assert f"uid {uid}" in record.getMessage() and "uid 4000001" in record.getMessage()
    assert record.journal_fields["PROCPOOL_UID"] == str(ALICE)  # type: ignore[attr-defined]
    # Without the setting, the same user is nobody special.
    denied(policy(), "cancel", uid, id="7")
