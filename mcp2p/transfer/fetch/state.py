"""What a fetch knows: the fields every layer of ``Fetch`` shares, made in
``__init__``, and the plain queries on them (events, timeouts, what is missing).

``Fetch`` is one object built in layers, one module each, every layer using
those below it (so a call is an ordinary method call, never a hop through
another object): ``FetchState`` (here), ``SourceControl`` (``control``: one
SN's channel and subscription), ``Resolution`` (``resolve``: the target's
content id, its candidates and manifest), ``Supervision`` (``supervise``:
ticks, stalls, budgets, progress, failover), ``Transfer`` (``transfer``: the
whole run and its end), ``Fetch`` (``data``: the per-packet path, on the
class itself). Three calls go upward and are declared here: the receiver's
``_deliver`` and ``_deliver_many`` (``data``) and ``_redistribute``
(``supervise``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from mcp2p.core import fetchplan
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.fetch.common import Search, Source, _log
from mcp2p.transfer.receiver import Items
from mcp2p.trust.policy import PICKS, Standing
from mcp2p.wire.layout import Layout
from mcp2p.wire.manifest import Manifest

if TYPE_CHECKING:
    from mcp2p.config import Config
    from mcp2p.transfer.fetch.common import IFetchReactor
    from mcp2p.trust.gate import TrustGate
    from mcp2p.trust.keys import NodeIdentity


class FetchState:
    """The bottom layer of ``Fetch``: the state of one download."""

    def __init__(
        self,
        reactor: IFetchReactor,
        config: Config,
        identity: NodeIdentity,
        search: Search,
        target: str,
        out_dir: Path,
        *,
        mode: str | None = None,
        rate: int = 0,
        sources: int | None = None,
        code: str | None = None,
        pick: str | None = None,
        trust: TrustGate | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        from mcp2p.plugins import code_by_name
        from mcp2p.trust.gate import TrustGate

        self.reactor = reactor
        self.config = config
        self.identity = identity
        self.search = search
        self.target = target
        self.out_dir = Path(out_dir)
        f = config.fetching
        self.mode = mode or f.mode
        self.rate = rate
        self.max_sources = sources or f.sources
        self.code = code_by_name(code or f.code, self.mode)
        self.on_event = on_event or (lambda e: None)
        if pick is not None and pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}")
        self.pick = pick
        # The node's trust gate (one per daemon); a fetch without a daemon reads
        # the same known_nodes through a gate of its own.
        self.trust = trust if trust is not None else TrustGate.from_config(config, reactor)
        self.standings: dict[bytes, Standing] = {}  # node id -> standing, per search answer
        self.interface = str(config.node.interface)
        self.interface6 = str(config.node.interface6)
        self.sources: list[Source] = []
        self.candidates: list[Source] = []
        self.connected: list[Source] = []  # every source _connect was called for
        self.store: Any = None
        self.manifest: Manifest | None = None
        self.decoder: Any = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self.started = reactor.seconds()
        self.loop: task.LoopingCall | None = None
        self.rate_window: list[tuple[float, int]] = []
        self.contributors: dict[int, set[str]] = {}  # piece -> SNs that sent its blocks
        self.counters = {"bad_blocks": 0, "bad_pieces": 0, "pieces": 0}
        self.searching = False
        self.researches = 0
        self.budget = fetchplan.Budget(
            max_subscriptions=f.max_subscriptions,
            max_sources_tried=f.max_sources_tried,
            max_unverified=f.max_unverified,
            max_in_flight=f.max_in_flight,
        )
        self.last_drop = ""  # "<node> <reason>" of the last source dropped, for errors

    def event(self, kind: str, **fields: Any) -> None:
        fields["event"] = kind
        try:
            self.on_event(fields)
        except Exception:  # a display problem must not stop the transfer
            _log.failure("progress observer failed")

    def _timed(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """``d``, failed with a TimeoutError if an SN leaves it unanswered too long."""
        timeout = max(10.0, 4 * self.config.fetching.stall_timeout)
        return d.addTimeout(timeout, self.reactor)

    def _missing(self) -> RangeSet:
        if self.per_block:
            return RangeSet(self.store.missing_block_ranges())
        return RangeSet.from_indices(self.store.missing_pieces())

    @functools.cached_property
    def layout(self) -> Layout:
        """The manifest's layout, made once: the data path needs it per packet."""
        assert self.manifest is not None
        return self.manifest.layout

    @functools.cached_property
    def per_block(self) -> bool:
        """One symbol per block (the plain code): blocks go to the store as they come."""
        return bool(self.code.units(self.layout) == self.layout.blocks)

    def _active(self) -> list[Source]:
        return [s for s in self.sources if s.state == "active"]

    # -- declared here, defined above

    def _deliver(self, source: Source, piece: int, symbol: int, payload: bytes) -> None:
        """One authenticated packet of ``source`` (``data``)."""
        raise NotImplementedError

    def _deliver_many(self, source: Source, items: Items) -> None:
        """The authenticated packets of one batch of ``source`` (``data``)."""
        raise NotImplementedError

    def _redistribute(self) -> None:
        """Give the shares of dropped SNs to others (``supervise``)."""
        raise NotImplementedError
