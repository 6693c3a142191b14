"""FetchingService: the CN side of transfers, for the daemon's API and the CLI.

Each fetch gets an id; its events (found, manifest, subscribed, progress,
source_dropped, done, failed) are kept so that a client polling the API
sees them in order.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mcp2p.core.display import display_name, display_text
from mcp2p.transfer.downloads import OutDir, open_out_dir
from mcp2p.transfer.fetch import Fetch

if TYPE_CHECKING:
    from mcp2p.config import Config
    from mcp2p.transfer.fetch import IFetchReactor
    from mcp2p.trust.gate import TrustGate
    from mcp2p.trust.keys import NodeIdentity

_log = Logger()

MAX_EVENTS = 1000


class Discovery(Protocol):
    """How fetches search: the node's `mcp2p.discovery.service.DiscoveryService`,
    by its ``query`` method."""

    def search(self, method: str, **kwargs: Any) -> defer.Deferred[Any]: ...


class Transfer:
    def __init__(self, tid: int, target: str) -> None:
        self.id = tid
        self.target = target
        self.events: list[dict[str, Any]] = []
        self.first_index = 0  # index of events[0] in the whole stream
        self.state = "running"
        self.result: str | None = None
        self.deferred: defer.Deferred[Any] | None = None
        self.fetch: Fetch | None = None  # while it runs; then ``final`` keeps its counters
        self.final: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}  # the latest event of each kind

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.last[str(event.get("event"))] = event
        if len(self.events) > MAX_EVENTS:
            # Keep the first few (what was found) and the latest.
            drop = len(self.events) - MAX_EVENTS
            self.events = self.events[:10] + self.events[10 + drop :]
            self.first_index += drop

    def since(self, index: int) -> tuple[list[dict[str, Any]], int]:
        total = self.first_index + len(self.events)
        start = max(0, index - self.first_index)
        return self.events[start:], total

    def counters(self) -> dict[str, float]:
        """Packets, losses, forgeries, bad pieces... so far (see `Fetch.totals`)."""
        return self.fetch.totals() if self.fetch is not None else self.final

    def summary(self) -> dict[str, Any]:
        """What the status page and ``GET /api/transfers`` show of it."""
        manifest = self.last.get("manifest", {})
        progress = self.last.get("progress", {})
        done = self.last.get("done")
        total = manifest.get("size", progress.get("total"))
        nbytes = progress.get("bytes", 0)
        if done is not None:
            nbytes = done.get("bytes", total)
        return {
            "id": self.id,
            "target": self.target,
            "state": self.state,
            "result": self.result,
            "name": manifest.get("name"),
            "content_id": manifest.get("content_id", self.last.get("found", {}).get("content_id")),
            "bytes": nbytes,
            "total": total,
            "rate": progress.get("rate", 0.0) if self.state == "running" else 0.0,
            "eta": progress.get("eta") if self.state == "running" else None,
            "sources": progress.get("sources", []),
        }


def _shown_paths(event: dict[str, Any], directory: OutDir) -> dict[str, Any]:
    """The event with the store's /proc/self/fd path replaced by the real one."""
    for key in ("path", "error"):
        if isinstance(event.get(key), str):
            event[key] = directory.shown(event[key])
    return event


class FetchingService(Service):
    name = "fetching"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: IFetchReactor,
        config: Config,
        identity: NodeIdentity,
        discovery: Discovery,
        trust: TrustGate,
    ) -> None:
        """Fetches as ``identity`` into ``[fetching] download_dirs``, finding
        sources through ``discovery`` and judging them through ``trust`` (the
        node's gate). Each `Fetch` is handed the whole ``config``: it reads
        [fetching], [node] and [discovery]."""
        self.reactor = reactor
        self.config = config
        self.identity = identity
        self.discovery = discovery
        self.trust = trust
        self.transfers: dict[int, Transfer] = {}
        self.ids = itertools.count(1)

    def startService(self) -> None:
        # The owner's directories, from the config: made here, never by a request.
        for directory in self.config.fetching.download_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        running = [
            t.deferred for t in self.transfers.values() if t.deferred and not t.deferred.called
        ]
        for d in running:
            d.cancel()
        return defer.DeferredList(running, consumeErrors=True)

    def search(self, **kw: Any) -> defer.Deferred[Any]:
        return self.discovery.search("query", **kw)

    def fetch(self, target: str, out_dir: Path | None = None, **options: Any) -> Transfer:
        """Start fetching ``target`` into ``out_dir`` (default: the first download dir).

        Raises OutDirRefused (before anything starts) when ``out_dir`` is not
        inside ``[fetching] download_dirs`` (see mcp2p.transfer.downloads).
        """
        allowed = self.config.fetching.download_dirs
        directory = open_out_dir(out_dir or allowed[0], allowed)
        transfer = Transfer(next(self.ids), target)
        try:
            fetch = Fetch(
                self.reactor,
                self.config,
                self.identity,
                self.search,
                target,
                directory.store_path,
                on_event=lambda event: transfer.add(_shown_paths(event, directory)),
                trust=self.trust,
                **options,
            )
        except BaseException:
            directory.close()
            raise
        self.transfers[transfer.id] = transfer
        transfer.fetch = fetch
        d = defer.ensureDeferred(fetch.run())

        def finished() -> None:
            # Keep the counts, not the Fetch (its receivers, decoder and store).
            transfer.final, transfer.fetch = fetch.totals(), None
            directory.close()

        def done(path: Path) -> None:
            result = directory.shown(str(path))
            finished()
            transfer.state, transfer.result = "done", result

        def failed(f: Any) -> None:
            error = directory.shown(f.getErrorMessage())
            finished()
            transfer.state, transfer.result = "failed", error
            transfer.add({"event": "failed", "error": error})
            _log.info(
                "fetch {target} failed: {error}",
                target=display_name(target),
                error=display_text(error),
            )

        d.addCallbacks(done, failed)
        transfer.deferred = d
        return transfer
