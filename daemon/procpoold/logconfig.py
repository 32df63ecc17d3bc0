"""The daemon's logging settings: where records go and what happens when they come too fast.

=================  =========  ==============================================================
setting            default    meaning
=================  =========  ==============================================================
``log_target``     ``auto``   ``journal``, ``stderr``, or ``auto``: journald when running as a
                              systemd service with a journal socket, readable stderr lines otherwise
``log_queue_size`` ``10000``  records not yet written by the journal forwarder before
                              producers are paused (``block``) or records are dropped (``drop``)
``log_policy``     ``block``  ``block``: a task whose output fills the queue is paused until it
                              drains (nothing is lost); ``drop``: excess records are dropped,
                              counted, and reported as a warning record
=================  =========  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Target = Literal["auto", "journal", "stderr"]
Policy = Literal["block", "drop"]

TARGETS: tuple[Target, ...] = ("auto", "journal", "stderr")
POLICIES: tuple[Policy, ...] = ("block", "drop")
DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class LogConfig:
    """Validated logging settings (field names are the config keys without the ``log_`` prefix)."""

    target: Target = "auto"
    queue_size: int = DEFAULT_QUEUE_SIZE
    policy: Policy = "block"

    def validate(self) -> LogConfig:
        """Raise ValueError naming the bad setting."""
        if self.target not in TARGETS:
            raise ValueError(f"log_target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"log_policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) \
                or not 100 <= self.queue_size <= 10_000_000:
            raise ValueError("log_queue_size must be an integer between 100 and 10000000, "
                             f"got {self.queue_size!r}")
        return self
