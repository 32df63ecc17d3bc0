"""Who may do what: one table from operation to rule, checked before any handler runs.

Runs on the daemon's loop thread, once per request (reads cost one dict lookup; a rule that needs
the peer's administrator status asks :class:`procpoold.identity.Authority`, which caches its
lookups). The model is systemd's manager API and that of atd, cron and Slurm:

=========  =================================================  ===================================
rule       who                                                operations
=========  =================================================  ===================================
read       whoever can connect (even without credentials)     ``ping``, ``status``, ``pool``,
                                                              ``explain``, ``metrics``,
                                                              ``queue``
submit     any peer the kernel vouched for (SO_PEERCRED)      ``submit``
owner      the job's submitter, or an administrator           ``cancel``, ``resume``, ``wait``,
                                                              ``logs``, ``retry``, ``stop``,
                                                              ``pause`` (``cancel`` of
                                                              several jobs, and ``submit`` with
                                                              ``replace``: each job, see
                                                              :meth:`Policy.check_owner`;
                                                              ``pause`` and ``resume`` with
                                                              ``all`` or ``queue``:
                                                              administrators only)
own_jobs   any identified peer; only its own jobs unless it   ``clean``
           is an administrator (the handler scopes it)
admin      administrators only                                ``shutdown``, ``pool_resize``,
                                                              ``queue_set``
=========  =================================================  ===================================

Administrators are root, the daemon's own user and the members of ``admin_group``. A peer whose
credentials the daemon could not read may only read. A job whose submitter is unknown (stored
before uids were recorded) may be changed by administrators only. A refusal is
:attr:`ErrorCode.PERMISSION_DENIED` with a message that names the rule; an administrator's action
on another user's job is logged with both users. Any new operation must get a rule here: the
daemon refuses to start otherwise (see :func:`check_complete`).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from procpool.contract.codec import Request
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import clip
from procpool.contract.ops import OPS
from procpoold.control.server import Peer
from procpoold.identity import Authority, user_name

log = logging.getLogger("procpoold.control")


class Rule(enum.StrEnum):
    """The kinds of rule (their values appear in the docs and in tests)."""

    READ = "read"
    SUBMIT = "submit"
    OWNER = "owner"
    OWN_JOBS = "own_jobs"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Access:
    """One operation's rule, and the words a refusal uses ("only ... may <verb>")."""

    rule: Rule
    verb: str = ""


#: The policy: every operation of the contract, exactly once.
POLICY: dict[str, Access] = {
    "ping": Access(Rule.READ),
    "status": Access(Rule.READ),
    "pool": Access(Rule.READ),
    "submit": Access(Rule.SUBMIT, "submit jobs"),
    "cancel": Access(Rule.OWNER, "cancel it"),
    "resume": Access(Rule.OWNER, "resume it"),
    "wait": Access(Rule.OWNER, "wait on it"),
    "logs": Access(Rule.OWNER, "read its logs"),
    "clean": Access(Rule.OWN_JOBS, "clean finished jobs"),
    "shutdown": Access(Rule.ADMIN, "stop the daemon"),
    "pool_resize": Access(Rule.ADMIN, "resize the pool"),
    "explain": Access(Rule.READ),
    "metrics": Access(Rule.READ),
    "retry": Access(Rule.OWNER, "retry it"),
    "stop": Access(Rule.OWNER, "stop it"),
    # (pause and resume of the whole daemon, "all", or of a queue: administrators only, checked
    # by the handler)
    "pause": Access(Rule.OWNER, "pause it"),
    "queue": Access(Rule.READ),
    "queue_set": Access(Rule.ADMIN, "change the queues"),
}

#: ``owner_of(ref)``: the job id and submitter uid of a job or task reference (None: unknown
#: submitter); raises the not_found error for an unknown reference.
OwnerLookup = Callable[[str], tuple[str, int | None]]


def check_complete() -> None:
    """Fail loudly (at start) if an operation of the contract has no rule, or a rule no operation."""
    missing = set(OPS) - set(POLICY)
    extra = set(POLICY) - set(OPS)
    if missing or extra:
        raise RuntimeError(
            f"access policy out of step with the operations: no rule for {sorted(missing)}, "
            f"rule for unknown {sorted(extra)}"
        )


