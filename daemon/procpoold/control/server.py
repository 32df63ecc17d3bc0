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

from procpool.contract.codec import (
    Request,
    RequestError,
    decode_request,
    encode_error,
    encode_result,
)
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import DEFAULT_LIMITS, Limits
from procpool.contract.ops import check_args
from procpool.contract.paths import endpoint
from procpoold.control.socketdir import clip, unsafe_socket_folder

log = logging.getLogger("procpoold.control")


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
    ) -> None:
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
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        # A hard cap far above the checked limit: messages up to it get a clear
        # too_large reply, anything bigger is dropped by libzmq before it costs memory.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_size * 4 + 4096)
        self._owns_file = False  # only a socket file this daemon created is ever removed
        self.requests_served = 0
        self.errors_replied = 0

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
        self.sock.close(linger=0)
        if self._owns_file:
            self._owns_file = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    # -- serving ------------------------------------------------------------------------------

    def on_readable(self) -> None:
        """Serve every request waiting on the socket (called by the event loop)."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._serve(frames)

    def _send(self, identity: bytes, payload: bytes) -> None:
        try:
            self.sock.send_multipart([identity, payload], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a reply: the client is not reading its replies")
        except zmq.ZMQError as exc:  # pragma: no cover - peer vanished mid-send
            log.debug("reply not delivered: %s", exc)

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
        address = frame.get("Peer-Address")
        peer = Peer.parse(address if isinstance(address, str) else None)
        started = time.perf_counter()
        request_id: Any = None
        try:
            request = decode_request(frame.bytes, self.max_message_size, self.limits)
            request_id = request.id
            check_args(request.op, request.args, request_id)
            if self.authorize is not None:
                peer = self.authorize(request, peer)
            result = self.handlers[request.op](request, peer)
        except RequestError as exc:
            self.errors_replied += 1
            log.info("rejected a request from %s: %s", peer, exc.message)
            rid = exc.request_id if exc.request_id is not None else request_id
            self._send(identity, encode_error(rid, exc))
            return
        except ProcpoolError as exc:
            self.errors_replied += 1
            if exc.code is ErrorCode.PERMISSION_DENIED:
                log.info("refused a request from %s: %s", peer, exc.message)
            self._send(identity, encode_error(request_id, exc))
            return
        except Exception:
            self.errors_replied += 1
            log.exception("internal error while serving a request from %s", peer)
            error = ProcpoolError(ErrorCode.INTERNAL, "internal error in procpoold; see its log")
            self._send(identity, encode_error(request_id, error))
            return
        self.requests_served += 1
        if isinstance(result, Deferred):
            result.bind(request_id, lambda payload: self._send(identity, payload))
            return
        try:
            payload = encode_result(request_id, result)
        except Exception:
            log.exception("cannot encode the reply to %s", request.op)
            payload = encode_error(
                request_id, ProcpoolError(ErrorCode.INTERNAL, "internal error in procpoold; see its log")
            )
        self._send(identity, payload)
        elapsed = time.perf_counter() - started
        if elapsed > 0.05:
            log.warning("request %s took %.0f ms", request.op, elapsed * 1000)
