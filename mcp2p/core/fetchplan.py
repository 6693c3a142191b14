"""A fetch's pure decisions: who is asked for what, when a source has stalled,
whom a bad piece is blamed on (DESIGN.md 5).

`transfer.fetch.Fetch` holds the sources, their control channels and
sessions; it asks these functions what to do and does it (subscribes,
sends wanted maps, drops sources). Units are blocks, or pieces for a
block code: whatever `Fetch` asks for.

Pure: no Twisted, no I/O, no clock (``now`` comes in).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Literal

from mcp2p.core.wanted import RangeSet

# -- shares


def deal(units: RangeSet, n: int) -> list[RangeSet]:
    """``units`` in ``n`` shares, one per source, in the sources' order:
    contiguous, sizes differing by at most one unit (some empty when there
    are fewer units than sources)."""
    return units.split(n)


def orphaned(
    missing: RangeSet, dropped: Iterable[RangeSet], active: Iterable[RangeSet]
) -> RangeSet:
    """Units no active source is asked for: the shares of dropped sources,
    and the missing units no active share covers (say, a piece wanted
    again after it failed verification while its SN was being dropped)."""
    out = RangeSet()
    for share in dropped:
        out.update(share)
    covered = RangeSet()
    for share in active:
        covered.update(share)
    out.update(missing.difference(covered))
    return out


# -- stalls

# stalled: drop the source; nudge: ask again for its share; wait: nothing yet
Stall = Literal["stalled", "nudge", "wait"]


def stall_verdict(
    now: float,
    last_progress: float,
    nudged_at: float,
    has_share: bool,
    alone: bool,
    stall_timeout: float,
) -> Stall:
    """What to do about one active source at a supervision tick.

    A source with work that delivered nothing for ``stall_timeout`` is
    stalled (4 times that when ``alone``: no other active source and no
    candidate, so dropping it means searching for another). After half
    the timeout it is nudged, at most once per half timeout: the SN may
    believe it sent all its share (a loss we never learned of). A nudge
    asks again for old work: it does not move ``last_progress``, so a
    silent SN is dropped whatever nudges it was sent.
    """
    if not has_share:
        return "wait"
    idle = now - last_progress
    if idle > (4 * stall_timeout if alone else stall_timeout):
        return "stalled"
    if idle > stall_timeout / 2 and now - nudged_at > stall_timeout / 2:
        return "nudge"
    return "wait"


# -- blame


def blamed(senders: Set[str], refused: Set[str]) -> Set[str]:
    """Whom a piece that failed its hash counts against: its senders, or
    only those already refused for bad data when there are any (an honest
    SN that shared a piece with a proven liar is not blamed for it)."""
    return (senders & refused) or senders


def refuses(blamed_count: int, bad_pieces: int, limit: int) -> bool:
    """Whether a blamed source, now at ``bad_pieces``, is refused and
    dropped: at once when it alone is blamed (proven wrong), else at
    ``limit`` ([fetching] bad_pieces)."""
    return blamed_count == 1 or bad_pieces >= limit
