"""procpool: the client side of the procpool job-tree supervisor.

Importing this package starts nothing. It holds the shared contract
(:mod:`procpool.contract`), the Python client (:class:`procpool.Client`), the
``procctl`` command line (:mod:`procpool.cli`) and the API that task code
imports (:mod:`procpool.task`).
"""

from typing import TYPE_CHECKING, Any

from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from procpool.contract.version import PROTOCOL_VERSION, __version__

if TYPE_CHECKING:
    from procpool.client import Client


def __getattr__(name: str) -> Any:
    # The client (and with it pyzmq) loads on first use only: task code imports
    # procpool.task inside workers, which must stay small and free of ZeroMQ.
    if name == "Client":
        from procpool.client import Client

        return Client
    raise AttributeError(name)


__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "DaemonUnreachable",
    "ErrorCode",
    "ProcpoolError",
    "__version__",
]
