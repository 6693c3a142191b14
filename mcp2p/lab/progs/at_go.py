"""Say ready, wait for the start file (bounded), then exec a command (same pid).

argv: GO_FILE READY_FILE WAIT COMMAND [ARGS...]. Exits with a message if
GO_FILE does not appear within WAIT seconds.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    go, ready, wait = argv[0], argv[1], float(argv[2])
    open(ready, "w").close()
    deadline = time.monotonic() + wait
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("mcp2p lab: no start signal")
        time.sleep(0.002)
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
