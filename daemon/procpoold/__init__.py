"""procpoold: the procpool daemon (run it with ``procpoold`` or ``python -m procpoold``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Looked up on first use: importing the package stays cheap for what runs an attempt on a
    # remote worker (procpoold.remote), and the version's lookup reads package metadata.
    if name == "__version__":
        from procpool.contract.version import __version__

        return __version__
    raise AttributeError(name)


__all__ = ["__version__"]
