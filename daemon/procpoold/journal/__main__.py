"""``python -m procpoold.journal``: the forwarder process (started by the daemon; see forwarder.py)."""

import sys

from procpoold.journal.forwarder import main

sys.exit(main())
