"""The command executor's own edge cases: a command killed by a signal that has no name in
Python's ``signal.Signals`` (the real-time ones) still finishes its attempt."""

from __future__ import annotations

import time

from procpoold.engines import AttemptSpec, Outcome
from procpoold.engines.commands import CommandExecutor
from procpoold.loop import EventLoop


class Events:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        pass

    def attempt_finished(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def attempt_log(
        self, attempt_id: str, stream: str, level: int, message: str, fields: object = None
    ) -> None:
        pass


def run(cmd: list[str]) -> list[Outcome]:
    loop = EventLoop()
    events = Events()
    executor = CommandExecutor(1, switcher=None)
    executor.start(loop, events)  # type: ignore[arg-type]
    try:
        executor.submit(AttemptSpec("a#1", "1", "j", "1.0", "t", 1, "cmd", cmd=cmd))
        deadline = time.monotonic() + 20
        while not events.outcomes and time.monotonic() < deadline:
            loop.run_once(100)
    finally:
        executor.shutdown(0)
        loop.close()
    return events.outcomes


def test_a_command_killed_by_a_realtime_signal_fails_its_attempt() -> None:
    outcomes = run(["sh", "-c", "kill -40 $$"])
    assert len(outcomes) == 1, "the attempt never finished"
    outcome = outcomes[0]
    assert outcome.status == "failed" and outcome.exit_code == -40
    assert outcome.error is not None and "signal 40" in outcome.error.message
