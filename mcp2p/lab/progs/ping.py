"""ICMP echo to one address, for namespaces where iputils is not installed.

argv: ADDR COUNT TIMEOUT. Exits 0 if any echo was answered, else 1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time


def checksum(b: bytes) -> int:
    """The internet checksum (RFC 1071) of ``b``."""
    b += b"\0" * (len(b) & 1)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    t += t >> 16
    return ~t & 0xFFFF


def main(argv: list[str]) -> int:
    addr, count, timeout = argv[0], int(argv[1]), float(argv[2])
    v6 = ipaddress.ip_address(addr).version == 6
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    ok = 0
    for seq in range(count):
        kind, reply = (128, 129) if v6 else (8, 0)
        body = struct.pack("!HH", ident, seq) + b"mcp2p-lab"
        pkt = struct.pack("!BBH", kind, 0, 0) + body
        if not v6:
            pkt = struct.pack("!BBH", kind, 0, checksum(pkt)) + body
        s.sendto(pkt, (addr, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(2048)
            except TimeoutError:
                break
            icmp = data if v6 else data[(data[0] & 15) * 4 :]
            if icmp[0] == reply and icmp[4:8] == body[:4]:
                ok += 1
                break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
