"""What the local API reads and drives of its node, each part by the narrow
protocol it uses (the services of `mcp2p.app.build` meet them).

The API observes the whole node (status, overview, metrics) and starts
searches and fetches, so it is handed every part; the protocols say which
attributes and methods it touches, so a service can change anything else
without reading the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mcp2p.catalog import CatalogEntry
    from mcp2p.interfaces import Clock, IDiscoveryMethod
    from mcp2p.transfer.fetching import Transfer
    from mcp2p.transfer.session import Session
    from mcp2p.trust.keys import NodeIdentity
    from mcp2p.trust.keyserver import KeyStore
    from mcp2p.wire.types import FileOffer


class Shares(Protocol):
    """The catalog as the API shows it (`mcp2p.catalog.Catalog`)."""

    def __len__(self) -> int: ...

    def entries(self) -> list[CatalogEntry]: ...


class Serving(Protocol):
    """The SN side (`mcp2p.transfer.serving.ServingService`)."""

    @property
    def catalog(self) -> Shares: ...

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def contents(self) -> Mapping[Session, Any]: ...  # the catalog entry each session streams

    @property
    def subscriptions(self) -> Sized: ...

    def offers(self, version: int = 4) -> list[FileOffer]: ...

    def live_sessions(self) -> list[Session]: ...

    def session_totals(self) -> dict[str, int]: ...


class Discovery(Protocol):
    """The discovery methods (`mcp2p.discovery.service.DiscoveryService`)."""

    @property
    def methods(self) -> Mapping[str, IDiscoveryMethod]: ...

    @property
    def peers(self) -> Mapping[bytes, dict[str, Any]]: ...  # node id -> latest search's word

    def stats(self) -> dict[str, Any]: ...

    def search(self, method: str, **kwargs: Any) -> Deferred[Any]: ...


class Fetching(Protocol):
    """The CN side (`mcp2p.transfer.fetching.FetchingService`)."""

    @property
    def transfers(self) -> Mapping[int, Transfer]: ...

    def fetch(self, target: str, out_dir: Path | None = None, **options: Any) -> Transfer: ...


class Counted(Protocol):
    """A part seen only through its counters (`mcp2p.trust.gate.TrustGate`)."""

    @property
    def counters(self) -> Mapping[str, int]: ...


class Keys(Protocol):
    """The key server (`mcp2p.trust.keyserver.KeyService`)."""

    @property
    def store(self) -> KeyStore: ...

    @property
    def counters(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class Parts:
    """The node as the API sees it; ``app.build`` makes it once every part exists."""

    clock: Clock
    identity: NodeIdentity
    interface: str  # [node] interface, as the status shows it
    serving: Serving
    discovery: Discovery
    fetching: Fetching
    trust: Counted
    keys: Keys | None = None  # the key server, when [keys] serve = yes
