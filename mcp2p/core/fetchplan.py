"""A fetch's pure decisions (DESIGN.md 5): which SN is tried first, who is
asked for what, when a source has stalled, whom a bad piece is blamed on,
where the share of a dropped SN goes (failover), when an ended session is
asked for again, and when the fetch has spent its budgets.

`transfer.fetch.Fetch` holds the sources, their control channels and
sessions; it tells these functions what happened (events in) and does
what they answer (actions out: subscribe, send a wanted map, drop a
source, search again, fail), as `mcp2p.discovery.query` does for
`mcp2p.core.ring`. Units are blocks, or pieces for a block code: whatever
`Fetch` asks for.

Pure: no Twisted, no I/O, no clock (``now`` comes in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from mcp2p.core.wanted import RangeSet
from mcp2p.wire.layout import Layout

# -- ranking


def rank(trusted: bool, distance: int | None, rate: int) -> tuple[bool, int, int]:
    """Sort key of a candidate SN: trusted first, then nearest (unknown
    distance last), then fastest offer (DESIGN.md 5.1)."""
    return (not trusted, distance or 255, -rate)


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


def piece_units(layout: Layout, piece: int, per_block: bool) -> RangeSet:
    """The units of ``piece``: its blocks with the plain code (one unit per
    block), else the piece itself."""
    if per_block:
        blocks = layout.piece_blocks(piece)
        return RangeSet([(blocks.start, blocks.stop)])
    return RangeSet([(piece, piece + 1)])


def rewant_target(active: Sequence[tuple[str, int]], senders: Set[str]) -> int | None:
    """Which active source, given as (name, bad pieces) in the fetch's order,
    is asked for the whole of a piece wanted again (it failed verification):
    one that did not send it if there is one, so a liar's blocks are never
    mixed into an honest SN's retry; then the one with fewest bad pieces;
    then the first. None when no source is active."""
    if not active:
        return None
    return min(range(len(active)), key=lambda i: (active[i][0] in senders, active[i][1]))


# -- failover: where orphaned units go


@dataclass(frozen=True)
class Deal:
    """Add ``parts[i]`` to the share of the i-th active source (and ask it)."""

    parts: tuple[RangeSet, ...]


@dataclass(frozen=True)
class TakeCandidate:
    """Subscribe to the first candidate, for ``units``."""

    units: RangeSet


@dataclass(frozen=True)
class SearchAgain:
    """No source active and no candidate left: search for other SNs."""


@dataclass(frozen=True)
class GiveUp:
    """The fetch fails with ``reason`` (one line)."""

    reason: str


Failover = Deal | TakeCandidate | SearchAgain | GiveUp


def failover(
    orphaned: RangeSet,
    active: int,
    candidate: bytes | None,
    searching: bool,
    budget: Budget,
    last_drop: str = "",
) -> Failover | None:
    """What to do with ``orphaned`` units (see `orphaned`), with ``active``
    sources left and ``candidate`` the node id of the first candidate (None:
    none left). The active sources share them; without one, the next
    candidate takes them all, unless the budgets forbid another
    subscription; without a candidate, a new search looks for SNs. None:
    nothing to do (nothing orphaned, or a search is under way and will ask
    again when it ends)."""
    if not orphaned:
        return None
    if active:
        return Deal(tuple(deal(orphaned, active)))
    if searching:
        return None
    why = budget.over_subscribed(last_drop) or (
        budget.over_tried(candidate) if candidate is not None else ""
    )
    if why:
        return GiveUp(why)
    if candidate is None:
        return SearchAgain()
    return TakeCandidate(orphaned)


def failover_due(dropped_shares: bool, missing: bool, active_shares: bool) -> bool:
    """Whether a supervision tick looks for where units go: a dropped source
    still holds a share, or units are missing that no active source has."""
    return dropped_shares or (missing and not active_shares)


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


class Watched(NamedTuple):
    """One active source as a supervision tick sees it."""

    has_share: bool
    last_progress: float
    nudged_at: float


def supervise(
    now: float, active: Sequence[Watched], candidates: bool, stall_timeout: float
) -> list[Stall]:
    """The verdict on each active source at one tick, in order. A source is
    ``alone`` when it is the last active one not yet found stalled at this
    tick and there is no candidate to turn to."""
    out: list[Stall] = []
    left = len(active)
    for source in active:
        verdict = stall_verdict(
            now,
            source.last_progress,
            source.nudged_at,
            source.has_share,
            left <= 1 and not candidates,
            stall_timeout,
        )
        if verdict == "stalled":
            left -= 1
        out.append(verdict)
    return out


# -- an SN ends our session

MAX_RESUBSCRIBES = 3  # per SN, in a row, when its session ends while we still miss units

# Reasons (prefixes) for which an SN's end of our session asks for a new
# subscription to the same SN (see ServingService: "moved: ...", "no reports").
RESUBSCRIBE_ON = ("nothing wanted", "moved:", "no reports")


@dataclass(frozen=True)
class Resubscribe:
    """Subscribe to the same SN again, for what is still missing of its share;
    ``in_a_row`` is its count of resubscribes without a unit delivered in between."""

    in_a_row: int


@dataclass(frozen=True)
class Drop:
    """Drop the source (and hand its share on), for ``reason``."""

    reason: str


def session_ended(
    reason: str,
    still_missing: bool,
    connected: bool,
    in_a_row: int,
    delivered_since: bool,
    over_subscribed: bool,
) -> Resubscribe | Drop:
    """The SN ended our session for ``reason``. "nothing wanted" while units
    of our share are still missing means it ended before our loss reports
    arrived (optimistic sending marks what it sent as delivered); "moved"
    means it took us out of a shared session because we were far slower
    than the rest (a new subscription gets a session of our own); "no
    reports" that our reports did not reach it. Each time the same SN is
    asked again while its control channel is open, up to `MAX_RESUBSCRIBES`
    times in a row (a unit ``delivered_since`` the last resubscribe resets
    the count) and within [fetching] max_subscriptions; else it is dropped."""
    if delivered_since:
        in_a_row = 0
    if (
        reason.startswith(RESUBSCRIBE_ON)
        and still_missing
        and connected
        and in_a_row < MAX_RESUBSCRIBES
        and not over_subscribed
    ):
        return Resubscribe(in_a_row + 1)
    return Drop(f"session ended: {reason}")


# -- budgets

MIN_UNVERIFIED = 64 << 20  # [fetching] max_unverified = 0: at least this many bytes


@dataclass
class Budget:
    """What one fetch has spent of its bounds ([fetching] max_subscriptions,
    max_sources_tried, max_unverified, max_in_flight): SNs whose data never
    verifies cannot keep it going for ever."""

    max_subscriptions: int
    max_sources_tried: int
    max_unverified: int  # 0: twice the bytes still missing, at least MIN_UNVERIFIED
    max_in_flight: int
    subscriptions: int = 0
    tried: set[bytes] = field(default_factory=set)  # node ids connected to
    mark: tuple[int, int] = (0, 0)  # (bytes verified, bytes received) at the last progress

    def over_tried(self, node_id: bytes) -> str:
        """Why trying the SN ``node_id`` would break max_sources_tried, or ""."""
        if node_id in self.tried or len(self.tried) < self.max_sources_tried:
            return ""
        return f"gave up after trying {len(self.tried)} SNs ([fetching] max_sources_tried)"

    def over_subscribed(self, last_drop: str = "") -> str:
        """Why one more subscription would break max_subscriptions, or ""."""
        if self.subscriptions < self.max_subscriptions:
            return ""
        last = f"; last: {last_drop}" if last_drop else ""
        return (
            f"gave up after {self.subscriptions} subscriptions without finishing "
            f"([fetching] max_subscriptions){last}"
        )

    def over_spent(
        self,
        in_flight: int,
        received: int | None,
        verified: int,
        size: int,
        last_drop: str = "",
    ) -> str:
        """Why the fetch must stop now, or "": ``in_flight`` bytes held in
        pieces not yet decoded beyond max_in_flight, or ``received`` bytes
        (written and duplicate blocks; None for a block code, whose pieces
        are verified before they are written) grown beyond max_unverified
        since ``verified`` last grew. A received count that went down (a
        piece thrown away and fetched again) moves the mark too."""
        if in_flight > self.max_in_flight:
            return (
                f"gave up: {in_flight} bytes held in unfinished pieces "
                f"([fetching] max_in_flight is {self.max_in_flight})"
            )
        if received is None:
            return ""
        if verified > self.mark[0] or received < self.mark[1]:
            self.mark = (verified, received)
        limit = self.max_unverified or max(MIN_UNVERIFIED, 2 * (size - verified))
        wasted = received - self.mark[1]
        if wasted > limit:
            return (
                f"gave up: {wasted} bytes received without a piece verifying "
                f"([fetching] max_unverified: {limit})"
                + (f"; last: {last_drop}" if last_drop else "")
            )
        return ""


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


# -- the group's IP version


def group_family(wanted: str, sn_address: str, have_ipv6: bool) -> int:
    """The IP version of the group to ask an SN found at ``sn_address`` for
    ([fetching] family ``wanted``): auto is that of the SN's address when this
    node has IPv6 ([node] interface6), else 4. ValueError for 6 without IPv6."""
    if wanted == "6" or (wanted == "auto" and ":" in sn_address):
        if not have_ipv6:
            if wanted == "6":
                raise ValueError("[fetching] family = 6 needs [node] interface6")
            return 4
        return 6
    return 4
