"""Bad input on the control socket gets an error reply; the daemon keeps serving everyone."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procpool.contract.codec import decode_reply, encode_request, pack
from procpool.contract.errors import ErrorCode
from procpool.contract.paths import endpoint
from tests.support.daemon import DaemonProcess


class RawPeer:
    """A DEALER that sends arbitrary frames and reads replies."""

    def __init__(self, d: DaemonProcess) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint(d.socket))

    def exchange(self, *frames: bytes, timeout: float = 10.0) -> Any:
        self.sock.send_multipart(list(frames))
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        return decode_reply(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def peer(daemon: DaemonProcess) -> Any:
    p = RawPeer(daemon)
    yield p
    p.close()


CASES = [
    (b"\xc1\xc1", ErrorCode.MALFORMED),
    (pack("just a string"), ErrorCode.MALFORMED),
    (pack({"v": 1, "id": 1, "op": "launch_missiles"}), ErrorCode.UNKNOWN_OPERATION),
    (pack({"v": 1, "id": 1, "op": "status", "args": {"job": 12}}), ErrorCode.INVALID_ARGUMENT),
    (pack({"v": 1, "id": 1, "op": "status", "args": {"nope": 1}}), ErrorCode.INVALID_ARGUMENT),
    (pack({"v": 0, "id": 1, "op": "ping"}), ErrorCode.PROTOCOL_VERSION),
    (pack({"v": 1, "id": 1, "op": "ping", "args": "x"}), ErrorCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("frame", "code"), CASES)
def test_each_bad_request_gets_its_error(
    peer: RawPeer, daemon: DaemonProcess, frame: bytes, code: ErrorCode
) -> None:
    reply = peer.exchange(frame)
    assert reply.error is not None and reply.error.code is code, reply
    assert peer.exchange(encode_request("after", "ping")).result["pid"] == daemon.pid


def test_oversized_message_gets_too_large(daemon: DaemonProcess, peer: RawPeer) -> None:
    big = encode_request("big", "ping", {"pad": "x" * (17 * 1024 * 1024)})
    reply = peer.exchange(big, timeout=30)
    assert reply.error is not None and reply.error.code is ErrorCode.TOO_LARGE
    assert peer.exchange(encode_request(2, "ping")).result["pid"] == daemon.pid


def test_extra_frames_are_refused(peer: RawPeer) -> None:
    reply = peer.exchange(encode_request(1, "ping"), b"extra")
    assert reply.error is not None and reply.error.code is ErrorCode.MALFORMED


def test_reply_ids_match_and_interleave(peer: RawPeer) -> None:
    for i in range(20):
        peer.sock.send(encode_request(i, "ping"))
    ids = []
    for _ in range(20):
        assert peer.sock.poll(10_000)
        ids.append(decode_reply(peer.sock.recv()).id)
    assert ids == list(range(20))


def test_a_client_that_never_reads_does_not_stall_others(daemon: DaemonProcess) -> None:
    mute = RawPeer(daemon)
    try:
        for i in range(2000):
            mute.sock.send(encode_request(i, "status"))  # replies pile up unread
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid
    finally:
        mute.close()


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "v": msgpack_values | st.just(1),
        "id": msgpack_values,
        "op": st.sampled_from(["ping", "status", "shutdown_nope", "", "x"]) | msgpack_values,
        "args": msgpack_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(st.binary(max_size=256), msgpack_values.map(pack), envelope_like.map(pack)))
def test_fuzz_random_frames_never_break_the_daemon(daemon: DaemonProcess, payload: bytes) -> None:
    p = RawPeer(daemon)
    try:
        reply = p.exchange(payload)
        # shutdown is not reachable from these strategies, so the daemon must still answer.
        assert reply.error is not None or reply.result is not None
        assert p.exchange(encode_request("alive", "ping")).result["pid"] == daemon.pid
    finally:
        p.close()
