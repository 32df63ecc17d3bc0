"""The Dask engine's own thread: an asyncio loop holding the ``distributed.Client``.

The daemon's loop never waits on Dask. It hands the bridge commands (:meth:`Bridge.submit`,
:meth:`Bridge.stop`, :meth:`Bridge.reply`, ...) through a queue and one
``call_soon_threadsafe`` per batch; the bridge hands back events (tuples, see
:class:`~procpoold.engines.dask.DaskExecutor` for their meaning) through a queue and one byte on
a pipe per batch, which the daemon's loop reads.

The bridge connects, and connects again whenever the client has closed (the scheduler was gone
longer than the client's own reconnection window), with a growing pause between tries (at most
:data:`MAX_RETRY` seconds). While it is connected it looks at the client's state once a second:
the Dask client itself wakes up that often for its heartbeats, so an idle daemon with a Dask
engine adds nothing that matters.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("procpoold.engines.dask")

#: Longest pause between two attempts to reach the scheduler (seconds).
MAX_RETRY = 5.0
#: How often the connection's state is looked at while connected (seconds).
WATCH_INTERVAL = 1.0

Event = tuple[Any, ...]


class Bridge:
    """One thread, one asyncio loop, one Dask client (see the module docstring)."""

    def __init__(self, address: str, topic: str, post: Callable[[list[Event]], None],
                 connect_timeout: float = 10.0, run: str = "") -> None:
        self.address = address
        self.topic = topic
        #: this daemon process's tag: the workers know its attempts by it and their ids (attempt
        #: ids are unique in one daemon, not among the daemons that share a cluster)
        self.run = run
        self._post = post
        self.connect_timeout = connect_timeout
        self._commands: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._futures: dict[str, Any] = {}
        #: commands that need a connection, kept while there is none
        self._held: list[tuple[Any, ...]] = []
        self._state = "connecting"
        self._runner: Any = None
        #: broadcasts and cancels in flight (a stopping daemon waits for them before it disconnects)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters: set[asyncio.Task[Any]] = set()
        #: attempts whose result came as an event (see procpoold.remote.runner.EVENT_RESULT)
        self._evented: set[str] = set()
        #: the client's connection to the scheduler that the topics were subscribed on
        self._subscribed_on: Any = None
        #: (workers, threads) of the cluster as last read (see _watch)
        self._known: tuple[int, int] | None = None

    # -- from the daemon's thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="procpool-dask", daemon=True)
        self._thread.start()
        self._started.wait(10.0)

    def command(self, *cmd: Any) -> None:
        """Queue a command for the bridge's loop (``submit``, ``stop``, ``cancel``, ``reply``,
        ``stop_daemon``, ``shutdown``)."""
        with self._lock:
            self._commands.append(cmd)
            if self._scheduled or self._loop is None:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has ended
            pass

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- on the bridge's thread --------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:
            log.exception("the Dask engine's thread failed")
            self._post([("down", "the Dask engine's thread failed (see the log)")])

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        with self._lock:
            if self._commands and not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._drain)
        from distributed import Client

        from procpoold.remote import runner

        self._runner = runner
        pause = 0.2
        while not self._stop.is_set():
            try:
                client = await Client(  # type: ignore[no-untyped-call]
                    self.address, asynchronous=True, timeout=self.connect_timeout, name="procpoold",
                    set_as_default=False)
            except Exception as exc:
                reason = f"cannot reach the Dask scheduler at {self.address}: {_why(exc)}"
                self._set_state("down", reason)
                await self._sleep(pause)
                pause = min(MAX_RETRY, pause * 2)
                continue
            pause = 0.2
            self._client = client
            self._subscribe(client)
            await self._capacity()
            self._set_state("up", None)
            held, self._held = self._held, []
            for cmd in held:
                self._do(cmd)
            await self._watch(client)
            if self._stop.is_set():
                await self._settle(self.connect_timeout)
                for waiter in self._waiters:
                    waiter.cancel()
            self._client = None
            if not self._stop.is_set():
                self._set_state("down", f"lost the connection to the Dask scheduler at {self.address}")
            try:
                await client.close()
            except Exception:
                pass
        self._fail_all("the daemon is stopping")

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _watch(self, client: Any) -> None:
        """Until the client has closed (or the daemon stops): report it down while it reconnects."""
        assert self._stop is not None
        while not self._stop.is_set():
            status = client.status
            if status in ("closing", "closed", "failed"):
                return
            if status == "running":
                self._resubscribe(client)  # (and reads the cluster's workers again)
                if self._totals(client) not in (None, self._known):
                    # Workers came or went unheard of: one that registered between the first
                    # read of the workers and the subscription to the cluster's events (the
                    # client's own summary of the cluster, refreshed every 2 s, tells; no call).
                    await self._capacity()
            if status == "running" and self._state != "up":
                await self._capacity()
                self._set_state("up", None)
            elif status != "running" and self._state == "up":
                self._set_state("down", f"reconnecting to the Dask scheduler at {self.address}")
            await self._sleep(WATCH_INTERVAL)

    def _subscribe(self, client: Any) -> None:
        """The daemon's topic (what attempts send home) and the cluster's (workers that come and
        go), on the connection the client has now."""
        client.subscribe_topic(self.topic, self._on_topic)
        client.subscribe_topic("all", self._on_cluster)
        self._subscribed_on = client.scheduler_comm

    def _resubscribe(self, client: Any) -> bool:
        """Subscribe again if the client has connected again on its own (to a scheduler restarted
        within its timeout): distributed's Client does not renew its topic subscriptions then, and
        without them no event of an attempt (its start, its lines, a small result) would come home.
        Checked before each command too, so nothing is submitted before the subscription."""
        if client.scheduler_comm is not self._subscribed_on:
            log.info("subscribing again to the Dask scheduler's events at %s (it was reconnected)",
                     self.address)
            self._subscribe(client)
            if self._loop is not None:
                self._loop.create_task(self._capacity())
            return True
        return False

    def _set_state(self, state: str, reason: str | None) -> None:
        if state == self._state and state == "up":
            return
        self._state = state
        self._post([(state, reason)])

    async def _capacity(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            info = await client.scheduler.identity(n_workers=-1)
        except Exception as exc:
            log.debug("cannot read the Dask cluster's workers: %s", exc)
            return
        workers: list[dict[str, Any]] = []
        for address, w in (info.get("workers") or {}).items():
            workers.append({"worker": str(address), "host": str(w.get("host", "")),
                            "threads": int(w.get("nthreads", 0) or 0),
                            "name": str(w.get("name", address))})
        self._known = (len(workers), sum(int(w["threads"]) for w in workers))
        self._post([("capacity", workers)])

    @staticmethod
    def _totals(client: Any) -> tuple[int, int] | None:
        """Workers and threads of the cluster as the client's cached summary has them."""
        try:
            info = client.scheduler_info()
            return int(info["n_workers"]), int(info["total_threads"])
        except Exception:
            return None

    def _on_topic(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if type(msg) is dict:
            if msg.get("t") == "done" and type(msg.get("aid")) is str:
                self._evented.add(msg["aid"])  # its task's end follows: no fetch then
            self._post([("remote", msg)])

    def _on_cluster(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if type(msg) is not dict:
            return
        action = msg.get("action")
        if action == "remove-worker":
            keys = [str(k) for k in msg.get("processing-tasks") or ()]
            self._post([("worker-lost", str(msg.get("worker", "")), keys)])
        if action in ("add-worker", "remove-worker") and self._loop is not None:
            self._loop.create_task(self._capacity())

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
            cmds = list(self._commands)
            self._commands.clear()
        for cmd in cmds:
            try:
                self._do(cmd)
            except Exception:
                log.exception("a command of the Dask engine failed: %s", cmd[0])

    def _do(self, cmd: tuple[Any, ...]) -> None:
        op = cmd[0]
        client = self._client
        if op == "shutdown":
            assert self._stop is not None
            self._stop.set()
            return
        if client is None or client.status != "running":
            if op == "submit":
                self._post([("lost", cmd[1], f"the Dask scheduler at {self.address} is unreachable")])
            elif op in ("stop", "stop_daemon", "cancel"):
                self._held.append(cmd)
            return
        self._resubscribe(client)
        runner = self._runner
        if op == "submit":
            _, aid, key, payload, priority, worker = cmd
            fut = client.submit(runner.run_attempt, payload, self.topic, key=key, priority=priority,
                                pure=False, retries=0, workers=[worker] if worker else None,
                                allow_other_workers=False)
            self._futures[aid] = fut
            waiter = asyncio.get_running_loop().create_task(self._await(aid, fut))
            self._waiters.add(waiter)
            waiter.add_done_callback(self._waiters.discard)
        elif op == "stop":  # aids on one worker (None: all workers), the grace, and the signal
            _, aids, worker, grace = cmd[:4]
            signum = cmd[4] if len(cmd) > 4 else signal.SIGTERM
            self._spawn(self._broadcast(runner.stop, self.run, aids, grace, int(signum),
                                        workers=[worker] if worker else None))
        elif op == "cancel":  # queued attempts: drop them from Dask, and mark them on every worker
            _, aids, grace = cmd
            futs = [self._futures[a] for a in aids if a in self._futures]
            if futs:
                self._spawn(self._cancel(futs))
            self._spawn(self._broadcast(runner.stop, self.run, aids, grace))
        elif op == "reply":
            _, worker, aid, rid, ok, value = cmd
            self._spawn(
                self._broadcast(runner.deliver, self.run, aid, rid, ok, value, workers=[worker]))
        elif op == "stop_daemon":  # the previous run's attempts (not this run's: see the runner)
            _, daemon_id = cmd
            self._spawn(self._recover(runner.stop_daemon, daemon_id, self.run))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, timeout: float) -> None:
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _await(self, aid: str, fut: Any) -> None:
        # distributed.wait looks up a default client, which this one is not (set_as_default=False,
        # so that task code in this process could never reach it): its coroutine is used directly.
        from distributed.client import _wait

        try:
            await _wait([fut])  # type: ignore[no-untyped-call]
            if fut.status == "finished" and aid in self._evented:
                return
            data = await fut
        except asyncio.CancelledError:
            if self._stop is not None and self._stop.is_set():
                raise
            if self._futures.get(aid) is fut:
                why = "the Dask scheduler dropped the attempt (its connection was lost)"
                self._post([("lost", aid, why)])
            return
        except Exception as exc:
            self._post([("lost", aid, f"the Dask cluster lost the attempt: {_why(exc)}")])
            return
        finally:
            self._evented.discard(aid)
            if self._futures.get(aid) is fut:
                del self._futures[aid]
            fut.release()
        self._post([("done", aid, data)])

    async def _cancel(self, futs: list[Any]) -> None:
        client = self._client
        if client is None:
            return
        try:
            await client.cancel(futs)
        except Exception as exc:
            log.debug("cancelling Dask futures failed: %s", exc)

    async def _broadcast(self, fn: Callable[..., Any], *args: Any, workers: list[str] | None = None) -> Any:
        client = self._client
        if client is None:
            return None
        try:
            return await client.run(fn, *args, workers=workers, on_error="return")
        except Exception as exc:
            log.debug("running %s on Dask workers failed: %s", getattr(fn, "__name__", fn), exc)
            return None

    async def _recover(self, fn: Callable[..., Any], daemon_id: str, keep: str) -> None:
        found = await self._broadcast(fn, daemon_id, keep)
        killed = sum(n for n in (found or {}).values() if isinstance(n, int))
        self._post([("recovered", killed)])

    def _fail_all(self, why: str) -> None:
        events: list[Event] = [("lost", aid, why) for aid in self._futures]
        self._futures.clear()
        if events:
            self._post(events)


def _why(exc: BaseException) -> str:
    """An exception of Dask's as one short line (it goes into status, health and the journal)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def make_wakeup() -> tuple[int, int]:
    """A non-blocking pipe: the bridge writes a byte when it posts, the daemon's loop reads."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return r, w
