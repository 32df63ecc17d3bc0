"""The control socket: a ZeroMQ ROUTER bound on ``ipc://PATH``.

Runs in the daemon's event loop thread. Each readable event drains every frame
that is waiting, decodes it strictly (:mod:`procpool.contract.codec`), checks
the arguments against the operation table, calls the handler and sends the
reply without blocking (a client that stops reading loses its replies, it
never stalls the daemon). Any problem with a request becomes an error reply;
nothing a client sends can raise out of this module.

Binding follows these rules:

* the socket's folder is created mode 0750 (group: ``--group``), the socket
  file is made mode 0660 with the same group;
* the socket's folder must belong to the daemon's user (or root) and be writable by nobody else,
  and every folder above it must belong to root or the daemon's user and be writable by nobody
  else unless sticky: otherwise another user could replace the socket with their own and read
  what clients send (a submit's environment). A socket directly in a shared sticky folder such as
  ``/tmp`` is refused too (anyone may take its name while the daemon is down). The daemon refuses
  to start with one line naming the folder and the fix (:mod:`procpoold.control.socketdir`);
* a socket file on which something still accepts connections means another
  daemon is running: refuse to start;
* a socket file nobody accepts on is stale (a crashed daemon): replace it;
* a file descriptor inherited from systemd's socket activation is adopted with
  ``ZMQ_USE_FD`` (``bind()`` is still required).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from procpool.contract.codec import (
    Request,
    RequestError,
    decode_request,
    encode_error,
    encode_result,
)
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import DEFAULT_LIMITS, Limits, clip
from procpool.contract.ops import check_args
from procpool.contract.paths import endpoint
from procpoold.control.limits import OVER_CAP_GRACE, Connections, ReplyBudget, ServerLimits, Waits
from procpoold.control.socketdir import foreign_path, unsafe_socket_folder

log = logging.getLogger("procpoold.control")

#: Socket-monitor events that open or close a control connection (their value is its fd).
_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
#: Seconds a connection whose reply was dropped (it does not read) gets refusals, not service:
#: a client that never reads costs one served request per pause, not one per request it sends.
STALL_PAUSE = 1.0
STALLED_MAX = 10_000
#: Requests served per turn of the event loop (the rest wait for the next turn, after its timers).
MAX_PER_TURN = 500
#: A submit request, as the client encodes it: ``"op": "submit"`` near the start of the envelope
#: map (its key and value, msgpack). Looked for in the first PEEK_BYTES, before anything is parsed.
_SUBMIT_OP = b"\xa2op\xa6submit"
PEEK_BYTES = 96
#: Frames at least this large are decoded from ZeroMQ's buffer and replies of this size are sent
#: without a copy (below it a copy is cheaper than tracking the buffer).
ZERO_COPY_BYTES = 64 * 1024


class BindError(Exception):
    """The control socket cannot be bound; the message says why, the hint what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request, from the kernel's SO_PEERCRED on the ipc connection."""

    uid: int
    gid: int
    pid: int
    #: set by the access policy for the operations whose rule needs to know (False on reads)
    admin: bool = False

    @classmethod
    def parse(cls, address: str | None) -> Peer | None:
        # libzmq reports ipc peers as "localhost:UID:GID:PID".
        if not address:
            return None
        parts = address.rsplit(":", 3)
        try:
            return cls(int(parts[-3]), int(parts[-2]), int(parts[-1]))
        except (ValueError, IndexError):
            return None


Handler = Callable[[Request, Peer | None], Any]
#: The access policy (procpoold.control.policy): returns the peer or raises permission_denied.
Authorizer = Callable[[Request, Peer | None], Peer | None]
Responder = Callable[[Any], None]


class Deferred:
    """Returned by a handler that answers later (e.g. ``wait``): call :meth:`resolve` or :meth:`reject`."""

    def __init__(self) -> None:
        self._respond: Callable[[bytes], None] | None = None
        self._request_id: Any = None
        self.done = False

    def bind(self, request_id: Any, respond: Callable[[bytes], None]) -> None:
        self._request_id = request_id
        self._respond = respond

    def resolve(self, result: Any) -> None:
        if not self.done and self._respond is not None:
            self.done = True
            self._respond(encode_result(self._request_id, result))

    def reject(self, error: ProcpoolError) -> None:
        if not self.done and self._respond is not None:
            self.done = True
            self._respond(encode_error(self._request_id, error))


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message waits on ``sock`` (ZMQ_EVENTS: no exception when none does)."""
    events = sock.getsockopt(zmq.EVENTS)
    return isinstance(events, int) and bool(events & zmq.POLLIN)


def _answers(path: Path) -> bool:
    """True when a process accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        s.close()


