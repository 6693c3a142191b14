"""Events a peer can repeat at will are logged in summary.

Each kind keeps its count; the 1st, 2nd, 4th, 8th... occurrence is a
warning that says how many so far, the others are debug events. So a
flood of malformed datagrams, forged announcements or refused
connections writes a few lines, never one per attacker packet.
"""

from __future__ import annotations

from twisted.logger import LogLevel


def summary_level(count: int) -> LogLevel:
    """The level of the ``count``-th event of one kind (counting from 1)."""
    return LogLevel.warn if count & (count - 1) == 0 else LogLevel.debug
