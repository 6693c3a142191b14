"""A CN's ``mcp2p`` CLI, started at a signal (`mcp2p.lab.transfer`).

argv: GO_FILE READY_FILE WAIT OFFSET CLI_ARGS... Imports the CLI, says so
(READY_FILE), waits for GO_FILE (bounded by WAIT) and then OFFSET seconds,
then runs ``mcp2p CLI_ARGS``. The CLI must talk to the host's daemon: its
in-process fallback is disabled.
"""

from __future__ import annotations

# Everything the CLI imports on its way to the daemon is imported here, before
# the start signal: N CLIs importing after it on a few cores (13 of the 20 ms a
# CLI took, each) started the N fetches up to 70 ms apart, and the session,
# which waits for every CN it offered its file to, held the first CN's data
# for the last. tests/lab/test_progs.py checks that nothing is left to import.
import encodings.idna  # noqa: F401 - the HTTP client's host names
import json  # noqa: F401
import os
import sys
import time
import urllib.request  # noqa: F401
from typing import Any

import mcp2p.api.client  # noqa: F401
import mcp2p.cli
import mcp2p.cli.get
import mcp2p.plugins.builtin  # noqa: F401 - the config check scans the plugins
import mcp2p.plugins.codes  # noqa: F401
import mcp2p.trust.endpoint  # noqa: F401


def no_daemon(*args: Any, **kw: Any) -> int:
    print("mcp2p lab: no daemon answered the CLI", file=sys.stderr)
    return mcp2p.cli.EXIT_ERROR


def main(argv: list[str]) -> int:
    go, ready, wait, offset = argv[0], argv[1], float(argv[2]), float(argv[3])
    mcp2p.cli.get.get_in_process = no_daemon  # where cmd_get looks it up
    open(ready, "w").close()
    deadline = time.monotonic() + wait
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("mcp2p lab: no start signal")
        time.sleep(0.002)
    if offset > 0:
        time.sleep(offset)
    return mcp2p.cli.main(argv[4:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
