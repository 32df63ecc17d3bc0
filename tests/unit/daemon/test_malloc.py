"""procpoold.malloc: the allocator's thresholds are fixed where the C library has mallopt."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_tune_sets_the_thresholds_under_glibc_and_does_nothing_elsewhere() -> None:
    # In a child: the test process keeps the C library's defaults.
    out = subprocess.run(
        [sys.executable, "-c", "from procpoold import malloc; print(malloc.tune())"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
