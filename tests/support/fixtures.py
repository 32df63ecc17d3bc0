"""Shared pytest fixtures.

``daemon`` is a real procpoold on the local engines (the worker pool, the command runner). A test
module parametrizes it over the engines by defining ``engine = each_engine()``: its tests then run
once per engine, with ids ``[local]`` and ``[dask]``, the dask ones against a real Dask cluster
(``procpoold --engine dask --dask-scheduler ADDR``). Marks read by these fixtures:

* ``daemon_args(*args)``: the daemon's command-line arguments (default ``--workers 2``); the
  engine's arguments are added to them;
* ``local_engine_only(reason)``: the test is about the local engines' internals; on dask it is
  skipped with ``reason`` (the documented difference);
* ``dask_cluster_size(workers, threads)``: on dask, the test gets a cluster of its own of this size
  (capacity matters to it) instead of the shared one of 2 workers x 4 threads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.dask_cluster import SKIP_REASON, LocalDaskCluster, ProcessDaskCluster

#: The engines a parametrized module runs its tests on (the pytest ids).
ENGINES = ("local", "dask")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_engine_only(reason): about the local engines' internals; skipped on dask"
    )
    config.addinivalue_line(
        "markers", "dask_cluster_size(workers, threads): on dask, a cluster of its own of this size"
    )


def require_dask() -> None:
    """Skip the test where Dask is not installed. Looked up, not imported: the test process forks
    pools' zygotes, which would carry the whole package (a pool test measures a worker's RSS)."""
    if importlib.util.find_spec("distributed") is None:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[LocalDaskCluster]:
    """A ``LocalCluster`` of 2 worker processes x 4 threads on 127.0.0.1, shared by the session."""
    require_dask()
    with LocalDaskCluster(workers=2, threads=4) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_scheduler(dask_cluster: LocalDaskCluster) -> str:
    """The address (``tcp://127.0.0.1:PORT``) of the session's Dask scheduler."""
    return dask_cluster.address


@pytest.fixture
def own_dask_cluster() -> Iterator[LocalDaskCluster]:
    """A ``LocalCluster`` like ``dask_cluster`` for one test alone (one that kills a worker)."""
    require_dask()
    with LocalDaskCluster(workers=2, threads=4) as cluster:
        yield cluster


@pytest.fixture
def dask_processes() -> Iterator[ProcessDaskCluster]:
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, for one test."""
    require_dask()
    with ProcessDaskCluster(workers=2, threads=4) as cluster:
        yield cluster


@pytest.fixture
def engine() -> str:
    """The engine the ``daemon`` runs tasks on: "local" unless the module uses :func:`each_engine`."""
    return "local"


def each_engine() -> Callable[..., str]:
    """A module's ``engine`` fixture running each of its daemon tests once per engine."""

    def engine(request: pytest.FixtureRequest) -> str:
        value: str = request.param
        return value

    return pytest.fixture(params=ENGINES, name="engine")(engine)


@pytest.fixture
def engine_args(request: pytest.FixtureRequest, engine: str) -> Iterator[list[str]]:
    """The daemon's arguments for ``engine``; on dask, afterwards, no process a task started may be
    left on the Dask workers (the leak check the local daemon's harness does for its own)."""
    if engine == "local":
        yield []
        return
    only_local = request.node.get_closest_marker("local_engine_only")
    if only_local is not None:
        pytest.skip(f"local engine only: {only_local.args[0]}")
    size = request.node.get_closest_marker("dask_cluster_size")
    if size is None:
        cluster: LocalDaskCluster = request.getfixturevalue("dask_cluster")
        yield ["--engine", "dask", "--dask-scheduler", cluster.address]
        cluster.assert_no_strays()
        return
    require_dask()
    with LocalDaskCluster(*size.args) as own:
        yield ["--engine", "dask", "--dask-scheduler", own.address]
        own.assert_no_strays()


@pytest.fixture
def daemon(request: pytest.FixtureRequest, engine_args: list[str]) -> Iterator[DaemonProcess]:
    """A running procpoold; stopped and leak-checked after the test."""
    marker = request.node.get_closest_marker("daemon_args")
    args = list(marker.args) if marker else ["--workers", "2"]
    with serving(DaemonProcess(extra_args=[*args, *engine_args]).start()) as proc:
        yield proc
