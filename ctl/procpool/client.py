"""The Python client: what ``procctl`` itself uses, so scripts never shell out.

Example::

    from procpool import Client

    with Client() as client:          # PROCPOOL_SOCKET or the default path
        print(client.ping()["version"])

A client holds one ZeroMQ DEALER socket (not REQ: a timed-out request must not
wedge the socket's state machine). Each call gets a fresh request id and
replies with any other id are dropped; a call that times out closes the socket, so
a late answer never reaches the next call, and an error reply without an id (the
daemon could not read the request, e.g. ``too_large``) is the answer to the call
in flight. An error reply raises :class:`procpool.ProcpoolError` with the daemon's
code; no answer within the timeout raises :class:`procpool.DaemonUnreachable`.

Before it sends anything, a client checks that the socket is in trusted hands: every folder on its
path and the socket file belong to root, the service user, the client's own user or a uid given in
``trust_uids`` / ``PROCPOOL_TRUST_UID``, and the process listening runs as one of them (its
``SO_PEERCRED``); see :mod:`procpool.trust`. Anything else is refused with an error naming it.

Requests larger than ``max_message_size`` (16 MiB by default, as the daemon's) are
refused before they are sent; raise both for jobs with bigger arguments. Replies
have no limit: the daemon is trusted, and a big job's status or result may be big.
A client is not thread-safe; use one per thread.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from procpool import trust
from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE, decode_reply, encode_request
from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from procpool.contract.ops import check_args
from procpool.contract.paths import default_socket, endpoint
from procpool.contract.status import FORMAT_COLUMNS, CancelReply, JobStatus, PingReply, View

#: Longest single server-side wait; longer waits are split so a dead daemon is noticed.
_WAIT_SLICE = 30.0


class Client:
    """A connection to one procpoold control socket."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        trust_uids: Iterable[int] = (),
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket()
        #: who may own the socket's path and listen on it (see procpool.trust); read once, here
        self.trusted = trust.trusted_uids(trust_uids)
        self.timeout = timeout
        self.max_message_size = max_message_size
        self._ids = itertools.count(1)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._prefix = f"{os.getpid()}-"

    # -- plumbing -----------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            try:
                listener = trust.check(self.socket_path, self.trusted)
            except PermissionError:
                raise ProcpoolError(
                    ErrorCode.UNREACHABLE,
                    f"permission denied on {self.socket_path}",
                    "ask an administrator to add you to the daemon's group (see --group)",
                ) from None
            except trust.UntrustedSocket as exc:
                raise ProcpoolError(
                    ErrorCode.UNREACHABLE,
                    str(exc),
                    "nothing was sent; if you trust that user, pass --trust-uid UID (procctl) or set "
                    f"{trust.TRUST_ENV}=UID",
                ) from None
            if listener is None:
                raise DaemonUnreachable(os.fspath(self.socket_path), 0)
            self._ctx = zmq.Context()
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint(self.socket_path))
            self._sock = sock
        return self._sock

    def close(self) -> None:
        """Close the socket and its context (idempotent)."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Send one request and return its result; raise :class:`ProcpoolError` on an error reply.

        ``timeout`` overrides the client's timeout for this call (seconds).
        """
        args = args or {}
        check_args(op, args)  # the daemon checks again; this gives the same error without a round trip
        request_id = f"{self._prefix}{next(self._ids)}"
        data = encode_request(request_id, op, args)
        if len(data) > self.max_message_size:
            raise ProcpoolError(
                ErrorCode.TOO_LARGE,
                f"request of {len(data)} bytes exceeds the maximum message size of "
                f"{self.max_message_size} bytes",
                "split the work into smaller jobs, or raise max_message_size in the daemon's config "
                "and the client's (procctl --max-message-size)",
            )
        sock = self._socket()
        sock.send(data)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                # Drop the socket: a late reply must not be read as the answer to the next call.
                self.close()
                raise DaemonUnreachable(os.fspath(self.socket_path), limit)
            reply = decode_reply(sock.recv(), max_size=sys.maxsize)
            if reply.id != request_id and not (reply.id is None and reply.error is not None):
                continue  # not ours (a late answer cannot come: a timeout closes the socket)
            if reply.error is not None:
                raise reply.error
            return reply.result

    # -- operations ---------------------------------------------------------------------------

    def ping(self) -> PingReply:
        """The daemon's ``version``, ``protocol`` and ``pid``."""
        result: PingReply = self.call("ping")
        return result

    def status(
        self,
        job: str | None = None,
        *,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        tasks_from: int | None = None,
        tasks_limit: int | None = None,
        name: str | None = None,
        user: str | None = None,
        tag: str | None = None,
        tasks_state: str | None = None,
    ) -> dict[str, Any]:
        """The daemon summary and job list, or with ``job`` that job's full status (a map per task:
        for a big job, :meth:`job_status` is much cheaper).

        The list holds the newest jobs (at most ``limit``) that match ``state``, ``since`` (epoch
        seconds), ``name`` (a shell pattern), ``user`` (a name or uid) and ``tag``; its
        ``jobs.matched`` says how many match in all. With ``job`` and ``tasks_state`` only that
        job's tasks in that state (every page of them), with the counts of all in its head.

        The daemon sends a big job's tasks in pages (``status_page_size`` tasks at most per reply);
        this fetches every page and returns them as one status. With ``tasks_from`` or
        ``tasks_limit`` it returns that one page as the daemon sent it (its ``page`` field says
        where the next one starts).
        """
        args: dict[str, Any] = {}
        for key, value in (
            ("job", job),
            ("state", state),
            ("since", since),
            ("limit", limit),
            ("tasks_from", tasks_from),
            ("tasks_limit", tasks_limit),
            ("name", name),
            ("user", user),
            ("tag", tag),
            ("tasks_state", tasks_state),
        ):
            if value is not None:
                args[key] = value
        result: dict[str, Any] = self.call("status", args)
        if job is not None and tasks_from is None and tasks_limit is None:
            self._all_pages(job, result, tasks_state)
        return result

    def _all_pages(self, job: str, status: dict[str, Any], tasks_state: str | None = None) -> None:
        """Fetch the rest of a paged job status into ``status`` (its ``tasks`` grow in place)."""
        page = status.get("page")
        while isinstance(page, dict) and page.get("next") is not None:
            args: dict[str, Any] = {"job": job, "tasks_from": page["next"]}
            if tasks_state is not None:
                args["tasks_state"] = tasks_state
            more: dict[str, Any] = self.call("status", args)
            status["tasks"].extend(more["tasks"])
            page = more.get("page")
        if isinstance(page, dict):
            total = page.get("total")
            status["page"] = {"from": 0, "count": len(status["tasks"]), "total": total, "next": None}

    def job_status(
        self, ref: str, *, tasks_from: int | None = None, tasks_limit: int | None = None
    ) -> JobStatus | dict[str, Any]:
        """A job's status in the compact columnar view (format 2), decoded without a map per task.

        Every page unless ``tasks_from`` or ``tasks_limit`` is given (then the one page from that
        task on, of at most that many tasks). Much
        cheaper than :meth:`status` for a big job; see :class:`procpool.contract.status.JobStatus`
        for what it holds. For a task reference (``12.3``, ``12/name``) the task's reply, as
        :meth:`status` returns it.
        """
        args: dict[str, Any] = {"job": ref, "view": "columns"}
        for key, value in (("tasks_from", tasks_from), ("tasks_limit", tasks_limit)):
            if value is not None:
                args[key] = value
        reply = self.call("status", args)
        if isinstance(reply, dict) and "task" in reply:
            return reply
        return self._columns(ref, reply, every_page=tasks_from is None and tasks_limit is None)

    def _columns(self, job: str, wire: Any, every_page: bool = True) -> JobStatus:
        """Decode a columnar status (and fetch its other pages)."""
        try:
            status = JobStatus.decode(wire)
            while every_page and status.next is not None:
                more = self.call("status", {"job": job, "view": "columns", "tasks_from": status.next})
                status.extend(JobStatus.decode(more))
        except ValueError as exc:
            raise ProcpoolError(ErrorCode.MALFORMED, f"daemon sent a bad status: {exc}") from None
        return status

    def shutdown(self) -> None:
        """Ask the daemon to stop gracefully; returns once it has accepted the request."""
        self.call("shutdown")

    def submit(
        self,
        job: dict[str, Any],
        after: list[str] | None = None,
        wait: float | None = None,
        *,
        view: View = "full",
        replace: bool = False,
    ) -> dict[str, Any]:
        """Submit a job tree (a dict in the job-file format); returns ``{"id", "existing", ...}``.

        With ``wait`` (seconds) the call returns once the job has finished (or ``wait`` ran out),
        in one round trip; the result then also has ``finished``, ``state`` and ``status`` (as
        :meth:`wait` returns them, in ``view``). With ``replace`` (the job needs a ``key``), the
        unfinished jobs with the same key are cancelled (``replaced by job N``) and this one takes
        their place (``replaced``: their ids).
        """
        args: dict[str, Any] = {"job": job}
        if replace:
            args["replace"] = True
        if after:
            args["after"] = after
        if wait is not None:
            args["wait"] = wait
            if view != "full":
                args["view"] = view
        result: dict[str, Any] = self.call(
            "submit", args, timeout=None if wait is None else wait + self.timeout
        )
        self._whole_status(result["id"], result)
        return result

    def _whole_status(self, job: str, result: dict[str, Any]) -> None:
        """Complete the first page of a job's status in a wait's ``result`` (in place)."""
        status = result.get("status")
        if isinstance(status, dict) and status.get("format") == FORMAT_COLUMNS:
            result["status"] = self._columns(job, status)
        elif isinstance(status, dict):
            self._all_pages(job, status)

    def wait(self, id: str, timeout: float | None = None, *, view: View = "full") -> dict[str, Any]:
        """Block until the job or task ``id`` has finished; returns its final status.

        With ``timeout`` (seconds) it returns the status as it stands when time is up
        (check its ``finished`` field). A job's ``status`` is every task in ``view``: a dict in
        the full view (format 1), a :class:`~procpool.contract.status.JobStatus` for ``columns``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = _WAIT_SLICE
            if deadline is not None:
                chunk = max(0.0, min(chunk, deadline - time.monotonic()))
            args: dict[str, Any] = {"id": id, "timeout": chunk}
            if view != "full":
                args["view"] = view
            result: dict[str, Any] = self.call("wait", args, timeout=chunk + self.timeout)
            if result.get("finished") or (deadline is not None and time.monotonic() >= deadline):
                self._whole_status(id, result)
                return result

    def pool(self) -> dict[str, Any]:
        """The worker pool: ``workers`` (one map per worker) and ``info`` (a summary)."""
        result: dict[str, Any] = self.call("pool")
        return result

    def pool_resize(self, workers: int) -> None:
        """Change the number of workers at run time."""
        self.call("pool_resize", {"workers": workers})

    def resume(self, id: str | None = None, *, all: bool = False, queue: str | None = None) -> dict[str, Any]:
        """Release a job held after a restart (``on_interrupt: hold``) or paused (:meth:`pause`),
        or end the pause of a named ``queue`` or (``all``) of the daemon (administrators only).
        The reply's ``released`` says which it was (``held`` or ``paused``)."""
        result: dict[str, Any] = self.call("resume", _one_target(id, all, queue))
        return result

    def queues(self) -> list[dict[str, Any]]:
        """The named queues: ``name``, ``parallel``, ``running``, ``waiting`` (for a place),
        ``paused`` (who and when, or None) and ``source`` (``config`` or ``set`` at run time)."""
        result: dict[str, Any] = self.call("queue")
        return list(result["queues"])

    def queue_set(self, name: str, parallel: int) -> dict[str, Any]:
        """Make a named queue, or change its parallelism, at run time (administrators only)."""
        result: dict[str, Any] = self.call("queue_set", {"name": name, "parallel": parallel})
        return result

    def clean(self, state: str | None = None, before: float | None = None) -> list[str]:
        """Remove finished jobs from the history; returns the ids removed.

        Only the caller's own jobs, unless the caller is an administrator (the daemon's reply also
        says how many of other users' jobs it left: ``call("clean")["others_left"]``).
        """
        args: dict[str, Any] = {}
        if state is not None:
            args["state"] = state
        if before is not None:
            args["before"] = before
        result: dict[str, Any] = self.call("clean", args)
        return list(result["removed"])

    def cancel(self, id: str, *, signal: str | None = None, grace: float | None = None) -> CancelReply:
        """Cancel a job or one task; returns what was cancelled.

        Its running attempts get ``signal`` (a name such as ``"SIGINT"``; default SIGTERM;
        ``"SIGKILL"`` ends them at once), then SIGKILL after ``grace`` seconds (default: the
        task's ``kill_grace``, else its job's, else the daemon's)."""
        args: dict[str, Any] = {"id": id}
        if signal is not None:
            args["signal"] = signal
        if grace is not None:
            args["grace"] = grace
        result: CancelReply = self.call("cancel", args)
        return result

    def cancel_many(
        self,
        ids: list[str] | None = None,
        *,
        state: str | None = None,
        name: str | None = None,
        user: str | None = None,
        all: bool = False,
        signal: str | None = None,
        grace: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Cancel several jobs or tasks (``ids``), or the unfinished jobs that match every filter
        given (``state``, ``name`` a shell pattern, ``user``; ``all``: every unfinished job) that
        the caller may change. Returns ``cancelled`` (ids), ``stopping`` (running attempts being
        stopped), ``finished`` (id: state of those that had finished already) and ``others_left``
        (jobs that matched a filter but are other users'); with ``dry_run`` nothing changes and
        ``matched`` lists what would be cancelled. ``signal`` and ``grace`` as for :meth:`cancel`."""
        args: dict[str, Any] = {}
        if ids is not None:
            args["ids"] = list(ids)
        for key, value in (("state", state), ("name", name), ("user", user), ("signal", signal),
                           ("grace", grace)):
            if value is not None:
                args[key] = value
        if all:
            args["all"] = True
        if dry_run:
            args["dry_run"] = True
        result: dict[str, Any] = self.call("cancel", args)
        return result

    def stop(self, id: str) -> dict[str, Any]:
        """End a repeating job after its current run (that run finishes normally; no other
        starts), and each node that cycles on its own clock after its current cycle; returns
        ``{"id", "run", "state"}`` (and ``"cycles": true`` for a job with such nodes)."""
        result: dict[str, Any] = self.call("stop", {"id": id})
        return result

    def explain(self, id: str) -> dict[str, Any]:
        """Why a task (``"12.3"``, ``"12/name"``) is in its state, or a job (``"12"``) and its
        unfinished tasks: ``text`` (the reasons in words, one line each), ``reason`` (a name:
        ``dependency``, ``queued``, ``no_free_slot``, ``retry_delay``, ``held``, ``after``,
        ``upstream``, ...) and the data behind them (see docs/protocol.md)."""
        result: dict[str, Any] = self.call("explain", {"id": id})
        return result

    def metrics(self) -> dict[str, Any]:
        """The daemon's metrics and health verdict (docs/protocol.md, ``metrics``)."""
        result: dict[str, Any] = self.call("metrics")
        return result

    def retry(self, id: str, tasks: list[str] | None = None) -> dict[str, Any]:
        """Run a finished job's tasks that did not complete again, as a new run of the same job
        (its completed tasks, their results and its namespace kept); ``tasks`` (ids such as
        ``"12.3"``, or names of its tasks or groups) narrows it to those and what waits on them.
        Returns ``id``, ``run`` (the new run's number), ``state``, ``again`` and ``kept`` (how many
        tasks run again and were kept) and ``tasks`` (the names of the first 20 run again)."""
        args: dict[str, Any] = {"id": id}
        if tasks:
            args["tasks"] = list(tasks)
        result: dict[str, Any] = self.call("retry", args)
        return result

    def pause(
        self, id: str | None = None, *, all: bool = False, queue: str | None = None, stop: bool = False
    ) -> dict[str, Any]:
        """Pause a job (``id``): nothing new of it starts until :meth:`resume`, its running
        attempts finish; or a named ``queue``, or with ``all`` the whole daemon (both
        administrators only): nothing new of it starts, new submissions are accepted and wait.
        With ``stop`` the running attempts are stopped now and run again at resume, using none of
        their retries. Returns ``id`` and ``state`` (a job), or the pause's ``by`` and ``at``
        (``queue``, ``all``), and ``stopping`` (attempts being stopped)."""
        args = _one_target(id, all, queue)
        if stop:
            args["stop"] = True
        result: dict[str, Any] = self.call("pause", args)
        return result


def _one_target(id: str | None, all: bool, queue: str | None) -> dict[str, Any]:
    """The target of a pause or resume: a job, a named queue, or the daemon (exactly one)."""
    if (id is not None) + bool(all) + (queue is not None) != 1:
        raise ValueError("give one of a job id, queue=NAME or all=True")
    if id is not None:
        return {"id": id}
    return {"queue": queue} if queue is not None else {"all": True}
