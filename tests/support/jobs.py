"""Helpers for job tests: submit a tree and wait for it through the real client."""

from __future__ import annotations

from typing import Any

from tests.support.daemon import DaemonProcess


def run_job(daemon: DaemonProcess, root: Any, timeout: float = 60.0, **extra: Any) -> dict[str, Any]:
    """Submit ``{"name": ..., "root": root, **extra}`` and return its final status."""
    doc = {"name": extra.pop("name", "test"), "root": root, **extra}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        result = client.wait(job_id, timeout=timeout)
    assert result["finished"], f"job {job_id} did not finish within {timeout}s: {result}"
    status: dict[str, Any] = result["status"]
    return status


def tasks_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in status["tasks"]}
