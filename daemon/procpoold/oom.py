"""Was that SIGKILL the kernel's OOM killer? The cgroup's count of OOM kills says.

The kernel counts every process of a cgroup that an OOM killer (the cgroup's own or the whole
system's) kills: ``oom_kill`` in ``memory.events`` (cgroup v2) or in ``memory.oom_control`` (v1).
procpoold's workers and commands live in its cgroup (under systemd, ``procpoold.service``), so
when one of them dies of a SIGKILL that procpoold did not send, the count tells whether the OOM
killer sent it: one kill counted since the previous such death answers one death. (A process of
the cgroup that nobody asks about, such as a command's child, can leave a kill counted that the
next death then takes for its own.) Without a memory controller the answer is None: unknown.
"""

from __future__ import annotations

import os


class OomCounter:
    """The OOM kills counted in our cgroup, taken one per unexplained SIGKILL (see the module)."""

    def __init__(self, proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> None:
        self.path = _oom_file(proc_cgroup, root)
        self.seen = self.read()

    def read(self) -> int | None:
        if self.path is None:
            return None
        try:
            with open(self.path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return None

    def consume(self) -> bool | None:
        """Whether an OOM kill happened since the last call (one kill answers one death)."""
        now = self.read()
        if now is None or self.seen is None:
            self.seen = now
            return None
        if now > self.seen:
            self.seen += 1
            return True
        return False


def _oom_file(proc_cgroup: str, root: str) -> str | None:
    """The file that counts OOM kills in our cgroup, or None."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # the unified (v2) hierarchy: alone, or beside v1 ones (hybrid)
            candidates += [os.path.join(root, rel, "memory.events"),
                           os.path.join(root, "unified", rel, "memory.events")]
        elif "memory" in controllers.split(","):
            candidates.append(os.path.join(root, "memory", rel, "memory.oom_control"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None


_shared: OomCounter | None = None


def shared() -> OomCounter:
    """The daemon's one counter (every executor asks the same, so that each kill is taken once);
    made when the executors start, so that it counts from before any of their processes died."""
    global _shared
    if _shared is None:
        _shared = OomCounter()
    return _shared
