"""Worker pool of procpoold: forked workers fed through shared-memory rings."""
