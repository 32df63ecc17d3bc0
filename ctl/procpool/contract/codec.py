"""The wire envelope: msgpack maps with a version, a request id and an operation.

This module is the one definition of the framing that both sides import::

    request  = {"v": PROTOCOL_VERSION, "id": <str|int>, "op": <str>, "args": {<str>: value}}
    reply ok = {"v": PROTOCOL_VERSION, "id": <same id>, "ok": True,  "result": value}
    reply er = {"v": PROTOCOL_VERSION, "id": <same id or None>, "ok": False,
                "error": {"code": <ErrorCode>, "message": <str>, "hint"?: <str>}}

Each message is one ZeroMQ frame (after the ROUTER's identity frame on the
daemon side). Decoding is strict: msgpack only, string map keys, no extension
types, bounded size. Nothing received is ever unpickled or evaluated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import CEILINGS, DEFAULT_LIMITS, ENVELOPE_KEYS, Limits, shorten
from procpool.contract.version import PROTOCOL_VERSION

#: Default upper bound of one request or reply, in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

RequestId = str | int


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded, envelope-checked request (its args are checked by :mod:`procpool.contract.ops`)."""

    id: RequestId
    op: str
    args: dict[str, Any] = field(default_factory=dict)


class RequestError(ProcpoolError):
    """A request that cannot be served; carries the request id when it was readable."""

    def __init__(
        self, code: ErrorCode, message: str, request_id: RequestId | None = None, hint: str | None = None
    ) -> None:
        super().__init__(code, message, hint)
        self.request_id = request_id


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    # The container limits are checked against each header before anything is built, so a
    # map of a million keys costs nothing (it used to block the daemon's loop for seconds).
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        ext_hook=_reject_ext,
        timestamp=0,
        max_map_len=limits.max_map_items,
        max_array_len=limits.max_array_items,
    )


def _why(exc: Exception) -> str:
    return shorten(str(exc))[1:-1] or type(exc).__name__  # msgpack's StackError says nothing


def _too_many(exc: ValueError, limits: Limits) -> str | None:
    """The limit's own sentence when msgpack refused a container as too long, else None."""
    text = str(exc)
    for mp_name, setting, what in (
        ("max_map_len", "max_map_items", "a map"),
        ("max_array_len", "max_array_items", "an array"),
    ):
        if mp_name in text:
            size = text.split(" ", 1)[0]
            return f"{what} of {size} entries; the limit is {setting} = {getattr(limits, setting)}"
    return None


#: One packer per thread (a client may be used from several): ``msgpack.packb`` makes a new one,
#: with a 1 MiB buffer, for every value (~3 us against ~0.8 us for a reply of a few hundred bytes).
#: A packer that fails part-way starts its next value afresh; one whose buffer grew past
#: PACKER_KEEP_BYTES for a big value is dropped (its buffer never shrinks).
_packers = threading.local()
PACKER_KEEP_BYTES = 1 << 20


def pack(value: Any) -> bytes:
    """Encode one value as msgpack (binary-safe: bytes stay bytes)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, datetime=False)
    data: bytes = packer.pack(value)
    if len(data) > PACKER_KEEP_BYTES:
        del _packers.packer
    return data


def encode_request(request_id: RequestId, op: str, args: dict[str, Any] | None = None) -> bytes:
    """Encode a request frame."""
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args or {}})


def decode_request(
    data: bytes | memoryview, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, limits: Limits = DEFAULT_LIMITS
) -> Request:
    """Decode and check a request frame; raise :class:`RequestError` naming what is wrong.

    No message echoes more than 200 bytes of the request (see procpool.contract.limits.shorten).
    """
    if len(data) > max_size:
        raise RequestError(
            ErrorCode.TOO_LARGE,
            f"request of {len(data)} bytes exceeds the maximum message size of {max_size} bytes",
            hint="split the work into smaller jobs or raise max_message_size in the daemon's config",
        )
    try:
        msg = _unpack(data, limits)
    except ValueError as exc:
        too_many = _too_many(exc, limits)
        if too_many is not None:
            raise RequestError(ErrorCode.TOO_LARGE, f"request has {too_many}") from None
        raise RequestError(ErrorCode.MALFORMED, f"request is not valid msgpack: {_why(exc)}") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise RequestError(ErrorCode.MALFORMED, f"request is not valid msgpack: {_why(exc)}") from None
    if not isinstance(msg, dict):
        raise RequestError(ErrorCode.MALFORMED, f"request must be a msgpack map, got {type(msg).__name__}")
    if len(msg) > ENVELOPE_KEYS:  # before anything walks its keys
        raise RequestError(
            ErrorCode.MALFORMED,
            f"request envelope has {len(msg)} fields; it has at most {ENVELOPE_KEYS} (v, id, op, args)",
        )
    raw_id = msg.get("id")
    request_id: RequestId | None = (
        raw_id if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
    )
    if request_id is None:
        raise RequestError(ErrorCode.MALFORMED, "request has no 'id' (a string or an integer)")
    if not all(type(key) is str for key in msg):  # msgpack also decodes bytes keys
        raise RequestError(ErrorCode.MALFORMED, "request envelope fields must be strings", request_id)
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise RequestError(
            ErrorCode.PROTOCOL_VERSION,
            f"protocol version {shorten(version, 64)} is not supported; "
            f"this daemon speaks version {PROTOCOL_VERSION}",
            request_id,
            hint="use a procctl of the same release as the daemon",
        )
    unknown = sorted(set(msg) - {"v", "id", "op", "args"})
    if unknown:
        raise RequestError(
            ErrorCode.MALFORMED, f"unknown envelope field(s): {shorten(', '.join(unknown))}", request_id
        )
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise RequestError(ErrorCode.MALFORMED, "request has no 'op' (a non-empty string)", request_id)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise RequestError(
            ErrorCode.INVALID_ARGUMENT, f"'args' must be a map, got {type(args).__name__}", request_id
        )
    return Request(request_id, op, args)


def encode_result(request_id: RequestId | None, result: Any) -> bytes:
    """Encode a success reply."""
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: RequestId | None, error: ProcpoolError) -> bytes:
    """Encode an error reply."""
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error.to_wire()})


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: ``error`` is set exactly when the request failed."""

    id: RequestId | None
    result: Any = None
    error: ProcpoolError | None = None


def decode_reply(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Reply:
    """Decode a reply frame (client side); a malformed reply raises :class:`ProcpoolError`."""
    if len(data) > max_size:
        raise ProcpoolError(ErrorCode.TOO_LARGE, f"reply of {len(data)} bytes exceeds {max_size} bytes")
    try:
        msg = _unpack(data, CEILINGS)  # the size bound is enough: replies come from the daemon
    except Exception as exc:
        raise ProcpoolError(ErrorCode.MALFORMED, f"daemon sent invalid msgpack: {_why(exc)}") from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise ProcpoolError(ErrorCode.MALFORMED, "daemon sent a reply without 'ok'")
    rid = msg.get("id")
    if msg["ok"]:
        return Reply(rid, msg.get("result"))
    return Reply(rid, None, ProcpoolError.from_wire(msg.get("error")))
