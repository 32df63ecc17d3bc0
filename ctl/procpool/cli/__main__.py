"""``python -m procpool.cli``: the same as the ``procctl`` console script."""

from procpool.cli.main import main

main()