class Policy:
    """Applies :data:`POLICY` to a request from a peer."""

    def __init__(self, authority: Authority, owner_of: OwnerLookup) -> None:
        check_complete()
        self.authority = authority
        self.owner_of = owner_of

    def admins(self) -> str:
        """Who the administrators are, for messages: "root, the daemon's user (x), group 'g'"."""
        euid = os.geteuid()
        who = ["root"] if euid == 0 else ["root", f"the daemon's user ({user_name(euid)})"]
        if self.authority.admin_group is not None:
            who.append(f"group '{self.authority.admin_group}'")
        return ", ".join(who)

    def authorize(self, request: Request, peer: Peer | None) -> Peer | None:
        """Return the peer (with ``admin`` set when the rule needed to know) or raise a refusal.

        Never runs a handler and never changes state.
        """
        access = POLICY[request.op]  # the operation was checked against the contract already
        if access.rule is Rule.READ:
            return peer
        op = request.op
        if peer is None:
            raise self._denied(
                f"{op}: the daemon could not read your credentials, and a peer without them may only "
                "read (ping, status, pool)",
                "connect over the Unix socket from a local process (the kernel supplies them)",
            )
        admin = self.authority.is_admin(peer.uid)
        peer = replace(peer, admin=admin)
        if access.rule in (Rule.SUBMIT, Rule.OWN_JOBS):
            return peer  # clean is scoped to the peer's own jobs by its handler
        if access.rule is Rule.ADMIN:
            if not admin:
                raise self._denied(
                    f"{op}: only an administrator ({self.admins()}) may {access.verb}; "
                    f"you are {_who(peer.uid)}",
                    "ask an administrator (admin_group in the daemon's config names who they are)",
                )
            return peer
        ref = request.args.get("id")
        if ref is None:
            # cancel of several jobs (ids or filters): the handler checks each (check_owner,
            # may_change); pause and resume with "all" or "queue": the handler requires an
            # administrator;
            # every other OWNER operation requires "id" (the contract)
            return peer
        job_id, owner = self.owner_of(ref)
        self.check_owner(op, access.verb, ref, job_id, owner, peer)
        return peer

    def may_change(self, peer: Peer | None, owner: int | None) -> bool:
        """Whether ``peer`` may change (cancel, stop, replace) a job submitted by ``owner``."""
        if peer is None:
            return False
        return (owner is not None and owner == peer.uid) or self.authority.is_admin(peer.uid)

    def check_owner(
        self, op: str, verb: str, ref: str, job_id: str, owner: int | None, peer: Peer
    ) -> None:
        """The owner rule for one job: return if ``peer`` submitted it, log and return if ``peer``
        is an administrator, else raise the refusal naming the rule and the job."""
        if owner == peer.uid:
            return
        submitter = user_name(owner) if owner is not None else "unknown"
        if not self.authority.is_admin(peer.uid):
            raise self._denied(
                f"{op} job {job_id}: only its submitter ({submitter}) or an administrator "
                f"({self.admins()}) may {verb}",
                "ask the submitter or an administrator",
            )
        log.info(
            "administrator %s: %s %s of %s",
            _who(peer.uid),
            op,
            clip(str(ref)),
            submitter if owner is None else _who(owner),
            extra={
                "journal_fields": {
                    "PROCPOOL_JOB_ID": job_id,
                    "PROCPOOL_ADMIN_UID": str(peer.uid),
                    "PROCPOOL_USER": submitter,
                    "PROCPOOL_UID": "" if owner is None else str(owner),
                }
            },
        )

    def may_read_logs(self, peer: Peer | None, owner: int | None) -> bool:
        """Whether ``peer`` may read the log lines of a job submitted by ``owner`` (the ``logs`` rule,
        for what a read such as ``status`` shows of them: the tail of a failed task)."""
        if peer is None:
            return False
        return (owner is not None and owner == peer.uid) or self.authority.is_admin(peer.uid)

    @staticmethod
    def _denied(message: str, hint: str) -> ProcpoolError:
        return ProcpoolError(ErrorCode.PERMISSION_DENIED, message, hint)


def _who(uid: int) -> str:
    return f"{user_name(uid)} (uid {uid})"

