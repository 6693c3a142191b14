"""Pure helpers of the control messages: ``wanted_chunks`` (a wanted set as
UpdateWanted values under AMP's limit) and ``_endpoint`` (where an SN's
control channel answers, as trust pins it)."""

from __future__ import annotations

from mcp2p.core.ring import ServerRecord
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import CHUNK


def _endpoint(server: ServerRecord) -> str:
    """Where an SN's control channel answers, as trust on first use pins it."""
    controls = {f.control_port for f in server.files.values()}
    port = min(controls) if controls else 0
    host = f"[{server.address}]" if ":" in server.address else server.address
    return f"{host}:{port}" if port else ""


def wanted_chunks(units: RangeSet, replace: bool) -> list[bytes]:
    """``units`` as UpdateWanted values under AMP's 64 KiB limit.

    An addition is split into several messages (each adds its part). A
    replacement must be one message, so a set too fragmented to fit is
    coarsened: the smallest gaps are filled. The SN then keeps needs only
    inside the larger set, which is still correct: "replace" only ever drops
    needs, so a superset drops fewer of them, never adds any.
    """
    encoded = units.encode()
    if len(encoded) <= CHUNK:
        return [encoded]
    ranges = units.ranges()
    if not replace:
        per = max(1, int(len(ranges) * CHUNK / len(encoded) * 0.9))
        return [RangeSet(ranges[i : i + per]).encode() for i in range(0, len(ranges), per)]
    while len(encoded) > CHUNK:
        keep = max(1, int(len(ranges) * CHUNK / len(encoded) * 0.9))
        # Fill all but the ``keep - 1`` widest gaps (ties broken by position,
        # so equal gaps still merge and the loop always shrinks the set).
        order = sorted(range(len(ranges) - 1), key=lambda i: ranges[i + 1][0] - ranges[i][1])
        fill = set(order[: max(0, len(order) - (keep - 1))])
        merged = [ranges[0]]
        for i in range(1, len(ranges)):
            if i - 1 in fill:
                merged[-1] = (merged[-1][0], ranges[i][1])
            else:
                merged.append(ranges[i])
        ranges = merged
        encoded = RangeSet(ranges).encode()
    return [encoded]
