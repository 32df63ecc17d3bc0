"""Package and wire-protocol versions (leaf module: imports nothing).

The protocol version is a single integer. A daemon answers only requests that
carry exactly its protocol version; any other value gets a
``protocol_version`` error reply that names both versions, so an old client
learns what to upgrade instead of misreading a newer reply.
"""

from importlib.metadata import PackageNotFoundError, version

PROTOCOL_VERSION = 1

try:
    __version__ = version("procpool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
