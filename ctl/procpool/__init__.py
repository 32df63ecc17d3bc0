"""procpool: the client side of the procpool job-tree supervisor.

Importing this package starts nothing. It holds the shared contract
(:mod:`procpool.contract`), the Python client (:class:`procpool.Client`), the
``procctl`` command line (:mod:`procpool.cli`) and the API that task code
imports (:mod:`procpool.task`).
"""

from typing import TYPE_CHECKING, Any

from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from procpool.contract.version import PROTOCOL_VERSION

if TYPE_CHECKING:
    from procpool.client import Client
    from procpool.contract.version import __version__


def __getattr__(name: str) -> Any:
    # The client (and with it pyzmq) loads on first use only: task code imports
    # procpool.task inside workers, which must stay small and free of ZeroMQ.
    if name == "Client":
        from procpool.client import Client

        return Client
    if name == "__version__":  # looked up on first use (see procpool.contract.version)
        from procpool.contract import version

        return version.__version__
    raise AttributeError(name)


__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "DaemonUnreachable",
    "ErrorCode",
    "ProcpoolError",
    "__version__",
]
