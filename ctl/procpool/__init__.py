"""procpool: the client side of the procpool job-tree supervisor.

Importing this package starts nothing. It holds the shared contract
(:mod:`procpool.contract`), the Python client (:class:`procpool.Client`), the
``procctl`` command line (:mod:`procpool.cli`) and the API that task code
imports (:mod:`procpool.task`).
"""

from procpool.client import Client
from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from procpool.contract.version import PROTOCOL_VERSION, __version__

__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "DaemonUnreachable",
    "ErrorCode",
    "ProcpoolError",
    "__version__",
]
