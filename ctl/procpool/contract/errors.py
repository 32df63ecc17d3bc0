"""Error codes and the exception hierarchy shared by daemon and client.

Every error reply on the wire carries a stable machine-readable ``code`` (one
of :class:`ErrorCode`), a one-line human ``message`` and an optional ``hint``.
:class:`ProcpoolError` converts to and from that wire form, so the client
raises the same error the daemon meant, and the CLI prints ``message`` plus
``hint`` as one line each.
"""

from __future__ import annotations

import enum
from typing import Any

from procpool.contract.limits import shorten


class ErrorCode(enum.StrEnum):
    """Stable error codes. Values never change once released; new ones may be added."""

    #: The frame could not be decoded as msgpack, or was not a map.
    MALFORMED = "malformed"
    #: The request's protocol version is not the daemon's.
    PROTOCOL_VERSION = "protocol_version"
    #: The message exceeds the maximum message size.
    TOO_LARGE = "too_large"
    #: The operation name is unknown.
    UNKNOWN_OPERATION = "unknown_operation"
    #: An argument is missing, unknown or of the wrong type or value.
    INVALID_ARGUMENT = "invalid_argument"
    #: A job tree failed validation; the message names the JSON path of the bad node.
    INVALID_TREE = "invalid_tree"
    #: The job or task named does not exist.
    NOT_FOUND = "not_found"
    #: The operation is not possible in the subject's current state.
    CONFLICT = "conflict"
    #: The daemon is shutting down and takes no new work.
    SHUTTING_DOWN = "shutting_down"
    #: The peer may not do this (not the job's owner, not an administrator); the message names the rule.
    PERMISSION_DENIED = "permission_denied"
    #: A configured limit refuses new work for now (queue full, a user's quota, too many connections).
    LIMIT_EXCEEDED = "limit_exceeded"
    #: A bug in the daemon; details are in its log.
    INTERNAL = "internal"
    #: Client side only: no daemon answered within the timeout.
    UNREACHABLE = "unreachable"


class ProcpoolError(Exception):
    """An error with a stable code, a one-line message and an optional hint."""

    def __init__(self, code: ErrorCode, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def to_wire(self) -> dict[str, Any]:
        """The error as the ``error`` map of a reply."""
        wire: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.hint:
            wire["hint"] = self.hint
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> ProcpoolError:
        """Rebuild an error from a reply's ``error`` map (tolerating unknown codes)."""
        if not isinstance(wire, dict):
            return cls(ErrorCode.MALFORMED, f"daemon sent a malformed error: {shorten(wire)}")
        raw_code = str(wire.get("code"))
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            code = ErrorCode.INTERNAL
        hint = wire.get("hint")
        return cls(code, str(wire.get("message", raw_code)), hint if isinstance(hint, str) else None)

    def __repr__(self) -> str:
        return f"ProcpoolError({self.code.value!r}, {self.message!r})"


class DaemonUnreachable(ProcpoolError):
    """No daemon answered on the socket within the timeout."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        what = (
            f"no procpoold is listening on {socket_path}"
            if timeout <= 0
            else f"no procpoold answered on {socket_path} within {timeout:g}s"
        )
        super().__init__(
            ErrorCode.UNREACHABLE,
            what,
            "start it with 'procpoold --socket PATH' or 'systemctl start procpoold', "
            "or point procctl at it with --socket / PROCPOOL_SOCKET",
        )
        self.socket_path = socket_path
