"""The CN's first look at a batch of datagrams: header checks and digests.

``scan(batch, ssrc)`` returns ``(malformed, foreign, lists, candidates)``:
for each datagram of ``batch``, by index, one that is too short or too long
or neither a data nor a list packet counts ``malformed``; a digest list's
index goes into ``lists``; a data packet of another SSRC counts ``foreign``;
any other is a candidate ``(index, seq, digest, piece, symbol)``, its seq
from the RTP timestamp (wire.rtp) and its digest ``packet_digest``'s.

`Receiver.datagrams` does the rest (notices, duplicates, forgeries); where
compiled, ``accept`` takes its usual case (None where it is not: the
receiver's Python loop then takes every candidate, as it takes the rest).
The scan is the part whose cost is Python's per call, not the work: a struct
unpack, a hashlib object, a digest and a slice for every datagram. So it
comes compiled where the install could build ``mcp2p._speedups`` (a C
compiler, Python's and OpenSSL's headers: `make install` puts them there
on Debian), with this module's pure-Python `scan_python` as the fallback,
which gives the same result (tests/transfer/test_scan.py checks both on
hostile input). ``MCP2P_PURE_PYTHON=1`` in the environment uses the
fallback even where the compiled one is there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import sha256

from mcp2p.core.speedups import compiled
from mcp2p.wire.rtp import (
    DIGEST_LEN,
    FAST_HEADER,
    FIRST_TWO,
    HEADER_LEN,
    LIST_FIRST_TWO,
    MAX_PAYLOAD,
)

Buffer = bytes | bytearray | memoryview
Candidate = tuple[int, int, bytes, int, int]  # index, seq, digest, piece, symbol
Scanned = tuple[int, int, list[int], list[Candidate]]

MAX_DATAGRAM = HEADER_LEN + MAX_PAYLOAD  # the largest data packet


def scan_python(batch: Sequence[Buffer], ssrc: int) -> Scanned:
    """The pure-Python scan (see the module's docstring)."""
    if not 0 <= ssrc <= 0xFFFFFFFF:
        raise ValueError("ssrc is a 32-bit number")
    unpack = FAST_HEADER.unpack_from
    malformed = foreign = 0
    lists: list[int] = []
    candidates: list[Candidate] = []
    for i, data in enumerate(batch):
        if not HEADER_LEN <= len(data) <= MAX_DATAGRAM:
            malformed += 1
            continue
        first_two, _, seq, packet_ssrc, _, reserved, piece, symbol = unpack(data)
        if first_two != FIRST_TWO or reserved:
            if first_two == LIST_FIRST_TWO:
                lists.append(i)
            else:
                malformed += 1
            continue
        if packet_ssrc != ssrc:
            foreign += 1
            continue
        digest = sha256(data).digest()[:DIGEST_LEN]  # packet_digest, without its call
        candidates.append((i, seq, digest, piece, symbol))
    return malformed, foreign, lists, candidates


Accept = Callable[
    [Sequence[Buffer], list[Candidate], memoryview, memoryview, memoryview, memoryview, int],
    tuple[list[tuple[int, int, Buffer]], list[Candidate], int],
]

scan_compiled: Callable[[Sequence[Buffer], int], Scanned] | None = compiled("scan")
scan = scan_compiled or scan_python
accept: Accept | None = compiled("accept")
COMPILED = scan_compiled is not None
