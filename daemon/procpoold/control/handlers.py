"""One handler per operation, exhaustive over the contract's operation table.

Handlers receive arguments already checked against :data:`procpool.contract.ops.OPS`
and call the narrow :class:`DaemonAPI`; they hold no state of their own.
"""

from __future__ import annotations

from typing import Any, Protocol

from procpool.contract.codec import Request
from procpool.contract.ops import OPS
from procpoold.control.server import Handler, Peer


class DaemonAPI(Protocol):
    """What the control plane may ask of the daemon."""

    def info(self) -> dict[str, Any]: ...
    def summary(self) -> dict[str, Any]: ...
    def request_shutdown(self, reason: str) -> None: ...


def build_handlers(api: DaemonAPI) -> dict[str, Handler]:
    """Map every operation name to its handler; fails loudly if one is missing."""

    def ping(req: Request, peer: Peer | None) -> Any:
        return api.info()

    def status(req: Request, peer: Peer | None) -> Any:
        return api.summary()

    def shutdown(req: Request, peer: Peer | None) -> Any:
        api.request_shutdown(f"requested by {_who(peer)}")
        return {"stopping": True}

    handlers: dict[str, Handler] = {"ping": ping, "status": status, "shutdown": shutdown}
    missing = set(OPS) - set(handlers)
    if missing:  # a new operation in the contract without a handler is a bug, caught at start
        raise RuntimeError(f"no handler for operation(s): {', '.join(sorted(missing))}")
    return handlers


def _who(peer: Peer | None) -> str:
    return f"uid {peer.uid} (pid {peer.pid})" if peer else "an unknown peer"
