"""procpoold: the procpool daemon (run it with ``procpoold`` or ``python -m procpoold``)."""

from procpool.contract.version import __version__

__all__ = ["__version__"]
