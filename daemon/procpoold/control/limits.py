"""Per-connection limits of the control socket: connections, pending waits, queued replies.

Everything here runs on the daemon's loop thread. libzmq accepts connections in its own I/O
thread and aborts the whole process when ``accept()`` finds no free file descriptor, so the daemon
must keep connections well below its fd limit by itself:

* :func:`raise_fd_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard one at start;
* :class:`Connections` follows the socket monitor's accepted and disconnected events (the event's
  value is the connection's fd). A connection accepted while ``max_connections`` are open is *over
  the cap*: a request on it (its frames carry the fd as ``ZMQ_SRCFD``) is answered
  ``limit_exceeded`` ("too many connections"), and after ``OVER_CAP_GRACE`` seconds (at once when
  more than ``OVER_CAP_BURST`` are waiting) the daemon shuts the connection down, which frees its
  fd. The other half of the fd budget is headroom for a burst of connections that arrives
  between two turns of the loop;
* :class:`Waits` counts the deferred replies (``wait``, ``submit`` with ``wait``) per connection
  and in all.

Queued reply bytes are bounded by the socket's send high-water mark (``max_queued_replies``
messages per connection) times the largest reply (``max_message_size``: a bigger one is replaced
by a ``too_large`` error, and a job's status comes in pages of ``status_page_size`` tasks), plus
what the kernel buffers; docs/protocol.md (Limits) gives the figures.
"""

from __future__ import annotations

import fcntl
import logging
import resource
import socket
import struct
import termios
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("procpoold.control")

#: Seconds a connection over the cap may live: time for its first request to get its refusal.
OVER_CAP_GRACE = 1.0
#: Connections over the cap beyond this many are shut down at once, oldest first.
OVER_CAP_BURST = 64
#: File descriptors kept for everything but control connections: the store, the journal, and per
#: worker its ring, doorbell and process fds, or a command's pipes and pidfd.
FD_RESERVE = 64
FD_PER_WORKER = 8
#: A derived max_connections never exceeds this (each idle connection costs libzmq ~100 KiB).
DERIVED_CAP = 4096


@dataclass(frozen=True)  # no slots: the config reads the defaults off the class
class ServerLimits:
    """The control socket's limits (docs/protocol.md, Limits); the config's defaults are these."""

    max_connections: int = 1024
    max_queued_replies: int = 32
    max_queued_reply_bytes: int = 8 << 20
    max_waits_per_peer: int = 1_000
    max_pending_waits: int = 20_000
    max_waits_per_user: int = 5_000


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < hard_target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard_target, hard))
            soft = hard_target
        except (ValueError, OSError) as exc:  # pragma: no cover - a kernel with a lower nr_open
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard_target, exc)
    return soft, hard


def connection_cap(configured: int, workers: int, fd_limit: int | None = None) -> int:
    """The connection cap in force: ``configured`` (0: derived), at most half the spare fds."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fd_limit == resource.RLIM_INFINITY:
            fd_limit = 1 << 20
    spare = max(16, fd_limit - FD_RESERVE - FD_PER_WORKER * workers)
    safe = max(8, spare // 2)
    if configured <= 0:
        return min(DERIVED_CAP, safe)
    if configured > safe:
        log.warning(
            "max_connections = %d leaves too little room under the open-file limit (%d); using %d",
            configured,
            fd_limit,
            safe,
        )
        return safe
    return configured


@dataclass(slots=True)
class Connections:
    """Open control connections by fd, from the socket monitor's events."""

    cap: int
    open: set[int] = field(default_factory=set)
    #: fd -> monotonic time it was accepted, for the connections over the cap
    over: dict[int, float] = field(default_factory=dict)
    refused: int = 0
    shed: int = 0

    def accepted(self, fd: int, now: float) -> None:
        self.over.pop(fd, None)  # a reused fd number: the old connection is gone
        self.open.add(fd)
        if len(self.open) > self.cap:
            self.over[fd] = now

    def closed(self, fd: int) -> None:
        self.open.discard(fd)
        self.over.pop(fd, None)

    def is_over(self, fd: int | None) -> bool:
        return fd is not None and fd in self.over

    def due(self, now: float) -> list[int]:
        """Over-cap connections to shut down now: past their grace, or beyond the burst allowance."""
        victims = [fd for fd, at in self.over.items() if now - at >= OVER_CAP_GRACE]
        extra = len(self.over) - len(victims) - OVER_CAP_BURST
        if extra > 0:
            victims += [fd for fd in self.over if fd not in victims][:extra]  # oldest first
        return victims

    def shut(self, fd: int) -> None:
        """Shut connection ``fd`` down (libzmq then closes it and reports it disconnected)."""
        self.over.pop(fd, None)
        self.open.discard(fd)
        self.shed += 1
        try:
            sock = socket.socket(fileno=fd)  # no dup: this must work with no fd to spare
        except OSError:
            return  # already gone (not a socket any more)
        try:
            # Only a connected Unix stream socket: never a listener or a datagram socket that took
            # the number of a connection that closed meanwhile.
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and not listening:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()  # the fd stays libzmq's


