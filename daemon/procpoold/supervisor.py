"""The daemon object: owns the event loop, the control socket and (later) the scheduler.

Everything here runs on the loop's thread. The lifecycle is::

    start()  -> bind the control socket, install signal handlers, READY=1
    run()    -> the loop, until a signal or a shutdown request
    close()  -> STOPPING=1, close the socket (its file is removed)
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import zmq

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import shorten
from procpool.contract.status import PingReply, View
from procpool.contract.version import PROTOCOL_VERSION, __version__
from procpoold import journal, metrics_report, pausefile, systemd
from procpoold.config import Config
from procpoold.control.handlers import build_handlers
from procpoold.control.limits import ServerLimits, connection_cap, raise_fd_limit
from procpoold.control.policy import Policy
from procpoold.control.server import ControlServer, Deferred, Peer
from procpoold.core import status
from procpoold.core.jobs import Job
from procpoold.core.states import FINAL_TASK_STATES
from procpoold.engines.registry import Engines
from procpoold.identity import Authority, UnknownUser, identity_by_name, identity_of
from procpoold.logfiles import JobLogFiles
from procpoold.loop import EventLoop, Timer
from procpoold.metrics_export import PrometheusExport  # (prometheus_client only once the export starts)
from procpoold.scheduler import Scheduler
from procpoold.scheduler.pausing import paused_by
from procpoold.store.lock import StateLock
from procpoold.store.protocol import StoreFailure
from procpoold.store.sqlite import StateStore

log = logging.getLogger("procpoold")

#: Thresholds of the cyclic garbage collector while the loop runs. Python's default (700, 10, 10)
#: collects the young generation every 700 container allocations, and a job of 20,000 tasks makes
#: hundreds of thousands of long-lived objects that the older collections then scan again and
#: again: with the default, about a fifth of the daemon's CPU in W1 goes to the collector. Cycles are
#: still collected, just in larger and rarer batches.
GC_THRESHOLDS = (100_000, 50, 100)

MESSAGE_READY = journal.MessageId.DAEMON_READY
#: Waiters answered per turn of the event loop when what they wait on finishes.
ANSWERS_PER_TURN = 16
#: Settings of the control socket, fixed once it is open (a reload warns about a change).
_SERVER = (
    "max_connections",
    "max_queued_replies",
    "max_queued_reply_bytes",
    "max_waits_per_peer",
    "max_pending_waits",
    "max_waits_per_user",
)


def _uid_of(user: str | None, op: str) -> int | None:
    """The uid a job filter's ``user`` names: a uid, or a name the password database knows (None:
    no filter); an unknown name is ``invalid_argument`` for ``op``."""
    if user is None:
        return None
    try:
        return int(user) if user.isdigit() and len(user) <= 10 else identity_by_name(user).uid
    except UnknownUser:
        raise ProcpoolError(ErrorCode.INVALID_ARGUMENT, f"{op}: no user named {shorten(user, 64)}",
                            "give a user name or a uid") from None


class Daemon:
    """One running procpoold."""

    def __init__(
        self,
        config: Config,
        engines: Engines,
        inherited_fd: int | None = None,
        reload_config: Callable[[], Config] | None = None,
        sink: journal.LogSink | None = None,
    ) -> None:
        self.config = config
        #: the journal's sink (None in tests that log through plain ``logging``)
        self.sink = sink
        self.reload_config = reload_config
        self._status_timer: Timer | None = None
        self._watchdog_interval = systemd.watchdog_interval()
        self._ready = False
        self._notify_status = bool(os.environ.get("NOTIFY_SOCKET"))  # read once: checked per task
        self.loop = EventLoop()
        #: the engines by name (built by the composition root; used only through the protocol)
        self.engines = engines
        self.store: StateStore | None = None
        self.ctx: zmq.Context[Any] | None = None
        self.control: ControlServer | None = None
        self.stop_reason: str | None = None
        #: why the state file could not be written, if it could not (the daemon then exits non-zero)
        self.store_failure: str | None = None
        self._draining = False
        self._drain_timer: Timer | None = None
        #: pending waits by job or task id, each an insertion-ordered set (one answered by its timeout
        #: leaves in O(1), whatever the order)
        self._waits: dict[str, dict[tuple[Deferred, Callable[..., None]], None]] = {}
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        # Executors that fork (the worker pool's zygote) must do it before any thread exists,
        # and the ZeroMQ context below starts I/O threads.
        for executor in self.engines.all():
            executor.prefork()
        if sink is not None:
            sink.start(self.loop)  # the journal forwarder process: after the zygote, before zmq's threads
        self.state_lock: StateLock | None = None
        # Room for control connections (capped well below it: see procpoold.control.limits). After
        # the zygote's fork, so pool workers keep the limit the daemon was started with.
        nofile, _ = raise_fd_limit()
        log.debug("open-file limit: %d", nofile)
        if config.store:
            # Before the store is opened (a migration or a sweep by a second daemon would harm the first).
            self.state_lock = StateLock.acquire(config.state_dir, config.socket)
            try:
                self.store = StateStore(config.state_dir / "state.db", sync=config.sync)
            except BaseException:
                self.state_lock.release()
                raise
            for engine in engines.all():
                engine.set_daemon_id(self.store.daemon_id)
            if sink is not None:  # the journal's watermark: lifecycle records of a crash are replayed
                sink.keep_watermark(os.fspath(config.state_dir / "journal.seq"))
            if sink is not None and sink.target != "journal" and config.log_job_max_bytes:
                try:  # each job's log in a file (with journald, procctl logs reads journald)
                    sink.keep_files(JobLogFiles(config.state_dir / "logs", config.log_job_max_bytes))
                except OSError as exc:
                    log.error("cannot keep the jobs' logs in %s (%s): procctl logs shows the daemon's "
                              "recent lines only", config.state_dir / "logs", exc)
        authority = Authority(config.admin_group)  # one for the policy and the "user" field
        self.scheduler = Scheduler(
            self.loop,
            engines,
            aging=config.priority_aging,
            store=self.store,
            retention_age=config.retention_age or None,
            retention_count=config.retention_count or None,
            max_interruptions=config.max_interruptions,
            authority=authority,
            sink=sink,
        )
        self.scheduler.listeners.append(self._on_finished)
        self.scheduler.limits = config.limits()
        self.scheduler.gates.set_limits(config.locks)
        #: what was changed at run time of each named queue (procctl queue set, pause --queue):
        #: name -> {"parallel": int | None, "paused": record | None}; kept in queues.json
        self._queue_settings: dict[str, dict[str, Any]] = {}
        self._apply_queues()
        self.scheduler.status_page_size = config.status_page_size
        self.scheduler.quota.max_queued_tasks = config.max_queued_tasks or None
        self.scheduler.quota.max_user_tasks = config.max_user_tasks or None
        self.ctx = zmq.Context()
        self.policy = Policy(authority, self.job_owner)
        self.control = ControlServer(
            self.ctx,
            config.socket,
            build_handlers(self),
            config.max_message_size,
            group=config.group,
            inherited_fd=inherited_fd,
            authorize=self.policy.authorize,
            limits=ServerLimits(
                max_connections=connection_cap(config.max_connections, config.workers),
                max_queued_replies=config.max_queued_replies,
                max_queued_reply_bytes=config.max_queued_reply_bytes,
                max_waits_per_peer=config.max_waits_per_peer,
                max_pending_waits=config.max_pending_waits,
                max_waits_per_user=config.max_waits_per_user,
            ),
        )
        self.control.limits = config.limits()
        self.control.expect_work = self._expect_work
        self.scheduler.metrics.recent.resize(config.health_success_window)
        #: the verdict systemd's status line carries (sent again when it changes)
        self._verdict: str | None = None
        self.export: PrometheusExport | None = None
        if config.metrics_textfile is not None or config.metrics_listen is not None:
            self.export = PrometheusExport(self, config.metrics_textfile, config.metrics_listen,
                                           config.metrics_interval)
            self.scheduler.metrics.on_change = self.export.changed

    # -- lifecycle ----------------------------------------------------------------------------

    def _expect_work(self, uid: int | None) -> None:
        """A submit by ``uid`` is arriving (not read yet): let the executors get ready for it."""
        for executor in self.engines.all():
            executor.expect_work(uid)
        if self.export is not None:
            self.export.changed()

    def start(self) -> None:
        """Recover the store, start the executors, bind the socket, then announce readiness."""
        assert self.control is not None
        self.control.bind()  # first: a second daemon must be refused before it touches anything
        for executor in self.engines.all():
            executor.start(self.loop, self.scheduler)
        if self.config.store:  # (before recovery: its first pump pass sees the pauses)
            self.scheduler.paused = pausefile.load(self.config.state_dir)
            self._queue_settings = pausefile.load_queues(self.config.state_dir)
            self._apply_queues()
            for name, entry in sorted(self._queue_settings.items()):
                if entry["paused"] is not None:
                    log.warning("queue %s is paused (by %s): nothing new of it starts until procctl "
                                "resume --queue %s", name, entry["paused"]["by"], name)
        recovered = self.scheduler.recover()
        self.scheduler.flush()
        if self.scheduler.paused is not None:
            log.warning("procpoold is paused (by %s): nothing new starts until procctl resume --all",
                        self.scheduler.paused["by"])
        if self.sink is not None and self.sink.files is not None:
            known = self.scheduler.jobs.keys() | self.scheduler.finished.keys()
            swept = self.sink.files.sweep(lambda job: str(job) in known)
            if swept:
                log.info("removed the log files of %d job(s) the daemon no longer keeps", swept)
        if recovered.get("jobs"):
            log.info(
                "state recovered: %(jobs)d jobs, %(resumed)d resumed, %(held)d held, "
                "%(interrupted)d interrupted attempts",
                recovered,
            )
        for sock, callback in self.control.readers():
            self.loop.add_reader(sock, callback)
        self.control.call_later = self.loop.call_later
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.handle_stop_signal)
        self.loop.add_signal_handler(signal.SIGHUP, self.handle_sighup)
        if os.environ.get("PROCPOOL_TEST_HOOKS") == "1":
            # Tests only: SIGUSR2 wedges the loop, to prove the watchdog restarts a stuck daemon;
            # a command's pid that no other commit carries is never written (the crash tests then
            # prove the next start finds the command by its identity).
            self.loop.add_signal_handler(signal.SIGUSR2, self._wedge)
            if os.environ.get("PROCPOOL_TEST_NO_PID_FLUSH") == "1":
                self.scheduler.pid_flush_delay = None
        self.scheduler.listeners.append(lambda _ref: self._status_changed())
        if self._watchdog_interval is not None:
            self.loop.call_later(self._watchdog_interval, self._watchdog_tick)
        if self.export is not None:
            self.export.start(self.loop)
        self._announce_when_warm(time.monotonic() + 30)

    def _announce_when_warm(self, deadline: float) -> None:
        """READY=1 once the socket answers (bound above), the store is recovered and the pool is warm."""
        starting = sum(engine.health().starting for engine in self.engines.all())
        if self.sink is not None and self.sink.starting():
            starting += 1  # the journal forwarder: records logged from READY on go out at once
        if starting and time.monotonic() < deadline:
            self.loop.call_later(0.005, lambda: self._announce_when_warm(deadline))  # start-up only
            return
        if starting:
            log.warning("%d process(es) (workers, the journal forwarder) still starting after 30s; "
                        "announcing readiness anyway", starting)
        self._ready = True
        log.info(
            "procpoold %s ready on %s (pid %d, %d workers)",
            __version__,
            self.config.socket,
            os.getpid(),
            self.config.workers,
            extra={"journal_fields": {"MESSAGE_ID": MESSAGE_READY}},
        )
        systemd.ready(self._status_text())
        if self.export is not None:
            self.export.render_now()

    def _status_text(self) -> str:
        verdict = metrics_report.health(self)
        self._verdict = verdict["health"]
        busy = self._workers_summary()["busy"]
        running = self.scheduler.by_state().get("running", 0)
        why = f" ({'; '.join(verdict['reasons'])})" if verdict["reasons"] else ""
        return (
            f"{verdict['health']}{why}: "
            f"{running} job{'s' if running != 1 else ''} running, {self.scheduler.queued()} queued, "
            f"{busy}/{self.config.workers} workers busy"
        )

    def _status_changed(self) -> None:
        """Refresh systemd's STATUS= at most once a second, and only while things change."""
        if self._status_timer is None and self._ready and self._notify_status:
            self._status_timer = self.loop.call_later(1.0, self._push_status)

    def _push_status(self) -> None:
        self._status_timer = None
        if not self._draining:
            systemd.status(self._status_text())

    def _watchdog_tick(self) -> None:
        """WATCHDOG=1 from a loop timer: the ping is sent only when the loop gets round to its
        timers, so a wedged loop (a handler that never returns) stops the pings and systemd
        restarts the daemon."""
        assert self._watchdog_interval is not None
        systemd.watchdog()
        # The health verdict can change with no task ending (a worker crash-loops, the log target
        # stalls): the status line follows it at the watchdog's pace, without a timer of its own.
        if self._ready and self._notify_status and not self._draining and self._status_timer is None \
                and metrics_report.health(self)["health"] != self._verdict:
            systemd.status(self._status_text())
        self.loop.call_later(self._watchdog_interval, self._watchdog_tick)

    def _wedge(self, _signum: int) -> None:
        log.warning("SIGUSR2 with PROCPOOL_TEST_HOOKS=1: wedging the event loop on purpose")
        while True:
            time.sleep(3600)

    def handle_sighup(self, _signum: int) -> None:
        """Reload: re-read the config, apply what can change at run time, resize the pool."""
        if self.reload_config is None:
            return
        systemd.reloading()
        identity_of.cache_clear()  # users and groups are read again (they are also cached for a minute only)
        try:
            new = self.reload_config()
        except Exception as exc:  # a bad config keeps the old one running
            log.error("reload failed, keeping the current settings: %s", exc)
            systemd.reloaded(self._status_text())
            return
        fixed = [
            name
            for name in ("socket", "state_dir", "group", "admin_group", "max_message_size", "sync", *_SERVER,
                         "engine", "dask_scheduler", "metrics_textfile", "metrics_listen", "metrics_interval")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if fixed:
            log.warning("reload: %s take effect only after a restart", ", ".join(fixed))
        if new.workers != self.config.workers:
            self.pool_resize(new.workers)
        logging.getLogger().setLevel(new.log_level.upper())
        self.scheduler.retention_age = new.retention_age or None
        self.scheduler.retention_count = new.retention_count or None
        self.scheduler.max_interruptions = new.max_interruptions
        sink = self.sink
        if sink is not None:
            sink.put_timeout = new.log_put_timeout
            if sink.files is not None and new.log_job_max_bytes:
                sink.files.set_max_bytes(new.log_job_max_bytes)
            elif bool(sink.files) != bool(new.log_job_max_bytes) and new.log_target != "journal":
                log.warning("reload: log_job_max_bytes 0 (no log files) or back takes effect only after a "
                            "restart")
        self.scheduler.status_page_size = new.status_page_size
        if new.health_success_window != self.config.health_success_window:
            self.scheduler.metrics.recent.resize(new.health_success_window)
        self.scheduler.quota.max_queued_tasks = new.max_queued_tasks or None
        self.scheduler.quota.max_user_tasks = new.max_user_tasks or None
        for queue in self.scheduler.queues.values():
            queue.aging = new.priority_aging
        self.scheduler.gates.set_limits(new.locks)
        kept = sorted(name for name, entry in self._queue_settings.items()
                      if entry["parallel"] is not None and name in new.queues
                      and new.queues[name] != entry["parallel"])
        if kept:
            log.warning("reload: the parallelism set at run time (procctl queue set) is kept for queue(s) "
                        "%s; procctl queue set NAME --parallel N changes it", ", ".join(kept))
        self._apply_queues(new.queues)
        self.config = replace(
            new, **{name: getattr(self.config, name) for name in fixed}, workers=self.config.workers
        )
        self.scheduler.limits = self.config.limits()  # for new jobs and requests
        if self.control is not None:
            self.control.limits = self.config.limits()
        log.info("configuration reloaded (%d workers)", self.config.workers)
        systemd.reloaded(self._status_text())

    def run(self) -> None:
        old = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            self.loop.run()
        finally:
            gc.set_threshold(*old)

    def close(self) -> None:
        """Release everything the daemon holds (safe to call after a failed start)."""
        systemd.stopping(f"stopping: {self.stop_reason or 'closing'}")
        export = getattr(self, "export", None)  # (None after a failed start too)
        if export is not None:
            export.close()
        if hasattr(self, "scheduler"):
            self.scheduler.stop_accepting()
        for executor in self.engines.all():
            try:
                executor.shutdown(0)  # the drain already waited; stop what is left
            except Exception:
                log.exception("executor %s did not shut down cleanly", executor.name)
        try:
            if hasattr(self, "scheduler") and self.store_failure is None:
                self.loop.run_once(0)  # let outcomes reported during shutdown reach the store
                self.scheduler.flush()
            if self.store is not None:
                self.store.close()
        except StoreFailure as exc:
            self.store_failed(exc)
        if self.control is not None:
            self.control.close()
        self.loop.close()
        if self.ctx is not None:
            self.ctx.term()
        if self.state_lock is not None:
            self.state_lock.release()  # last: the store is closed
        log.info("procpoold stopped (%s)", self.stop_reason or "closed")
        if self.sink is not None:
            self.sink.stop()  # flush; from here on records are written synchronously

    def store_failed(self, exc: StoreFailure) -> None:
        """A write to the state file failed: say so once; the caller stops the daemon."""
        if self.store_failure is None:
            self.store_failure = str(exc)
            self.stop_reason = "the state file cannot be written"
            log.critical("%s; stopping (committed work is resumed at the next start)", exc)

    def handle_stop_signal(self, signum: int) -> None:
        if self._draining:  # a second signal: stop draining now
            log.info("%s while draining: stopping running attempts now", signal.Signals(signum).name)
            self.loop.call_soon(self.loop.stop)
            return
        self.request_shutdown(f"received {signal.Signals(signum).name}")

    # -- DaemonAPI ----------------------------------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        """Stop gracefully: take no new attempts, wait up to drain_timeout for running ones."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self._draining = True
        self.scheduler.stop_accepting()
        running = self.scheduler.running()
        log.info(
            "stopping: %s; %d running attempt(s) to drain",
            reason,
            running,
            extra={"journal_fields": {"MESSAGE_ID": journal.MessageId.DAEMON_STOPPING}},
        )
        if running == 0:
            self.loop.call_soon(self.loop.stop)  # after this iteration, so a shutdown request gets its reply
            return
        systemd.stopping(f"draining {running} running attempt(s)")
        systemd.extend_timeout(self.config.drain_timeout + 10)
        self._drain_timer = self.loop.call_later(self.config.drain_timeout, self._drain_expired)
        self.scheduler.listeners.append(self._check_drained)

    def _check_drained(self, _ref: str) -> None:
        if self.scheduler.running() == 0:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self.loop.call_soon(self.loop.stop)

    def _drain_expired(self) -> None:
        log.warning(
            "drain timeout (%gs) reached with %d attempt(s) still running; they are interrupted",
            self.config.drain_timeout,
            self.scheduler.running(),
        )
        self.loop.stop()

    def info(self) -> PingReply:
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}

    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    def metrics(self) -> dict[str, Any]:
        """The ``metrics`` operation's reply (see procpoold.metrics_report)."""
        return metrics_report.report(self)

    def summary(self) -> dict[str, Any]:
        return {
            **self.info(),
            "paused": self.scheduler.paused,
            "queues": self.queue_info()["queues"],
            "health": metrics_report.health(self),
            "started_at": self.started_at,
            "uptime": time.monotonic() - self._started_mono,
            "socket": os.fspath(self.config.socket),
            "workers": self._workers_summary(),
            "executors": {e.name: e.info() for e in self.engines.all()},
            "jobs": {
                "by_state": self.scheduler.by_state(),
                "queued": self.scheduler.queued(),
                "running": self.scheduler.running(),
                "tasks_unfinished": self.scheduler.quota.queued,
            },
            "counters": dict(self.scheduler.counters),
            "logging": self.sink.stats() if self.sink is not None else {},
            "requests": self._requests_summary(),
            "store": {
                "path": os.fspath(self.config.state_dir / "state.db") if self.store else None,
                "commits": self.store.commits if self.store else 0,
                **(self.store.stats() if self.store else {}),
            },
        }

    def _requests_summary(self) -> dict[str, Any]:
        control = self.control
        if control is None:
            return {"served": 0, "errors": 0}
        return {
            "served": control.requests_served,
            "errors": control.errors_replied,
            "replies_dropped": control.replies_dropped,
            "replies_refused": control.reply_budget.refused,
            "connections": len(control.connections.open),
            "max_connections": control.connections.cap,
            "connections_refused": control.connections.refused,
            "connections_shed": control.connections.shed,
            "pending_waits": control.waits.pending,
        }

    def _workers_summary(self) -> dict[str, Any]:
        """The worker processes of every engine by state, ``busy``: the attempts they run (engines
        without worker processes, such as the commands engine, are counted only in their own
        ``busy``), and each engine's health."""
        states: dict[str, int] = {}
        busy = 0
        engines: dict[str, Any] = {}
        for engine in self.engines.all():
            health = engine.health()
            for state, n in health.workers.items():
                states[state] = states.get(state, 0) + n
            if health.workers:
                busy += health.busy
            engines[engine.name] = {"up": health.up, "reason": health.reason, "busy": health.busy}
        return {"configured": self.config.workers, "states": states, "busy": busy, "engines": engines}

    def submit(
        self,
        job: dict[str, Any],
        uid: int | None,
        after: list[str] | None,
        wait: float | None = None,
        view: View = "full",
        replace: Peer | None = None,
    ) -> dict[str, Any] | Deferred:
        replaced: list[str] = []
        check = None if replace is None else self._owner_check("submit", "replace it", replace, replaced)
        accepted, existing = self.scheduler.submit(job, uid, after, check)
        reply: dict[str, Any] = {
            "id": accepted.id,
            "name": accepted.spec.name,
            "existing": existing,
            "tasks": len(accepted.tasks),
        }
        if replace is not None:
            reply["replaced"] = replaced
        if wait is None:
            return reply
        # one round trip: the reply has the final status
        return self.wait(accepted.id, wait, extra=reply, view=view)

    def job_status(
        self,
        ref: str,
        tasks_from: int = 0,
        tasks_limit: int | None = None,
        reader: Peer | None = None,
        view: View = "full",
        changes_since: str | None = None,
        tasks_state: str | None = None,
    ) -> dict[str, Any]:
        """One job's status with a page of its tasks in ``view`` (bounded: see core.status), or one
        task's; with ``tasks_state`` only the tasks in that state (full view).

        A ``reader`` who may not read the job's logs (the ``logs`` rule) gets no log tails."""
        job, index = self.scheduler.resolve(ref)
        reply: Any
        if index is not None:
            reply = self.scheduler.finished_status(ref)
        else:
            size = self.config.status_page_size
            limit = size if tasks_limit is None else min(tasks_limit, size)
            reply = status.page(job, view, tasks_from, limit, tasks_limit, changes_since, tasks_state)
        if not self.policy.may_read_logs(reader, job.submitter_uid):
            status.strip_tails(reply)
        return dict(reply)

    def job_list(self, state: str | None, since: float | None, limit: int | None,
                 name: str | None = None, user: str | None = None, tag: str | None = None,
                 ) -> tuple[list[dict[str, Any]], int]:
        return self.scheduler.job_list(state, since, limit, name, _uid_of(user, "status"), tag)

    def cancel(
        self, ref: str, by: int | None = None, signum: int | None = None, grace: float | None = None
    ) -> dict[str, Any]:
        return self.scheduler.cancel(ref, by, signum, grace)

    def cancel_many(self, args: dict[str, Any], peer: Peer | None, signum: int | None) -> dict[str, Any]:
        """``cancel`` with ``ids`` or filters (or a dry run): each job checked against the owner
        rule (see Policy.check_owner; a filter skips, and counts, the jobs the peer may not change)."""
        by = peer.uid if peer else None
        grace, dry_run = args.get("grace"), bool(args.get("dry_run"))
        if peer is None:  # (the policy lets no such peer cancel; kept for the type)
            raise ProcpoolError(ErrorCode.PERMISSION_DENIED, "cancel: your credentials could not be read")
        if "id" in args or "ids" in args:
            refs = [args["id"]] if "id" in args else list(args["ids"])
            check = self._owner_check("cancel", "cancel it", peer)
            return self.scheduler.cancel_many(refs, by, check, signum, grace, dry_run)
        uid = _uid_of(args.get("user"), "cancel")

        def allowed(job: Job) -> bool:
            return self.policy.may_change(peer, job.submitter_uid)

        result = self.scheduler.cancel_matching(args.get("state"), args.get("name"), uid, by, allowed,
                                                signum, grace, dry_run)
        if not dry_run and peer.admin and result["cancelled"]:
            log.info("administrator %s cancelled %d job(s) by filter", peer.uid, len(result["cancelled"]))
        return result

    def _owner_check(
        self, op: str, verb: str, peer: Peer, seen: list[str] | None = None
    ) -> Callable[[Job], bool]:
        """The owner rule for each job an operation on several jobs changes (raises its refusal);
        the ids of the jobs it allowed go to ``seen``."""

        def check(job: Job) -> bool:
            self.policy.check_owner(op, verb, job.id, job.id, job.submitter_uid, peer)
            if seen is not None:
                seen.append(job.id)
            return True

        return check

    def stop(self, ref: str, by: int | None = None) -> dict[str, Any]:
        return self.scheduler.stop(ref, by)

    def pool_info(self) -> dict[str, Any]:
        """The worker processes of every engine (each map names its ``engine``), and ``info``: the
        summary of the first engine that has worker processes (the pool's, for ``procctl pool``), or
        of the first engine registered when none has any."""
        engines = self.engines.all()
        workers: list[dict[str, Any]] = []
        info: dict[str, Any] | None = None
        for engine in engines:
            own = engine.workers()
            if info is None and (own or engine.health().workers):
                info = engine.info()
            workers.extend({**w, "engine": engine.name} for w in own)
        if info is None:
            info = engines[0].info() if engines else {}
        return {"workers": workers, "info": info, "queues": self.queue_info()["queues"]}

    def pool_resize(self, workers: int) -> dict[str, Any]:
        """Resize every engine that can be resized to ``workers`` (see Executor.resize)."""
        fixed = [engine.name for engine in self.engines.all() if not engine.resize(workers)]
        self.config = replace(self.config, workers=workers)
        log.info("pool resized to %d workers%s", workers,
                 f" (not resizable: {', '.join(fixed)})" if fixed else "")
        self.scheduler.kick()
        return {"workers": workers}

    def resume(self, ref: str | None) -> dict[str, Any]:
        """Release a held or paused job, or (``ref`` None) end the daemon's pause."""
        if ref is not None:
            return self.scheduler.resume(ref)
        was = self.scheduler.paused
        if was is None:
            raise ProcpoolError(ErrorCode.CONFLICT, "procpoold is not paused",
                                "procctl resume ID releases a held or paused job")
        if self.config.store:
            pausefile.save(self.config.state_dir, None)  # (an OSError is the reply: still paused)
        self.scheduler.resume_all()
        if self.export is not None:
            self.export.changed()  # (its health line)
        return {"all": True, "released": "paused", "paused_by": was["by"], "paused_at": was["at"]}

    def pause(self, ref: str | None, by: int | None, stop: bool = False) -> dict[str, Any]:
        """Pause a job (see Scheduler.pause) or, with ``ref`` None, the whole daemon (stored
        before the reply, so that a restart comes back paused)."""
        if ref is not None:
            return self.scheduler.pause(ref, by, stop)
        first = self.scheduler.paused is None
        reply = self.scheduler.pause_all(by, stop)
        if first and self.config.store:
            try:
                pausefile.save(self.config.state_dir, reply)
            except OSError:
                self.scheduler.resume_all()  # not durable: not paused, and the caller is told
                raise
        if self.export is not None:
            self.export.changed()
        return {"all": True, **reply, "already": not first}

    # -- named queues -----------------------------------------------------------------------------

    def _apply_queues(self, configured: dict[str, int] | None = None) -> None:
        """Give the scheduler every queue's parallelism (the config's, with what was set at run time
        winning) and the queues' pauses."""
        gates = self.scheduler.gates
        queues = dict(self.config.queues if configured is None else configured)
        for name, entry in self._queue_settings.items():
            if entry["parallel"] is not None:
                queues[name] = entry["parallel"]
            if entry["paused"] is not None and name not in gates.queue_paused:
                gates.pause_queue(name, entry["paused"])
        gates.set_queues(queues)

    def _save_queues(self, name: str, **change: Any) -> None:
        """Store a queue's run-time change before the reply (an OSError is the reply, and nothing
        changed)."""
        settings = {k: dict(v) for k, v in self._queue_settings.items()}
        entry = settings.setdefault(name, {"parallel": None, "paused": None})
        entry.update(change)
        if entry["parallel"] is None and entry["paused"] is None:
            del settings[name]
        if self.config.store:
            pausefile.save_queues(self.config.state_dir, settings)
        self._queue_settings = settings

    def queue_info(self) -> dict[str, Any]:
        """The ``queue`` operation: every named queue, by name."""
        gates = self.scheduler.gates
        waiting = gates.queue_waiting()
        names = set(gates.queues) | set(gates.queue_running) | set(waiting)
        out = []
        for name in sorted(names):
            set_here = (self._queue_settings.get(name) or {}).get("parallel") is not None
            out.append({
                "name": name,
                "parallel": gates.queues.get(name, 1),
                "running": gates.queue_running.get(name, 0),
                "waiting": waiting.get(name, 0),
                "paused": gates.queue_paused.get(name),
                "source": "set" if set_here else "config" if name in self.config.queues else "unknown",
            })
        return {"queues": out}

    def queue_set(self, name: str, parallel: int, by: int | None) -> dict[str, Any]:
        """Make a queue or change its parallelism (stored before the reply)."""
        gates = self.scheduler.gates
        before = gates.queues.get(name)
        self._save_queues(name, parallel=parallel)
        gates.set_queue(name, parallel)
        log.info("queue %s: parallel %d%s, set by %s", name, parallel,
                 f" (was {before})" if before is not None else " (a new queue)", paused_by(by))
        return {"name": name, "parallel": parallel, "was": before}

    def pause_queue(self, name: str, by: int | None, stop: bool = False) -> dict[str, Any]:
        """Pause a named queue (see Scheduler.pause_queue), stored before the reply."""
        reply = self.scheduler.pause_queue(name, by, stop)
        if not reply["already"]:
            try:
                self._save_queues(name, paused={k: reply[k] for k in ("by", "uid", "at", "stop")})
            except OSError:
                self.scheduler.resume_queue(name)  # not durable: not paused, and the caller is told
                raise
        return reply

    def resume_queue(self, name: str) -> dict[str, Any]:
        """End a named queue's pause (stored before the reply)."""
        was = self.scheduler.gates.queue_paused.get(name)
        if was is None:
            raise ProcpoolError(ErrorCode.CONFLICT, f'queue "{name}" is not paused',
                                "procctl queue shows which queues are paused")
        self._save_queues(name, paused=None)
        self.scheduler.resume_queue(name)
        return {"queue": name, "released": "paused", "paused_by": was["by"], "paused_at": was["at"]}

    def explain(self, ref: str) -> dict[str, Any]:
        """Why a task (or a job's unfinished tasks) is in its state: see Scheduler.explain."""
        return self.scheduler.explain(ref)

    def retry(self, ref: str, tasks: list[str] | None, by: int | None) -> dict[str, Any]:
        """Run a finished job's tasks that did not complete again: see Scheduler.retry."""
        return self.scheduler.retry(ref, tasks, by)

    def logs(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.sink is None:
            raise RuntimeError("logging is not set up")
        job, index = self.scheduler.resolve(args["id"])
        tasks = job.tasks

        def name(i: int) -> str:
            return tasks[i].spec.name if 0 <= i < len(tasks) else f"#{i}"

        page = self.config.max_message_size // 2  # (the page's estimate of its size leaves room)
        if index is None:
            return journal.logs_op(self.sink, args, job_id=job.id, task_id=None, finished=job.finished,
                                   since=job.created_at, names=name, page_bytes=page)
        t = job.tasks[index]
        return journal.logs_op(self.sink, args, job_id=job.id, task_id=t.id,
                               finished=t.state in FINAL_TASK_STATES, since=job.created_at, names=name,
                               page_bytes=page)

    def clean(self, state: str | None, before: float | None, owner: int | None = None) -> dict[str, Any]:
        """Remove finished jobs; with ``owner`` (a uid) only that user's, counting the others left."""
        removed, left = self.scheduler.clean(state, before, owner)
        return {"removed": removed, "others_left": left}

    def job_owner(self, ref: str) -> tuple[str, int | None]:
        """The job id and submitter uid of a job or task reference (for the access policy)."""
        job, _ = self.scheduler.resolve(ref)
        return job.id, job.submitter_uid

    def wait(
        self,
        ref: str,
        timeout: float,
        extra: dict[str, Any] | None = None,
        view: View = "full",
        changes_since: str | None = None,
    ) -> dict[str, Any] | Deferred:
        """Answer now if ``ref`` has finished, else when it finishes or ``timeout`` runs out; a
        job's status comes in ``view``.

        ``extra`` is merged into the answer (submit-and-wait replies with the submit result too).
        """
        if self.scheduler.is_finished(ref) or timeout <= 0:
            reply = {**(extra or {}), **self.scheduler.finished_status(ref, view, changes_since)}
            if self.scheduler.durable_now():
                return reply
            # It ended in this iteration, and its commit is still to come: answer after it.
            pending = Deferred()
            self.scheduler.when_durable(lambda: pending.resolve(reply))
            return pending
        deferred = Deferred()
        # Keyed as the scheduler notifies (a job id or "12.3"): a wait on "12/name" is one on "12.3".
        job, index = self.scheduler.resolve(ref)
        key = job.id if index is None else job.tasks[index].id
        entry: tuple[Deferred, Callable[..., None]] | None = None

        def answer(built: dict[str, dict[str, Any]] | None = None) -> None:
            """``built``: the finished statuses of ``key`` per view, built once for all its waiters."""
            nonlocal entry
            if entry is None:
                return  # answered already
            waits = self._waits.get(key, {})
            if entry in waits:
                del waits[entry]
                if not waits:  # timed out: no empty entry stays behind per reference
                    del self._waits[key]
            # The entry holds this closure, which holds the entry (and the timer, until cancelled):
            # let go of both now, so that they are freed at once rather than by the cyclic
            # garbage collector (a pause every few thousand waits).
            entry = None
            timer.cancel()
            if deferred.done:
                return
            try:
                # (a reply to changes_since is each waiter's own: built each time)
                found = None if built is None or changes_since is not None else built.get(view)
                if found is None:
                    found = self.scheduler.finished_status(ref, view, changes_since)
                    if built is not None and changes_since is None:
                        built[view] = found
                deferred.resolve({**(extra or {}), **found, "id": ref})
            except ProcpoolError as exc:
                deferred.reject(exc)

        timer = self.loop.call_later(timeout, answer)
        entry = pair = (deferred, answer)
        self._waits.setdefault(key, {})[pair] = None
        return deferred

    def _on_finished(self, ref: str) -> None:
        waits = self._waits.pop(ref, None)  # called for every task: usually nobody waits
        if waits:
            # Each status is built by the first waiter that asks for its view (an error reaches
            # each), once the commit that holds the end is written: an answer must not report what
            # a crash before the commit would undo.
            queue = deque(waits)
            self.scheduler.when_durable(lambda: self._answer_waits(queue, {}))

    def _answer_waits(
        self, waits: deque[tuple[Deferred, Callable[..., None]]], built: dict[str, dict[str, Any]]
    ) -> None:
        """Answer ANSWERS_PER_TURN waiters now and the rest at the next turns of the loop: each
        answer of a big job is a page of up to status_page_size tasks, and thousands of them in one
        turn would stall the loop (and its watchdog) for minutes."""
        for _ in range(min(ANSWERS_PER_TURN, len(waits))):
            _deferred, answer = waits.popleft()
            answer(built)
        if waits:
            self.loop.call_later(0, lambda: self._answer_waits(waits, built))
