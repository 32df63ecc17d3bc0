"""The protocol fuzzer against a real daemon: 6,000 hostile requests and frames (hypothesis inputs
plus hostile mutants of each), every one followed by a ``ping`` that must be answered; the
daemon's RSS must stay bounded. Commands a generated job may run are harmless (see
tests/support/hostile.py); ``shutdown`` and ``pool_resize`` are left out (they are the
daemon's to obey), except ``pool_resize`` with out-of-range sizes.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procpool.contract.codec import decode_reply, pack
from tests.integration.test_protocol_abuse import RawPeer
from tests.support.daemon import DaemonProcess
from tests.support.hostile import HOSTILE, envelopes, frame_mutants, mutants, requests, values

pytestmark = [pytest.mark.timeout(300), pytest.mark.daemon_args("--workers", "1")]

EXAMPLES, MUTANTS = 2000, 2
CASES = EXAMPLES * (1 + MUTANTS)
#: RSS the daemon may gain over the run (it keeps the jobs that happened to be valid: a few KiB each).
RSS_GROWTH_MAX = 64 * 2**20

cases = st.one_of(
    st.tuples(st.just("request"), requests(exclude=("shutdown", "pool_resize"))),
    st.tuples(st.just("frame"), st.binary(max_size=64) | values.map(pack) | envelopes.map(pack)),
)


def packable(value: Any) -> bytes | None:
    try:
        return pack(value)
    except (OverflowError, ValueError, TypeError):
        return None


class Prober:
    """Sends a case, then a ping, and waits for the ping's reply (other replies may be deferred)."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self.ids = itertools.count()
        self.sent = 0

    def send(self, frame: bytes) -> None:
        self.peer.sock.send(frame)
        self.sent += 1
        ping = f"ping-{next(self.ids)}"
        self.peer.sock.send(pack({"v": 1, "id": ping, "op": "ping", "args": {}}))
        deadline = time.monotonic() + 10
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.peer.sock.poll(int(left * 1000)), "the daemon stopped answering ping"
            reply = decode_reply(self.peer.sock.recv())
            if reply.id == ping:
                assert reply.error is None and reply.result["pid"]
                return

    def request(self, op: str, args: Any) -> None:
        frame = packable({"v": 1, "id": f"c-{next(self.ids)}", "op": op, "args": args})
        if frame is not None:
            self.send(frame)


def test_fuzz_requests_against_a_real_daemon(daemon: DaemonProcess) -> None:
    peer = RawPeer(daemon)
    prober = Prober(peer)
    process = psutil.Process(daemon.pid)
    try:
        for workers in (-1, 1025, 2**64 - 1, *HOSTILE):
            prober.request("pool_resize", {"workers": workers})
        rss: list[int] = []

        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=cases, rnd=st.randoms(use_true_random=False))
        def run(case: tuple[str, Any], rnd: random.Random) -> None:
            kind, payload = case
            if kind == "frame":
                for frame in [payload, *frame_mutants(payload, rnd, MUTANTS)]:
                    prober.send(frame)
            else:
                op, args = payload
                for variant in [args, *mutants(args, rnd, MUTANTS)]:
                    prober.request(op, variant)
            if not rss and prober.sent >= 300:
                rss.append(process.memory_info().rss)  # after the warm-up: imports, first jobs

        started = time.monotonic()
        run()
        elapsed = time.monotonic() - started
        rss.append(process.memory_info().rss)
        growth = rss[-1] - rss[0]
        print(
            f"\nprotocol fuzz: {prober.sent} cases against a real daemon in {elapsed:.1f}s; "
            f"RSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB"
        )
        assert prober.sent >= 5000
        log = daemon.log()
        assert "internal error" not in log and "Traceback" not in log, log[-3000:]
        assert growth < RSS_GROWTH_MAX, f"RSS grew by {growth / 2**20:.0f} MiB"
    finally:
        peer.close()
