"""Helpers for job tests: submit a tree and wait for it through the real client."""

from __future__ import annotations

from typing import Any

from procpool import Client
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until


def run_job(daemon: DaemonProcess, root: Any, timeout: float = 60.0, **extra: Any) -> dict[str, Any]:
    """Submit ``{"name": ..., "root": root, **extra}`` and return its final status."""
    doc = {"name": extra.pop("name", "test"), "root": root, **extra}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        result = client.wait(job_id, timeout=timeout)
    assert result["finished"], f"job {job_id} did not finish within {timeout}s: {result}"
    status: dict[str, Any] = result["status"]
    return status


def sh(script: str, **extra: Any) -> dict[str, Any]:
    """A ``cmd`` task that runs ``script`` with ``sh -c``."""
    return {"cmd": ["sh", "-c", script], **extra}


def tasks_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in status["tasks"]}


def wait_task_state(client: Client, job_id: str, name: str, state: str = "running") -> dict[str, Any]:
    """Wait (bounded) until task ``name`` of ``job_id`` is in ``state``; returns the job's status."""
    status: dict[str, Any] = wait_until(
        lambda: client.status(job_id),
        lambda s: tasks_by_name(s)[name]["state"] == state,
        what=f"task {name!r} of job {job_id} to be {state}",
    )
    return status


def wait_task_started(client: Client, job_id: str, name: str) -> dict[str, Any]:
    """Wait (bounded) until task ``name`` runs and its engine has reported the start of its
    attempt's process (a pid): on a remote engine an attempt is "running" from its hand-over, and
    its process starts a moment later, on another host. Returns the job's status."""

    def started(s: dict[str, Any]) -> bool:
        t = tasks_by_name(s)[name]
        history = t["attempt_history"]
        return t["state"] == "running" and bool(history) and bool(history[-1]["pid"])

    status: dict[str, Any] = wait_until(lambda: client.status(job_id), started,
                                        what=f"task {name!r} of job {job_id} to start")
    return status