def prepare_socket_dir(path: Path, group: str | None) -> None:
    """Create the socket's folder mode 0750 (and hand it to ``group``) unless it is shared, then
    refuse it (:class:`BindError`) if anyone but this daemon's user and root could change it."""
    folder = path.parent
    created = False
    try:
        folder.mkdir(mode=0o750, parents=True)
        created = True
    except FileExistsError:
        pass
    problem = foreign_path(folder)  # first: never chmod through someone else's symlink
    if problem is None:
        st = folder.stat()
        # Never tighten a folder we do not own or a shared sticky one (such as /tmp).
        if created or (st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX):
            if group is not None:
                os.chown(folder, -1, grp.getgrnam(group).gr_gid)
            os.chmod(folder, 0o750)
        problem = unsafe_socket_folder(folder)
    if problem is not None:
        raise BindError(
            f"refusing to put the control socket in {clip(os.fspath(folder))}: {problem}",
            "give the socket a folder of its own that only the daemon's user (or root) may write, "
            "e.g. remove that folder and let procpoold create it, or choose another --socket",
        )


class ControlServer:
    """The ROUTER socket and the request dispatch."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        path: Path,
        handlers: dict[str, Handler],
        max_message_size: int,
        group: str | None = None,
        inherited_fd: int | None = None,
        authorize: Authorizer | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        limits = limits or ServerLimits()
        self.path = path
        self.handlers = handlers
        #: checked before every handler; None only for servers built without a policy (tests)
        self.authorize = authorize
        self.max_message_size = max_message_size
        #: the container limits a request is decoded with (the daemon's config sets them)
        self.limits: Limits = DEFAULT_LIMITS
        self.group = group
        self.inherited_fd = inherited_fd
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A client that does not read its replies holds at most this many of them (each at most
        # max_message_size): the next are dropped. ROUTER_MANDATORY makes a drop (EAGAIN) or a
        # vanished peer (EHOSTUNREACH) visible to _send instead of silent.
        self.sock.setsockopt(zmq.SNDHWM, limits.max_queued_replies)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        # A hard cap far above the checked limit: messages up to it get a clear
        # too_large reply, anything bigger is dropped by libzmq before it costs memory.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_size * 4 + 4096)
        self._owns_file = False  # only a socket file this daemon created is ever removed
        self.requests_served = 0
        self.errors_replied = 0
        self.replies_dropped = 0
        self._drop_logged = 0.0
        #: connection (routing id) -> when a reply to it was last dropped: for STALL_PAUSE seconds
        #: after that its requests get a short refusal instead of being served (nobody reads them)
        self._stalled: dict[bytes, float] = {}
        # Connections are counted from the monitor (before bind, so that no accept is missed).
        self.connections = Connections(limits.max_connections)
        self.waits = Waits(limits.max_waits_per_peer, limits.max_pending_waits, limits.max_waits_per_user)
        self.reply_budget = ReplyBudget(limits.max_queued_reply_bytes)
        self._turn = 0  # one per on_readable: replies sent in an earlier turn may have been read
        self._request_fd: int | None = None  # the connection's fd of the request being served
        self.monitor: zmq.Socket[bytes] = self.sock.get_monitor_socket(_MONITOR_EVENTS)
        #: the event loop's call_later (set by the daemon): sheds over-cap connections on time
        #: when no other event comes
        self.call_later: Callable[[float, Callable[[], None]], object] | None = None
        #: called with the peer's uid when a submit arrives, before it is parsed (the daemon
        #: wakes a pool worker for it: see Executor.expect_work); a hint, never fails a request
        self.expect_work: Callable[[int | None], None] | None = None
        self._shed_pending = False

    # -- binding ------------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the endpoint (see the module docstring for the rules)."""
        if self.inherited_fd is not None:
            self.sock.setsockopt(zmq.USE_FD, self.inherited_fd)
            self.sock.bind(endpoint(self.path))
            log.info("adopted the control socket %s from systemd (fd %d)", self.path, self.inherited_fd)
            return
        prepare_socket_dir(self.path, self.group)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise BindError(
                    f"another procpoold is already running on {self.path}; "
                    "stop it first ('procctl --socket PATH shutdown') or choose another --socket"
                )
            log.warning("replacing the stale control socket %s (left by a daemon that died)", self.path)
            self.path.unlink()
        old_umask = os.umask(0o117)  # the socket file is born 0660: no window with a wider mode
        try:
            self.sock.bind(endpoint(self.path))
        except zmq.ZMQError as exc:
            raise BindError(f"cannot bind {self.path}: {exc}") from None
        finally:
            os.umask(old_umask)
        self._owns_file = True
        if self.group is not None:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        os.chmod(self.path, 0o660)

    def close(self) -> None:
        """Close the socket and remove its file (unless systemd owns it)."""
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        if self._owns_file:
            self._owns_file = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    # -- serving ------------------------------------------------------------------------------

    def on_monitor(self) -> None:
        """Count connections from the monitor's events; shut down those over the cap when due.

        Called by the event loop when the monitor has events, and before serving requests (so a
        request is never seen before its connection's accept).
        """
        now = time.monotonic()
        conns = self.connections
        monitor = self.monitor
        # (asked first: a receive that finds nothing raises zmq.Again, which costs several times
        # more, and this runs before every request)
        while _readable(monitor):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # pragma: no cover - EVENTS said there was one
                break
            try:
                event = parse_monitor_message(frames)
            except Exception:  # pragma: no cover - libzmq's own format
                continue
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                conns.accepted(fd, now)
                if fd in conns.over and len(conns.over) == 1:
                    log.warning(
                        "too many control connections (%d open, max_connections = %d): "
                        "new ones are refused",
                        len(conns.open),
                        conns.cap,
                    )
            else:
                conns.closed(fd)
        if conns.over:
            for fd in conns.due(now):
                conns.shut(fd)
        if conns.over and not self._shed_pending and self.call_later is not None:
            self._shed_pending = True
            self.call_later(OVER_CAP_GRACE, self._shed_later)

    def _shed_later(self) -> None:
        self._shed_pending = False
        self.on_monitor()

    def readers(self) -> list[tuple[zmq.Socket[bytes], Callable[[], None]]]:
        """The sockets the event loop watches for this server, with their callbacks."""
        return [(self.monitor, self.on_monitor), (self.sock, self.on_readable)]

    def on_readable(self) -> None:
        """Serve the requests waiting on the socket, at most MAX_PER_TURN of them (called by the
        event loop, which calls again at its next turn while more wait: clients that send without
        pause never keep its timers, such as the watchdog ping, from running)."""
        self.on_monitor()
        self._turn += 1
        sock = self.sock
        for n in range(MAX_PER_TURN):
            # The poll said readable for the first; after that, ask before receiving (a receive
            # that finds nothing raises zmq.Again, several times the cost of asking).
            if n and not _readable(sock):
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._serve(frames)

    def _send(
        self, identity: bytes, payload: bytes, request_id: Any = None, fd: int | None = None
    ) -> None:
        fd = self._request_fd if fd is None else fd
        if not self.reply_budget.allow(identity, fd, len(payload), self._turn):
            held = self.reply_budget.held[identity][1]
            self._stalled[identity] = time.monotonic()
            payload = encode_error(
                request_id,
                ProcpoolError(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"replies to this connection are not being read: about {held} bytes queued, "
                    f"max_queued_reply_bytes = {self.reply_budget.cap}",
                    "read each reply before sending more requests",
                ),
            )
        elif len(payload) > self.max_message_size:  # bounds what one queued reply can cost
            payload = encode_error(
                request_id,
                ProcpoolError(
                    ErrorCode.TOO_LARGE,
                    f"the reply of {len(payload)} bytes exceeds max_message_size ({self.max_message_size})",
                    "ask for fewer tasks (status: tasks_limit) or raise max_message_size in the daemon's "
                    "config and the client's",
                ),
            )
        try:
            self.sock.send_multipart([identity, payload], zmq.NOBLOCK, copy=len(payload) < ZERO_COPY_BYTES)
        except zmq.Again:
            self.replies_dropped += 1
            now = time.monotonic()
            if len(self._stalled) >= STALLED_MAX:
                self._stalled.clear()
            self._stalled[identity] = now
            if now - self._drop_logged > 10:
                self._drop_logged = now
                log.warning(
                    "dropped a reply: a client is not reading its replies (%d dropped so far)",
                    self.replies_dropped,
                )
        except zmq.ZMQError as exc:  # the peer is gone (EHOSTUNREACH)
            log.debug("reply not delivered: %s", exc)

    def _stalled_peer(self, identity: bytes) -> bool:
        """True (and a short refusal sent) for a connection whose replies are being dropped."""
        if not self._stalled:
            return False
        since = self._stalled.get(identity)
        if since is None:
            return False
        if time.monotonic() - since >= STALL_PAUSE:
            del self._stalled[identity]  # try it once more
            return False
        self.errors_replied += 1
        error = ProcpoolError(
            ErrorCode.LIMIT_EXCEEDED,
            "replies to this connection are being dropped: it does not read them",
            "read each reply before sending more requests",
        )
        self._send(identity, encode_error(None, error))
        return True

    def _admit(self, identity: bytes, frame: zmq.Frame) -> bool:
        """Note the request's connection (its fd); False, with a short refusal sent, for a
        connection over max_connections or one that does not read its replies."""
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:  # pragma: no cover - not a message from a connection
            fd = None
        self._request_fd = fd if isinstance(fd, int) and fd >= 0 else None
        return not (self._over_cap(identity) or self._stalled_peer(identity))

    def _over_cap(self, identity: bytes) -> bool:
        """Refuse a request on a connection accepted past max_connections; True if refused."""
        if not self.connections.over or not self.connections.is_over(self._request_fd):
            return False
        self.connections.refused += 1
        self.errors_replied += 1
        conns = self.connections
        error = ProcpoolError(
            ErrorCode.LIMIT_EXCEEDED,
            f"too many connections: {len(conns.open)} open, max_connections = {conns.cap}",
            "try again shortly; an administrator can raise max_connections",
        )
        self._send(identity, encode_error(None, error))
        return True

    def _defer(self, identity: bytes, request_id: Any, deferred: Deferred, uid: int | None) -> None:
        """Bind a deferred reply to its connection, counting it until it is answered."""
        self.waits.add(identity, uid)
        fd = self._request_fd

        def respond(payload: bytes) -> None:
            self.waits.done(identity, uid)
            self._send(identity, payload, request_id, fd)

        deferred.bind(request_id, respond)

    def _check_waits(self, identity: bytes, request: Request, uid: int | None) -> None:
        """Refuse a request that may wait (wait, submit with wait) past the pending-wait caps."""
        if request.op == "wait" or (request.op == "submit" and request.args.get("wait") is not None):
            why = self.waits.refusal(identity, uid)
            if why is not None:
                raise RequestError(
                    ErrorCode.LIMIT_EXCEEDED, why, request.id, hint="wait for fewer jobs at once"
                )

    def _serve(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        if len(frames) != 2:
            self.errors_replied += 1
            self._send(
                identity,
                encode_error(
                    None,
                    RequestError(
                        ErrorCode.MALFORMED, f"expected one frame per request, got {len(frames) - 1}"
                    ),
                ),
            )
            return
        frame = frames[1]
        if not self._admit(identity, frame):
            return
        address = frame.get("Peer-Address")
        peer = Peer.parse(address if isinstance(address, str) else None)
        buffer = frame.buffer
        if self.expect_work is not None and _SUBMIT_OP in buffer[:PEEK_BYTES].tobytes():
            try:
                self.expect_work(peer.uid if peer is not None else None)
            except Exception:
                log.exception("getting ready for a submit failed")
        started = time.perf_counter()
        request_id: Any = None
        try:
            data = buffer if len(buffer) >= ZERO_COPY_BYTES else frame.bytes
            request = decode_request(data, self.max_message_size, self.limits)
            request_id = request.id
            check_args(request.op, request.args, request_id)
            if self.authorize is not None:
                peer = self.authorize(request, peer)
            self._check_waits(identity, request, peer.uid if peer is not None else None)
            result = self.handlers[request.op](request, peer)
        except RequestError as exc:
            self.errors_replied += 1
            log.info("rejected a request from %s: %s", peer, exc.message)
            rid = exc.request_id if exc.request_id is not None else request_id
            self._send(identity, encode_error(rid, exc), rid)
            return
        except ProcpoolError as exc:
            self.errors_replied += 1
            if exc.code is ErrorCode.PERMISSION_DENIED:
                log.info("refused a request from %s: %s", peer, exc.message)
            self._send(identity, encode_error(request_id, exc), request_id)
            return
        except Exception:
            self.errors_replied += 1
            log.exception("internal error while serving a request from %s", peer)
            error = ProcpoolError(ErrorCode.INTERNAL, "internal error in procpoold; see its log")
            self._send(identity, encode_error(request_id, error))
            return
        self.requests_served += 1
        if isinstance(result, Deferred):
            self._defer(identity, request_id, result, peer.uid if peer is not None else None)
            return
        try:
            payload = encode_result(request_id, result)
        except Exception:
            log.exception("cannot encode the reply to %s", request.op)
            payload = encode_error(
                request_id, ProcpoolError(ErrorCode.INTERNAL, "internal error in procpoold; see its log")
            )
        self._send(identity, payload, request_id)
        elapsed = time.perf_counter() - started
        if elapsed > 0.05:
            log.warning("request %s took %.0f ms", request.op, elapsed * 1000)
