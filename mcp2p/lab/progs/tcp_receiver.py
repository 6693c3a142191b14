"""The plain TCP receiver: connect, write everything until EOF to OUT, print
the byte count.

argv: ADDR PORT OUT WAIT (WAIT bounds the connect and each read).
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    addr, port, out, wait = argv[0], int(argv[1]), argv[2], float(argv[3])
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    with socket.create_connection((addr, port), timeout=wait) as s, open(out, "wb") as f:
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            f.write(view[:k])
            total += k
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
