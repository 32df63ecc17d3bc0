"""Fixtures of the end-to-end tier: host requirements and the wheelhouse.

These tests need root, systemd-nspawn and nsenter. Without them they are
skipped, except under ``CI=true`` where a missing requirement is a failure:
CI must run the whole suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.container import cgroup_roots, missing_tools

REPO = Path(__file__).resolve().parents[2]
#: The interpreter the installed venv uses inside the container (see systemd/install.sh).
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: Not copied into the wheel build: local environments, caches and build output.
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "run", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.so",
)


def host_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    problems += [f"{tool} not found" for tool in missing_tools()]
    if not SYSTEM_PYTHON.exists():
        problems.append(f"{SYSTEM_PYTHON} not found")
    if not cgroup_roots():
        problems.append("no cgroup hierarchy found under /sys/fs/cgroup")
    return problems


@pytest.fixture(autouse=True, scope="session")
def e2e_host() -> None:
    problems = host_problems()
    if problems:
        message = "end-to-end tests need a root shell with systemd-nspawn: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """Wheels of the project (from the working tree) and all its dependencies, built once per session,
    with those of the dask extra (``make install DASK=1`` installs it: test_dask.py).

    Built with the same interpreter as the container's venv, so the compiled
    wheels match its ABI. The source is copied first: building in place would
    write build/ and *.egg-info into the checkout.
    """
    top = Path(tempfile.mkdtemp(prefix="pp-wheels-", dir="/tmp"))
    try:
        source = top / "src"
        shutil.copytree(REPO, source, ignore=_NOT_SOURCE, symlinks=True)
        wheels = top / "wheels"
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             f"{source}[dask]", "-w", str(wheels)],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"building the wheelhouse failed:\n{result.stdout}\n{result.stderr}")
        print(f"wheelhouse built in {time.monotonic() - started:.1f}s")
        yield wheels
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
