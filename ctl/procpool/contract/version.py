"""Package and wire-protocol versions (leaf module: imports nothing at import time).

The protocol version is a single integer. A daemon answers only requests that
carry exactly its protocol version; any other value gets a
``protocol_version`` error reply that names both versions, so an old client
learns what to upgrade instead of misreading a newer reply.

``__version__`` (the installed package's version) is looked up on first use: reading it
needs :mod:`importlib.metadata`, whose import costs more than the rest of a ``procctl``
command's imports together, and most commands never print it.
"""

from typing import Any

PROTOCOL_VERSION = 1


def __getattr__(name: str) -> Any:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("procpool")
    except PackageNotFoundError:  # running from a source tree that is not installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value  # later look-ups find it without calling this again
    return value
