"""What every job of a fetch shares: its errors, the ``Source`` (one SN in a
fetch and where it stands), the ``Search`` it is handed, the reactor it
uses (``IFetchReactor``) and its log."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from mcp2p.core.ring import ServerRecord
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import ControlClient
from mcp2p.transfer.receiver import Receiver
from mcp2p.wire.types import FileOffer

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IReactorMulticast,
        IReactorTCP,
        IReactorTime,
        IReactorUDP,
    )

    from mcp2p.discovery.query import SearchResult

    class IFetchReactor(IReactorTime, IReactorTCP, IReactorUDP, IReactorMulticast):
        """What a fetch uses of the reactor: time, TCP for the control
        channels, UDP and multicast ports for the data."""


# One log namespace for every module of the fetch, as when it was one module.
_log = Logger(namespace="mcp2p.transfer.fetch")


class FetchError(Exception):
    """The fetch cannot finish; the message says why, in one line."""


class NotFound(FetchError):
    """No node offers what the target names (event ``not_found`` says so too)."""


class Ambiguous(FetchError):
    """A content id prefix matches several files, or a name several content ids
    that trust does not decide between (event ``ambiguous`` lists them)."""


FULL_ID = re.compile(r"[0-9a-fA-F]{64}")
ID_PREFIX = re.compile(r"[0-9a-fA-F]{8,63}")


# Where one SN (a Source) stands in a fetch: the "state" of each source in the
# progress events and /api/transfers. Forward in this order, except that a
# resubscribe goes from "active" back to "connected", a failure at any step
# drops it, and the fetch's end closes every source whatever its state.
SourceState = Literal[
    "new",  # a candidate: found by the search, no control channel yet
    "connected",  # its TLS control channel is open (also again while it resubscribes)
    "active",  # subscribed: its session sends us blocks of its share
    "dropped",  # given up (stalled, bad data, channel lost): its share went to others
    "closed",  # the fetch ended (done, failed or cancelled) and closed its channel
]


@dataclass
class Source:
    server: ServerRecord
    offer: FileOffer
    client: ControlClient | None = None
    receiver: Receiver | None = None
    port: Any = None
    subscription: int = 0
    share: RangeSet = field(default_factory=RangeSet)
    bad_pieces: int = 0
    state: SourceState = "new"
    mode: str = "multicast"
    rate: int = 0
    last_progress: float = 0.0
    nudged_at: float = 0.0
    blocks: int = 0
    resubscribes: int = 0  # in a row, without a block delivered in between
    blocks_at_resubscribe: int = 0
    refused: bool = False  # dropped for data that failed verification

    @property
    def name(self) -> str:
        return self.server.node_id.hex()[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "address": self.server.address,
            "distance": self.server.distance,
            "mode": self.mode,
            "state": self.state,
            "rate": self.rate,
            "blocks": self.blocks,
            "bad_pieces": self.bad_pieces,
        }


class Search(Protocol):
    """How a fetch searches: `mcp2p.app.Client.search`, or the daemon's
    discovery through `FetchingService.search` (options as
    `mcp2p.discovery.query.QueryNode.search` takes them)."""

    def __call__(
        self, *, pattern: str | None, content_id: bytes | None, **options: Any
    ) -> defer.Deferred[SearchResult]: ...
