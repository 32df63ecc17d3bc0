"""The members of the engine protocol that the tests' stand-in engines have no use for, done the
plain way once (a stand-in subclasses it and writes what it is about: start, submit, stop)."""

from __future__ import annotations

from typing import Any

from procpoold.engines import Health, LeftAttempt


class StubEngine:
    """No processes of its own, nothing left after a crash, a fixed size; ``running`` holds the
    ids of the attempts it runs (its ``busy``), ``recovered`` what ``recover`` was given."""

    name = "stub"
    kinds = frozenset({"call", "cmd"})
    outlives_daemon = False

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.recovered: list[LeftAttempt] = []

    def prefork(self) -> None: ...

    def expect_work(self, uid: int | None) -> None: ...

    def set_daemon_id(self, daemon_id: str) -> None: ...

    def info(self) -> dict[str, Any]:
        return {}

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        self.recovered.extend(attempts)
        return 0

    def resize(self, workers: int) -> bool:
        return False

    def health(self) -> Health:
        return Health(busy=len(self.running))

    def workers(self) -> list[dict[str, Any]]:
        return []
