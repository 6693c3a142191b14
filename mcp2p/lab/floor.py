"""The least a one-to-many transfer must send, and how long that takes.

The lab's unicast experiment compares each tool's time with an "ideal" (the
file at the link's rate, no headers, no loss); no tool can reach it. This
module gives the physical floor instead: one copy of the file in packets of
``block`` bytes with mcp2p's headers each, digest lists, and,
for each piece, the repairs a code needs when N receivers each lose a
random fraction ``loss`` of its packets independently. A fountain code that
needs no more than the lost symbols sends the worst receiver's loss per
piece; its expected value is E[max of N Binomial(k, loss)], computed
exactly from the binomial law, not simulated.

Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mcp2p.transfer.session import IP_UDP_OVERHEAD  # what the SN's pacer counts besides
from mcp2p.wire.rtp import DIGEST_LEN, HEADER_LEN

BLOCK = 1400  # [serving] block_length as shipped (etc/mcp2p.ini), which the lab keeps
PIECE = 1 << 20  # [catalog] piece_length as shipped
ETHERNET = 14  # what a link's tbf counts besides


def expected_worst_loss(k: int, loss: float, n: int) -> float:
    """E[max of ``n`` independent Binomial(``k``, ``loss``)]: the sum over x
    of P(max > x) = 1 - F(x)^n."""
    if not isinstance(k, int) or k < 0 or not isinstance(n, int) or n < 1:
        raise ValueError(f"need k >= 0 and n >= 1 (integers), got {k!r}, {n!r}")
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss must be in [0, 1), got {loss!r}")
    if loss == 0.0 or k == 0:
        return 0.0
    total = 0.0
    cdf = 0.0
    log_pmf = k * math.log1p(-loss)  # P(X = 0), in logs: (1 - loss)^k underflows for large k
    ratio = loss / (1.0 - loss)
    for x in range(k + 1):
        cdf = min(1.0, cdf + math.exp(log_pmf))
        above = 1.0 - cdf**n
        total += above
        if above < 1e-12 and x >= k * loss:
            break
        if x < k:
            log_pmf += math.log((k - x) / (x + 1) * ratio)
    return total


@dataclass(frozen=True)
class Floor:
    packets: float  # data, repair and list packets, expected
    source: int  # the file's own packets
    ip_bytes: float  # ... counted as the SN's pacer counts them
    link_bytes: float  # ... as a link's tbf counts them

    def seconds(self, bits_per_second: float, link: bool = False) -> float:
        """How long these packets take at ``bits_per_second`` (of IP bytes, or
        of link bytes where ``link``)."""
        if not bits_per_second > 0:
            raise ValueError(f"the rate must be positive, got {bits_per_second!r}")
        return 8 * (self.link_bytes if link else self.ip_bytes) / bits_per_second


def floor(size: int, receivers: int, loss: float, block: int = BLOCK, piece: int = PIECE) -> Floor:
    """The floor for one copy of ``size`` bytes to ``receivers`` receivers
    with independent random ``loss`` each (see the module docstring)."""
    if size < 0 or block < 1 or piece < block:
        raise ValueError(f"need size >= 0 and piece >= block >= 1, got {size}, {piece}, {block}")
    full, rest = divmod(size, piece)
    per_piece = -(-piece // block)
    source = full * per_piece + -(-rest // block)
    repairs = full * expected_worst_loss(per_piece, loss, receivers)
    if rest:
        repairs += expected_worst_loss(-(-rest // block), loss, receivers)
    per_list = max(1, block // DIGEST_LEN)  # as the session cuts its lists
    lists = -(-source // per_list)
    packets = source + repairs + lists
    payload = size + (repairs + lists) * block  # lists and repairs are full blocks
    ip_bytes = payload + packets * (HEADER_LEN + IP_UDP_OVERHEAD)
    return Floor(packets, source, ip_bytes, ip_bytes + packets * ETHERNET)