@dataclass(slots=True)
class Waits:
    """Pending deferred replies per connection (routing id), per user (the peer's uid, so that one
    user with many connections cannot take every other user's share; 0: no such cap) and in all."""

    per_peer: int
    total: int
    per_user: int = 0
    by_peer: dict[bytes, int] = field(default_factory=dict)
    by_user: dict[int | None, int] = field(default_factory=dict)
    pending: int = 0

    def refusal(self, peer: bytes, uid: int | None = None) -> str | None:
        """Why one more wait from ``peer`` (of user ``uid``) is refused, or None."""
        mine = self.by_peer.get(peer, 0)
        if mine >= self.per_peer:
            return f"too many pending waits on this connection: {mine}, max_waits_per_peer = {self.per_peer}"
        theirs = self.by_user.get(uid, 0)
        if self.per_user and theirs >= self.per_user:
            return f"too many pending waits of this user: {theirs}, max_waits_per_user = {self.per_user}"
        if self.pending >= self.total:
            return f"too many pending waits: {self.pending}, max_pending_waits = {self.total}"
        return None

    def add(self, peer: bytes, uid: int | None = None) -> None:
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        self.by_user[uid] = self.by_user.get(uid, 0) + 1
        self.pending += 1

    def done(self, peer: bytes, uid: int | None = None) -> None:
        _count_down(self.by_peer, peer)
        _count_down(self.by_user, uid)
        self.pending = max(0, self.pending - 1)


def _count_down(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def unread_bytes(fd: int) -> int | None:
    """Memory the kernel holds for what this end sent on ``fd`` and its peer has not read yet
    (SIOCOUTQ: 0 once the peer has read everything; includes the kernel's own overhead)."""
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ is TIOCOUTQ on Linux
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


@dataclass(slots=True)
class ReplyBudget:
    """An estimate of the reply bytes held for each connection, with a cap.

    libzmq says nothing about what it still holds for one peer, but the kernel does: once the
    peer's end has read everything this end sent (SIOCOUTQ of its fd is 0), the replies queued
    before are gone from the daemon too (libzmq moves queued messages into the socket as soon
    as it has room). So the estimate of a connection grows by each reply sent to it and starts
    again from zero at a later request (in a later turn of the loop) that finds its socket read.
    A reply that would take it past ``cap`` is refused; a reply to a connection with nothing
    queued always goes (the bound is then its own size, at most max_message_size).
    """

    cap: int
    #: routing id -> [fd, bytes sent since it was last seen read, turn of the loop of the last send]
    held: dict[bytes, list[int]] = field(default_factory=dict)
    refused: int = 0

    def allow(self, peer: bytes, fd: int | None, size: int, turn: int) -> bool:
        entry = self.held.get(peer)
        if entry is None:
            if len(self.held) >= HELD_MAX:
                self.held.clear()  # peers that vanished; the survivors start again from zero
            self.held[peer] = [-1 if fd is None else fd, size, turn]
            return True
        if entry[2] != turn:
            known = entry[0] if fd is None else fd
            if known < 0 or unread_bytes(known) in (0, None):
                entry[1] = 0
        if entry[1] and entry[1] + size > self.cap:
            self.refused += 1
            return False
        entry[1] += size
        entry[2] = turn
        if fd is not None:
            entry[0] = fd
        return True


#: Connections whose queued replies are estimated at most (more: the estimates start again).
HELD_MAX = 10_000
