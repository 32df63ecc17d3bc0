"""A submit wakes an idle pool worker before the daemon has read it (Executor.expect_work)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from procpool.contract.codec import decode_reply, encode_request
from procpool.contract.paths import endpoint
from procpoold.pool.dispatch import PREWAKE_WASTE_MAX
from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = str(Path(__file__).resolve().parents[2])


def pool_info(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as client:
        info: dict[str, Any] = client.pool()["info"]
    return info


def test_each_submit_wakes_a_worker_that_its_attempt_then_finds(daemon: DaemonProcess) -> None:
    before = pool_info(daemon)
    for i in range(5):
        status = run_job(daemon, {"name": "t", "call": "tests.support.tasks:add", "args": [i, 1]},
                         python_path=[ROOT])
        assert status["tasks"][0]["result"] == i + 1
    after = pool_info(daemon)
    assert after["prewakes"] - before["prewakes"] == 5
    assert after["prewakes_used"] - before["prewakes_used"] == 5


def test_submits_that_bring_no_work_stop_waking_workers(daemon: DaemonProcess) -> None:
    """A client that sends a stream of submits that come to nothing (here: ones the daemon refuses
    after reading them) cannot keep workers spinning: no more wakes once PREWAKE_WASTE_MAX of them
    went unused within a second (plus one per worker still within its window)."""
    with daemon.client() as client:
        workers = len(client.pool()["workers"])
    frame = encode_request(1, "submit", {"job": "not a job"})  # refused: no attempt follows
    before = pool_info(daemon)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sent = 0
    try:
        sock.connect(endpoint(daemon.socket))
        start = time.monotonic()
        while time.monotonic() - start < 1.0 or sent < 200:
            sock.send(frame)
            assert sock.poll(10_000), "no reply"
            assert decode_reply(sock.recv()).error is not None
            sent += 1
        elapsed = time.monotonic() - start
    finally:
        sock.close()
        ctx.term()
    after = pool_info(daemon)
    woken = after["prewakes"] - before["prewakes"]
    assert after["prewakes_used"] == before["prewakes_used"]
    bound = PREWAKE_WASTE_MAX * (math.ceil(elapsed) + 1) + workers
    assert 1 <= woken <= bound, (woken, sent, elapsed)
    assert woken < sent, (woken, sent)
