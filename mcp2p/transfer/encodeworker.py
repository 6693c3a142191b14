"""``python -m mcp2p.transfer.encodeworker``: RaptorQ repair symbols, made in
a process of their own (`mcp2p.transfer.encoding`).

The raptorq package holds the GIL while it encodes: a 1 MiB piece costs
12-20 ms, and 30-70 ms on a busy host, during which an SN that encoded in
its reactor sent nothing (the lab's 8-CN fetch at 1% loss: 96 such stalls,
2.7 s of a 9.7 s session). Here the SN's reactor only names the piece.

Frames on stdin, one at a time (network byte order)::

    4  job id
    4  K (source symbols of the piece)
    2  symbol size
    4  first repair index (ESI - K)
    4  stop: repair symbols up to this index, exclusive
    8  device and 8 inode of the file (as the SN's open file has them)
    8  the piece's offset in it and 4 its length
    2  n; then n bytes, the file's path (UTF-8, surrogate escapes)

The worker reads the piece itself: a piece through the pipe cost the SN's
reactor and the worker a dozen turns each on a busy host. A file whose
path now names another inode, or that is shorter, fails the job (the SN
then encodes from its own open file). On stdout, for each request in order::

    4  job id
    1  1: done, 0: failed
    4  n; then n bytes: the repair symbols first .. stop - 1, each
       ``symbol size`` bytes, one after the other (or a failure's text)

Its parent is its only peer: a frame it cannot parse ends it (exit status
2), and its parent starts another; a piece over MAX_PIECE fails its job.
EOF on stdin ends it (status 0).
"""

from __future__ import annotations

import os
import struct
import sys
from typing import BinaryIO

REQUEST = struct.Struct("!IIHIIQQQIH")
REPLY = struct.Struct("!IBI")
MAX_PIECE = 64 << 20  # bytes of one request's piece at most (blockcode's is 8 MiB)
MAX_SYMBOLS = 1 << 24  # RFC 6330's ESI is 24 bits


def repair_batch(data: bytes, symbol_size: int, k: int, first: int, stop: int) -> bytes:
    """Repair symbols ``first`` .. ``stop - 1`` of the piece ``data`` (K source
    symbols of ``symbol_size`` bytes), joined: the package makes them from
    ESI K on, with the source packets before them (4 bytes of payload id each)."""
    import raptorq

    if not 0 <= first < stop or k + stop > MAX_SYMBOLS or symbol_size <= 0:
        raise ValueError(f"repair symbols {first}..{stop} of K={k} are out of range")
    packets = raptorq.Encoder.with_defaults(data, symbol_size).get_encoded_packets(stop)
    if len(packets) != k + stop:
        raise RuntimeError(f"raptorq made {len(packets)} packets, not {k} + {stop}")
    return b"".join(p[4:] for p in packets[k + first :])


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if not data:
        return None
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise EOFError(f"a frame ended after {len(data)} of {n} bytes")
        data += more
    return data


def read_piece(path: str, dev: int, ino: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of the file at ``path``, if it is still
    the inode the SN opened (else ValueError)."""
    if length > MAX_PIECE:
        raise ValueError(f"a piece of {length} bytes is over {MAX_PIECE}")
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise ValueError(f"{path!r} is no longer the file shared")
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise ValueError(f"read {len(data)} of {length} bytes at {offset}: file changed?")
    return data


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer every request on ``stdin`` until EOF (0); 2 on a broken frame."""
    while True:
        try:
            head = _read_exact(stdin, REQUEST.size)
            if head is None:
                return 0
            job, k, symbol_size, first, stop, dev, ino, offset, length, n = REQUEST.unpack(head)
            raw = _read_exact(stdin, n) if n else b""
            if raw is None:
                raise EOFError("a frame ended after its header")
        except (EOFError, ValueError) as e:
            print(f"mcp2p encodeworker: {e}", file=sys.stderr)
            return 2
        try:
            path = raw.decode("utf-8", "surrogateescape")
            data = read_piece(path, dev, ino, offset, length)
            reply = repair_batch(data, symbol_size, k, first, stop)
            ok = 1
        except Exception as e:  # the parent falls back to encoding itself
            reply, ok = f"{type(e).__name__}: {e}".encode()[:1000], 0
        stdout.write(REPLY.pack(job, ok, len(reply)))
        stdout.write(reply)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
