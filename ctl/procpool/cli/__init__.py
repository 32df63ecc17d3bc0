"""``procctl``: the command line of procpool (a thin layer over :class:`procpool.Client`)."""
