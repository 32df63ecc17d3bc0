"""A worker's request ring is mapped writable in the worker: when the daemon releases a worker it
unlinks the spill objects still named there, and a hostile worker must not be able to name
another worker's (arguments waiting for another user's attempt) and have them removed."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from procpoold._ring import lib

from procpoold.pool import shm
from procpoold.pool.ring import KIND_SPILL
from procpoold.pool.slot import WorkerSlot

pytestmark = pytest.mark.unit


def test_releasing_a_worker_removes_only_its_own_request_spills() -> None:
    a, b = WorkerSlot(0, 1, 1 << 16), WorkerSlot(1, 2, 1 << 16)
    try:
        before = set(shm.list_leftovers(shm.SPILL_PREFIX))
        assert b.req.push(os.urandom(b.req.max_message * 2))  # arguments waiting for b's worker
        [victim] = set(shm.list_leftovers(shm.SPILL_PREFIX)) - before
        assert a.req.push(os.urandom(a.req.max_message * 2))
        [own] = set(shm.list_leftovers(shm.SPILL_PREFIX)) - before - {victim}
        # What a's worker writes into its own request ring: a spill record naming b's object.
        ref = struct.pack("<Q", 10) + victim.encode()
        assert lib.pp_ring_push(a.req._h, ref, len(ref), KIND_SPILL, 0) == 0
        a.close()
        assert Path("/dev/shm", victim).exists(), "a's release removed b's arguments"
        assert not Path("/dev/shm", own).exists()
    finally:
        a.close()
        b.close()
        shm.cleanup_leftovers(shm.SPILL_PREFIX, owners={os.getpid()})
