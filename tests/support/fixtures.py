"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess, serving


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A running procpoold; stopped and leak-checked after the test."""
    marker = request.node.get_closest_marker("daemon_args")
    args = list(marker.args) if marker else ["--workers", "2"]
    with serving(DaemonProcess(extra_args=args).start()) as proc:
        yield proc
