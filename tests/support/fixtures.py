"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A running procpoold; stopped and leak-checked after the test."""
    marker = request.node.get_closest_marker("daemon_args")
    args = list(marker.args) if marker else ["--workers", "2"]
    proc = DaemonProcess(extra_args=args).start()
    failed = True
    try:
        yield proc
        failed = False
    finally:
        try:
            if not failed:
                proc.stop(check=True)
        finally:
            if failed:
                print(proc.log())
            proc.cleanup()
