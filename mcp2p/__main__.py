"""``python -m mcp2p``: the ``mcp2p`` command through this interpreter."""

import sys

from mcp2p.cli import main

sys.exit(main())
