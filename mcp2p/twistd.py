"""``python -m mcp2p.twistd ARGS`` is ``twistd ARGS`` run by this interpreter.

(``python -m twisted`` is Twisted's newer ``twist`` runner, whose options
differ from twistd's.)
"""

import sys

from twisted.scripts.twistd import run

if __name__ == "__main__":
    sys.argv[0] = "twistd"
    sys.exit(run())
