"""One handler per operation, exhaustive over the contract's operation table.

Handlers receive arguments already checked against :data:`procpool.contract.ops.OPS`
and call the narrow :class:`DaemonAPI`; they hold no state of their own.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

from procpool.contract.codec import Request, RequestError
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import WORKERS_MAX, shorten
from procpool.contract.ops import OPS, POOL_RESIZE_HINT
from procpool.contract.status import VIEWS, PingReply, View
from procpoold.control.server import Deferred, Handler, Peer

log = logging.getLogger("procpoold.control")

#: Most distinct prerequisites one submit may name in ``after``.
MAX_AFTER = 1_000


class DaemonAPI(Protocol):
    """What the control plane may ask of the daemon."""

    def info(self) -> PingReply: ...
    def summary(self) -> dict[str, Any]: ...
    def request_shutdown(self, reason: str) -> None: ...
    def submit(
        self,
        job: dict[str, Any],
        uid: int | None,
        after: list[str] | None,
        wait: float | None = None,
        view: View = "full",
        replace: Peer | None = None,
    ) -> dict[str, Any] | Deferred: ...
    def job_status(
        self,
        ref: str,
        tasks_from: int = 0,
        tasks_limit: int | None = None,
        reader: Peer | None = None,
        view: View = "full",
        changes_since: str | None = None,
        tasks_state: str | None = None,
    ) -> dict[str, Any]: ...
    def job_list(
        self,
        state: str | None,
        since: float | None,
        limit: int | None,
        name: str | None = None,
        user: str | None = None,
        tag: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]: ...
    def wait(
        self,
        ref: str,
        timeout: float,
        extra: dict[str, Any] | None = None,
        view: View = "full",
        changes_since: str | None = None,
    ) -> dict[str, Any] | Deferred: ...
    def cancel(
        self, ref: str, by: int | None = None, signum: int | None = None, grace: float | None = None
    ) -> dict[str, Any]: ...
    def cancel_many(self, args: dict[str, Any], peer: Peer | None, signum: int | None) -> dict[str, Any]: ...
    def stop(self, ref: str, by: int | None = None) -> dict[str, Any]: ...
    def resume(self, ref: str | None) -> dict[str, Any]: ...
    def clean(self, state: str | None, before: float | None, owner: int | None) -> dict[str, Any]: ...
    def logs(self, args: dict[str, Any]) -> dict[str, Any]: ...
    def pool_info(self) -> dict[str, Any]: ...
    def pool_resize(self, workers: int) -> dict[str, Any]: ...
    def explain(self, ref: str) -> dict[str, Any]: ...
    def metrics(self) -> dict[str, Any]: ...
    def retry(self, ref: str, tasks: list[str] | None, by: int | None) -> dict[str, Any]: ...
    def pause(self, ref: str | None, by: int | None, stop: bool = False) -> dict[str, Any]: ...
    def pause_queue(self, name: str, by: int | None, stop: bool = False) -> dict[str, Any]: ...
    def resume_queue(self, name: str) -> dict[str, Any]: ...
    def queue_info(self) -> dict[str, Any]: ...
    def queue_set(self, name: str, parallel: int, by: int | None) -> dict[str, Any]: ...


def build_handlers(api: DaemonAPI) -> dict[str, Handler]:
    """Map every operation name to its handler; fails loudly if one is missing."""

    def ping(req: Request, peer: Peer | None) -> Any:
        return api.info()

    def status(req: Request, peer: Peer | None) -> Any:
        a = req.args
        if "job" in a:
            tasks_state = a.get("tasks_state")
            if tasks_state is not None and (_view(req) != "full" or "changes_since" in a):
                raise RequestError(
                    ErrorCode.INVALID_ARGUMENT,
                    "status: 'tasks_state' goes with the full view, without 'changes_since'",
                    req.id,
                )
            return api.job_status(
                a["job"], a.get("tasks_from", 0), a.get("tasks_limit"), peer, _view(req),
                _changes_since(req), tasks_state,
            )
        if "tasks_state" in a:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, "status: argument 'tasks_state' needs 'job'", req.id
            )
        summary = api.summary()
        jobs, matched = api.job_list(
            a.get("state"), a.get("since"), a.get("limit", 50), a.get("name"), a.get("user"), a.get("tag")
        )
        summary["jobs"]["list"], summary["jobs"]["matched"] = jobs, matched
        return summary

    def shutdown(req: Request, peer: Peer | None) -> Any:
        api.request_shutdown(f"requested by {_who(peer)}")
        return {"stopping": True}

    def submit(req: Request, peer: Peer | None) -> Any:
        after = req.args.get("after")
        if after is not None and not all(isinstance(a, str) for a in after):
            raise RequestError(ErrorCode.INVALID_ARGUMENT, "submit: 'after' must be a list of ids", req.id)
        if after is not None:
            # Each prerequisite once (the scheduler re-evaluates a waiting job per entry, each time
            # over all of them), and a bounded number of them.
            after = list(dict.fromkeys(after))
            if len(after) > MAX_AFTER:
                raise RequestError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"submit: 'after' names {len(after)} prerequisites, at most {MAX_AFTER}",
                    req.id,
                    hint="wait for a job's ids (12) rather than each of its tasks (12.3)",
                )
        uid = peer.uid if peer else None
        replace = peer if req.args.get("replace") else None
        if replace is None and req.args.get("replace"):
            raise RequestError(ErrorCode.PERMISSION_DENIED, "submit: 'replace' needs a peer with "
                               "credentials (it cancels jobs)", req.id)
        return api.submit(req.args["job"], uid, after, req.args.get("wait"), _view(req), replace)

    def wait(req: Request, peer: Peer | None) -> Any:
        return api.wait(
            req.args["id"],
            float(req.args.get("timeout", 30.0)),
            view=_view(req),
            changes_since=_changes_since(req),
        )

    def cancel(req: Request, peer: Peer | None) -> Any:
        a = req.args
        filters = [k for k in ("state", "name", "user", "all") if k in a]
        forms = [k for k in ("id", "ids") if k in a] + (["filters"] if filters else [])
        if len(forms) != 1:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                "cancel: give one of 'id', 'ids', or filters ('state', 'name', 'user', 'all')"
                + (f"; got {', '.join(forms)}" if forms else ""),
                req.id,
            )
        if a.get("all") is False:
            raise RequestError(ErrorCode.INVALID_ARGUMENT, "cancel: 'all' must be true when given", req.id)
        signame = a.get("signal")
        signum = None if signame is None else int(signal.Signals[signame])  # (a STOP_SIGNALS name)
        if "id" in a and not a.get("dry_run"):
            return api.cancel(a["id"], peer.uid if peer else None, signum, a.get("grace"))
        return api.cancel_many(a, peer, signum)

    def stop(req: Request, peer: Peer | None) -> Any:
        return api.stop(req.args["id"], peer.uid if peer else None)

    def _job_or_all(req: Request, peer: Peer | None) -> str | None:
        """``pause``/``resume``: the job id, or None for the whole daemon or a queue
        (administrators only)."""
        a = req.args
        if ("id" in a) + bool(a.get("all")) + ("queue" in a) != 1:
            raise RequestError(ErrorCode.INVALID_ARGUMENT,
                               f"{req.op}: give one of 'id' (a job), 'queue' (a named queue) or 'all' true "
                               "(the daemon)", req.id)
        if "id" in a:
            ref: str = a["id"]
            return ref
        what = f"--queue {a['queue']}" if "queue" in a else "--all"
        whole = f"the queue {a['queue']}" if "queue" in a else "the whole daemon"
        if peer is None or not peer.admin:
            raise ProcpoolError(
                ErrorCode.PERMISSION_DENIED,
                f"{req.op} {what}: only an administrator may {req.op} {whole}; you are {_who(peer)}",
                f"procctl {req.op} ID {'pauses' if req.op == 'pause' else 'resumes'} one of your jobs",
            )
        log.info("%s of %s by %s", req.op, whole, _who(peer))
        return None

    def resume(req: Request, peer: Peer | None) -> Any:
        ref = _job_or_all(req, peer)
        if "queue" in req.args:
            return api.resume_queue(req.args["queue"])
        return api.resume(ref)

    def pause(req: Request, peer: Peer | None) -> Any:
        ref = _job_or_all(req, peer)
        stop = bool(req.args.get("stop"))
        if "queue" in req.args:
            return api.pause_queue(req.args["queue"], peer.uid if peer else None, stop)
        return api.pause(ref, peer.uid if peer else None, stop)

    def queue(req: Request, peer: Peer | None) -> Any:
        return api.queue_info()

    def queue_set(req: Request, peer: Peer | None) -> Any:
        return api.queue_set(req.args["name"], req.args["parallel"], peer.uid if peer else None)

    def logs(req: Request, peer: Peer | None) -> Any:
        return api.logs(req.args)

    def clean(req: Request, peer: Peer | None) -> Any:
        # The access policy lets anyone identified clean, but only their own jobs unless admin.
        owner = None if peer is None or peer.admin else peer.uid
        result = api.clean(req.args.get("state"), req.args.get("before"), owner)
        if owner is None and peer is not None and result["removed"]:
            log.info(
                "administrator %s cleaned %d finished job(s) of any user", _who(peer), len(result["removed"])
            )
        return result

    def pool(req: Request, peer: Peer | None) -> Any:
        return api.pool_info()

    def pool_resize(req: Request, peer: Peer | None) -> Any:
        workers = req.args["workers"]
        if not 1 <= workers <= WORKERS_MAX:  # as the contract says (check_args): no pool of 0 workers
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                f"pool_resize: workers must be 1..{WORKERS_MAX}, got {workers}",
                req.id,
                hint=POOL_RESIZE_HINT,
            )
        return api.pool_resize(workers)

    def explain(req: Request, peer: Peer | None) -> Any:
        return api.explain(req.args["id"])

    def metrics(req: Request, peer: Peer | None) -> Any:
        return api.metrics()

    def retry(req: Request, peer: Peer | None) -> Any:
        return api.retry(req.args["id"], req.args.get("tasks"), peer.uid if peer else None)

    handlers: dict[str, Handler] = {
        "pool": pool,
        "pool_resize": pool_resize,
        "ping": ping,
        "status": status,
        "shutdown": shutdown,
        "submit": submit,
        "wait": wait,
        "cancel": cancel,
        "resume": resume,
        "logs": logs,
        "clean": clean,
        "explain": explain,
        "metrics": metrics,
        "retry": retry,
        "stop": stop,
        "pause": pause,
        "queue": queue,
        "queue_set": queue_set,
    }
    missing = set(OPS) - set(handlers)
    if missing:  # a new operation in the contract without a handler is a bug, caught at start
        raise RuntimeError(f"no handler for operation(s): {', '.join(sorted(missing))}")
    return handlers


def _view(req: Request) -> View:
    """The status view a request asks for (``full`` unless it says otherwise)."""
    view = req.args.get("view", "full")
    if view not in VIEWS:
        raise RequestError(
            ErrorCode.INVALID_ARGUMENT,
            f"{req.op}: argument 'view' must be one of {', '.join(VIEWS)}, got {shorten(view, 64)}",
            req.id,
        )
    return view  # type: ignore[no-any-return]


def _changes_since(req: Request) -> str | None:
    """A request's change cursor (checked by the contract); only the columnar view carries changes."""
    since: str | None = req.args.get("changes_since")
    if since is not None and req.args.get("view") != "columns":
        raise RequestError(
            ErrorCode.INVALID_ARGUMENT,
            f"{req.op}: argument 'changes_since' needs view 'columns'",
            req.id,
            hint="what changed travels in the columnar form only",
        )
    return since


def _who(peer: Peer | None) -> str:
    return f"uid {peer.uid} (pid {peer.pid})" if peer else "an unknown peer"
