"""The wire envelope: round trips and every error path."""

from __future__ import annotations

import msgpack
import pytest

from procpool.contract.codec import (
    RequestError,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_result,
    pack,
)
from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from procpool.contract.ops import OPS, check_args
from procpool.contract.version import PROTOCOL_VERSION


def test_request_round_trip() -> None:
    data = encode_request("r1", "status", {"job": "j-1"})
    req = decode_request(data)
    assert (req.id, req.op, req.args) == ("r1", "status", {"job": "j-1"})


def test_integer_ids_and_missing_args_default_to_empty() -> None:
    req = decode_request(pack({"v": PROTOCOL_VERSION, "id": 7, "op": "ping"}))
    assert req.id == 7 and req.args == {}


def test_result_and_error_replies_round_trip() -> None:
    assert decode_reply(encode_result("a", {"x": b"\x00bin"})).result == {"x": b"\x00bin"}
    err = ProcpoolError(ErrorCode.NOT_FOUND, "no job j-9", "see procctl status")
    reply = decode_reply(encode_error("b", err))
    assert reply.id == "b" and reply.error is not None
    assert (reply.error.code, reply.error.message, reply.error.hint) == (
        ErrorCode.NOT_FOUND,
        "no job j-9",
        "see procctl status",
    )


def test_unknown_error_code_from_a_newer_daemon_is_tolerated() -> None:
    raw = pack({"v": 1, "id": 1, "ok": False, "error": {"code": "brand_new", "message": "m"}})
    reply = decode_reply(raw)
    assert reply.error is not None and reply.error.code is ErrorCode.INTERNAL and reply.error.message == "m"


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        (b"\xc1", ErrorCode.MALFORMED, "not valid msgpack"),
        (b"\x92\x01", ErrorCode.MALFORMED, "not valid msgpack"),  # truncated array
        (pack([1, 2]), ErrorCode.MALFORMED, "must be a msgpack map"),
        (pack({"v": 1, "op": "ping"}), ErrorCode.MALFORMED, "no 'id'"),
        (pack({"v": 1, "id": True, "op": "ping"}), ErrorCode.MALFORMED, "no 'id'"),
        (pack({"v": 99, "id": 1, "op": "ping"}), ErrorCode.PROTOCOL_VERSION, "version 99"),
        (pack({"id": 1, "op": "ping"}), ErrorCode.PROTOCOL_VERSION, "version None"),
        (pack({"v": 1, "id": 1}), ErrorCode.MALFORMED, "no 'op'"),
        (pack({"v": 1, "id": 1, "op": 3}), ErrorCode.MALFORMED, "no 'op'"),
        (pack({"v": 1, "id": 1, "op": "ping", "args": [1]}), ErrorCode.INVALID_ARGUMENT, "must be a map"),
        (pack({"v": 1, "id": 1, "op": "ping", "extra": 1}), ErrorCode.MALFORMED, "unknown envelope field"),
        (pack({1: 2}), ErrorCode.MALFORMED, "not valid msgpack"),  # non-string map key
        (msgpack.packb(msgpack.ExtType(5, b"x")), ErrorCode.MALFORMED, "extension type"),
    ],
)
def test_bad_requests_name_the_problem(payload: bytes, code: ErrorCode, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(payload)
    assert info.value.code is code
    assert fragment in info.value.message


def test_request_id_is_kept_on_errors_after_the_id_was_read() -> None:
    with pytest.raises(RequestError) as info:
        decode_request(pack({"v": 2, "id": "keep-me", "op": "ping"}))
    assert info.value.request_id == "keep-me"


def test_oversized_request_is_refused_before_decoding() -> None:
    data = encode_request(1, "ping", {"pad": "x" * 5000})
    with pytest.raises(RequestError) as info:
        decode_request(data, max_size=4096)
    assert info.value.code is ErrorCode.TOO_LARGE and "4096" in info.value.message


def test_no_pickle_or_code_objects_can_be_smuggled() -> None:
    # A pickle is just bytes that are not msgpack: refused, never loaded.
    import pickle

    with pytest.raises(RequestError):
        decode_request(pickle.dumps({"v": 1, "id": 1, "op": "ping"}))


def test_check_args_every_error_path() -> None:
    with pytest.raises(RequestError) as info:
        check_args("nope", {})
    assert info.value.code is ErrorCode.UNKNOWN_OPERATION and "ping" in (info.value.hint or "")
    with pytest.raises(RequestError, match="unknown argument 'bogus'"):
        check_args("status", {"bogus": 1})
    with pytest.raises(RequestError, match="'job' must be a string, got int"):
        check_args("status", {"job": 5})
    with pytest.raises(RequestError, match="'limit' must be an integer, got bool"):
        check_args("status", {"limit": True})
    assert check_args("status", {"since": 3}).name == "status"  # an int is a fine number


def test_required_arguments_are_enforced() -> None:
    required = [(op.name, name) for op in OPS.values() for name, arg in op.args.items() if arg.required]
    for op_name, _ in required:
        with pytest.raises(RequestError, match="missing argument"):
            check_args(op_name, {})


def test_error_wire_form_and_unreachable_message() -> None:
    err = DaemonUnreachable("/run/x.sock", 0)
    assert "/run/x.sock" in err.message and err.hint and "procpoold" in err.hint
    assert ProcpoolError.from_wire("junk").code is ErrorCode.MALFORMED


def test_pack_reuses_its_packer_safely_after_a_failure_and_after_a_big_value() -> None:
    from procpool.contract import codec

    def plain(value: object) -> bytes:
        return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]

    small = {"id": 1, "result": [b"x", "y", 2.5, None]}
    assert codec.pack(small) == plain(small)
    with pytest.raises(TypeError):
        codec.pack({"a": [1, object()]})  # fails part-way through the value
    assert codec.pack(small) == plain(small)  # nothing of the failed value is left behind
    big = {"blob": b"z" * (codec.PACKER_KEEP_BYTES + 10)}
    assert codec.pack(big) == plain(big)
    assert not hasattr(codec._packers, "packer")  # its grown buffer is not kept
    assert codec.pack(small) == plain(small)
