"""The protocol fuzzer, unit tier: hostile frames, requests and job trees against the real decoder
and validators. Each case either passes or is refused with the contract's own error, whose
message echoes at most 200 bytes of the input; what passes holds only finite, in-range numbers
and NUL-free strings, so it cannot crash the daemon further down.

Hypothesis generates the inputs; each generated input is also damaged a few ways (a field set
to a hostile value at a random depth, a frame truncated or with bytes overwritten), which costs
far less than generating another: CASES counts every input checked (13,500 in all).
"""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procpool.contract.codec import RequestError, decode_request, pack
from procpool.contract.errors import ProcpoolError
from procpool.contract.limits import ECHO_MAX, SECONDS_MAX
from procpool.contract.ops import check_args
from procpool.contract.tree import TreeError, parse_job
from tests.support.hostile import envelopes, frame_mutants, jobs, mutants, requests, values

#: examples generated per test, and mutants checked per example
EXAMPLES, MUTANTS = 1500, 2
CASES = 3 * EXAMPLES * (1 + MUTANTS)
#: A refusal quotes at most ECHO_MAX bytes of the input, plus its own words and the JSON path.
MESSAGE_MAX = 2 * ECHO_MAX + 300

fuzz = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def refused_briefly(exc: ProcpoolError) -> None:
    assert len(exc.message.encode()) <= MESSAGE_MAX, exc.message[:400]
    assert len((exc.hint or "").encode()) <= MESSAGE_MAX


def packable(value: Any) -> bytes | None:
    try:
        return pack(value)
    except (OverflowError, ValueError, TypeError):
        return None


def check_frame(frame: bytes) -> None:
    try:
        request = decode_request(frame)
        check_args(request.op, request.args, request.id)
    except RequestError as exc:
        refused_briefly(exc)
        return
    for value in request.args.values():
        if isinstance(value, float):
            assert math.isfinite(value)
    if request.op == "submit":
        check_tree(request.args["job"])


def check_tree(doc: Any) -> None:
    try:
        spec = parse_job(doc)
    except TreeError as exc:
        refused_briefly(exc)
        return
    for t in spec.tasks:
        for number in (t.timeout, t.retry_delay):
            assert number is None or (math.isfinite(number) and 0 <= number <= SECONDS_MAX)
        assert 0 <= t.retries <= 1000
        argv = [t.cmd] if isinstance(t.cmd, str) else list(t.cmd or [])
        for text in [*argv, *t.env, *t.env.values(), t.cwd or ""]:
            assert "\0" not in text
    assert spec.repeat is None or 1 <= spec.repeat <= 10**9
    assert all("\0" not in p for p in spec.python_path)


@fuzz
@given(
    frame=st.one_of(st.binary(max_size=64), values.map(packable), envelopes.map(packable)),
    rnd=st.randoms(use_true_random=False),
)
def test_fuzz_frames(frame: bytes | None, rnd: random.Random) -> None:
    frame = frame or b""
    for case in [frame, *frame_mutants(frame, rnd, MUTANTS)]:
        check_frame(case)


@fuzz
@given(job=jobs, rnd=st.randoms(use_true_random=False))
def test_fuzz_job_trees(job: Any, rnd: random.Random) -> None:
    for case in [job, *mutants(job, rnd, MUTANTS)]:
        check_tree(case)


@fuzz
@given(req=requests(), rnd=st.randoms(use_true_random=False))
def test_fuzz_requests(req: tuple[str, dict[str, Any]], rnd: random.Random) -> None:
    op, args = req
    for case in [args, *mutants(args, rnd, MUTANTS)]:
        frame = packable({"v": 1, "id": 1, "op": op, "args": case})
        if frame is not None:
            check_frame(frame)
        else:  # what msgpack cannot carry never reaches the daemon; the validator still holds
            try:
                check_args(op, case if isinstance(case, dict) else {})
            except RequestError as exc:
                refused_briefly(exc)


def test_the_fuzzer_runs_enough_cases() -> None:
    assert CASES >= 10_000
