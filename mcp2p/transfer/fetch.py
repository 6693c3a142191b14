"""One download: find SNs, fetch the manifest, subscribe, receive, verify, deliver.

``Fetch.run()`` is the CN's whole transfer (DESIGN.md 5.1-5.8):

1. search for the content id (or resolve a content id prefix or a name to
   one content id, see `Fetch._find`); candidates sorted nearest first,
   then by rate;
2. open the TLS control channel to the first candidate, checking its key
   against the node id of its OFFER; download and verify the signed
   manifest (signature by that key, Merkle root = content id);
3. open the partial file (resuming verified pieces) and split the missing
   units between up to ``sources`` SNs;
4. subscribe to each (multicast: join its SSM/ASM group; unicast: a port of
   our own), hand every authenticated packet to the store, report losses,
   resync wanted maps, drop an SN that stalls or lies and give its share to
   the others (or to a new candidate);
5. when every piece verified, rename the file into place and unsubscribe.

Progress is reported as events (dicts) to ``on_event``.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from mcp2p import multicast
from mcp2p.core import fetchplan
from mcp2p.core.display import display_text
from mcp2p.core.ring import ServerRecord
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import (
    CHUNK,
    ControlClient,
    GetManifest,
    ReportLoss,
    Subscribe,
    Unsubscribe,
    UpdateWanted,
)
from mcp2p.transfer.receiver import Items, Receiver, read_in_batches
from mcp2p.transfer.store import StoreError, part_name
from mcp2p.trust.keys import node_id_of
from mcp2p.trust.policy import PICKS, Candidate, Standing, choose
from mcp2p.wire.layout import Layout
from mcp2p.wire.manifest import Manifest, decode_manifest, verify_manifest
from mcp2p.wire.query import prefix_matches
from mcp2p.wire.types import FileOffer

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IReactorMulticast,
        IReactorTCP,
        IReactorTime,
        IReactorUDP,
    )

    from mcp2p.config import Config
    from mcp2p.discovery.query import SearchResult
    from mcp2p.trust.gate import TrustGate
    from mcp2p.trust.keys import NodeIdentity

    class IFetchReactor(IReactorTime, IReactorTCP, IReactorUDP, IReactorMulticast):
        """What a fetch uses of the reactor: time, TCP for the control
        channels, UDP and multicast ports for the data."""


_log = Logger()

TICK = 0.5  # seconds between progress events, stall checks and wanted resyncs
MAX_MANIFEST = 64 << 20
RCVBUF = 16 << 20  # bytes of receive buffer asked for per data socket


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


class Fetch:
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

    # -- the whole transfer

    async def run(self) -> Path:
        try:
            content_id = await self._find()
            first = await self._manifest(content_id)
            assert self.manifest is not None
            from mcp2p.transfer.store import PartialFile

            self._check_space()
            self.store = PartialFile.open(self.out_dir, self.config.node.state_dir, self.manifest)
            # The plain code's blocks go straight to the store (which keeps one
            # byte per block): a decoder would only keep a second such map.
            self.decoder = None if self.per_block else self.code.decoder(self.manifest.layout)
            if hasattr(self.decoder, "max_pending"):  # its buffers within [fetching] max_in_flight
                self.decoder.max_pending = self.config.fetching.max_in_flight
            self.event(
                "manifest",
                name=self.manifest.name,
                size=self.manifest.size,
                content_id=content_id.hex(),
                pieces=self.manifest.layout.pieces,
                verified=self.store.verified_pieces,
            )
            if not self.store.complete:
                self.sources = [first]
                for extra in self.candidates[: self.max_sources - 1]:
                    self.candidates.remove(extra)
                    self.sources.append(extra)
                await self._start_sources(self.sources, self._missing())
                self.loop = task.LoopingCall(self._tick)
                self.loop.clock = self.reactor
                self.loop.start(TICK, now=False)
                await self.done
            path = self.store.finalize()
            self._record_use()
            self.event(
                "done",
                path=str(path),
                elapsed=self.reactor.seconds() - self.started,
                bytes=self.manifest.size,
                store=dict(self.store.counters),
                receivers=[dict(s.receiver.counters) for s in self.sources if s.receiver],
                **self.counters,
            )
            return Path(path)
        finally:
            if self.done.called:
                self.done.addErrback(lambda f: None)  # failed before run() awaited it
            await self._close()

    def totals(self) -> dict[str, float]:
        """Every counter of this transfer, its receivers' summed (the longest
        forged hold: their maximum), the store's as ``store_...``."""
        out: dict[str, float] = dict(self.counters)
        for source in self.sources:
            if source.receiver is None:
                continue
            for key, value in source.receiver.counters.items():
                if key == "forged_hold_max":
                    out[key] = max(out.get(key, 0.0), value)
                else:
                    out[key] = out.get(key, 0) + value
        if self.store is not None:
            for key, value in self.store.counters.items():
                out["store_" + key] = value
            out["bytes_verified"] = self.store.bytes_verified
        return out

    def event(self, kind: str, **fields: Any) -> None:
        fields["event"] = kind
        try:
            self.on_event(fields)
        except Exception:  # a display problem must not stop the transfer
            _log.failure("progress observer failed")

    async def _find(self) -> bytes:
        """The content id the target names, with ``self.candidates`` offering it.

        Precedence: 64 hex digits are a content id, nothing else. 8-63 hex
        digits are first a content id prefix (as git abbreviates object
        names): one QUERY asks SNs for the files whose id starts with them;
        one matching id is the answer, several are ``Ambiguous``. Only when
        no node offers such an id are they tried as a file name. Anything
        else is a file name (exact). A name is a label, not a vote: when
        several content ids answer to it, the one trusted nodes offer is
        taken, else ``Ambiguous`` lists them, unless ``pick`` says how to
        choose (`mcp2p.trust.policy.choose`).

        Offers of nodes the ``[trust] policy`` refuses (a key changed; under
        ``pinned``, every node not in known_nodes) are dropped; trusted SNs
        are tried first.
        """
        content_id: bytes | None = None
        result: SearchResult | None = None
        if FULL_ID.fullmatch(self.target):
            content_id = bytes.fromhex(self.target)
            result = await self.search(
                pattern=None, content_id=content_id, answers=self.max_sources
            )
        elif ID_PREFIX.fullmatch(self.target):
            content_id, result = await self._resolve_prefix(self.target.lower())
        if content_id is None:
            # A name is resolved among every answer the search waits for, so
            # the other files it stands for are seen, not only the nearest.
            answers = max(self.max_sources, self.config.discovery.answers_wanted)
            result = await self.search(pattern=self.target, content_id=None, answers=answers)
            content_id = await self._resolve_name(result)
        assert result is not None  # every branch above searched
        await self._judge(result.servers)
        found = [
            Source(s, s.files[content_id], mode=self.mode)
            for s in result.servers
            if content_id in s.files and self._believed(s)
        ]
        if not found:
            self._not_found(f"no node offers content {content_id.hex()}")
        found.sort(key=self._rank)
        self.candidates = found
        self.event("found", content_id=content_id.hex(), sources=[c.to_json() for c in found])
        return content_id

    async def _judge(self, servers: list[ServerRecord]) -> None:
        """Each answering node's standing under the trust policy, in ``self.standings``
        (the key servers, where the policy asks them, are asked all at once)."""
        asked: dict[bytes, defer.Deferred[Standing]] = {}
        for s in servers:
            if s.node_id in self.standings or s.node_id in asked:
                continue
            if node_id_of(s.public_key) != s.node_id:
                self.standings[s.node_id] = Standing.REFUSED
                continue
            address = _endpoint(s)
            now = self.trust.standing_now(s.node_id, s.public_key, address)
            if now is None:
                asked[s.node_id] = self.trust.standing_of(s.node_id, s.public_key, address)
            else:
                self.standings[s.node_id] = now
        for node_id, d in asked.items():
            self.standings[node_id] = await d

    def _believed(self, server: ServerRecord) -> bool:
        return self.standings.get(server.node_id) not in (None, Standing.REFUSED)

    def _rank(self, c: Source) -> tuple[bool, int, int]:
        trusted = self.standings.get(c.server.node_id) is Standing.TRUSTED
        return fetchplan.rank(trusted, c.server.distance, c.offer.rate)

    async def _resolve_name(self, result: SearchResult) -> bytes:
        """The content id the name ``self.target`` stands for among the offers of
        ``result`` (nodes the policy refuses left out), or NotFound / Ambiguous."""
        await self._judge(result.servers)
        offers: dict[bytes, tuple[FileOffer, list[ServerRecord]]] = {}
        for server in result.servers:
            if not self._believed(server):
                continue
            for f in server.files.values():
                if f.name == self.target:
                    offers.setdefault(f.content_id, (f, []))[1].append(server)
        if not offers:
            what = f"a file named {self.target!r}"
            if ID_PREFIX.fullmatch(self.target):
                what = f"a file whose content id starts with {self.target.lower()}, nor " + what
            self._not_found(f"no node offers {what}")
        candidates = [
            Candidate(
                cid,
                f.name,
                f.size,
                tuple(sorted(s.node_id for s in servers)),
                sum(self.standings.get(s.node_id) is Standing.TRUSTED for s in servers),
                min((s.distance for s in servers if s.distance is not None), default=None),
            )
            for cid, (f, servers) in offers.items()
        ]
        chosen = choose(candidates, self.pick)
        if chosen is None:
            shown = sorted(candidates, key=lambda c: (-c.trusted, -len(c.nodes), c.content_id))
            self.event(
                "ambiguous",
                name=self.target,
                candidates=[c.to_json() for c in shown],
            )
            trusted = sum(1 for c in candidates if c.trusted)
            why = (
                "trusted nodes offer several of them"
                if trusted > 1
                else "no trusted node offers any of them"
            )
            raise Ambiguous(
                f"name {self.target!r} is ambiguous: {len(candidates)} different files "
                f"({why}); give a content id, or --pick nearest|most|trusted"
            )
        if len(candidates) > 1:
            _log.info(
                "name {name} stands for {count} files: took {content_id} ({how})",
                name=display_text(self.target),
                count=len(candidates),
                content_id=chosen.content_id.hex()[:16],
                how=f"--pick {self.pick}" if self.pick else "the one trusted nodes offer",
            )
        return chosen.content_id

    def _record_use(self) -> None:
        """Trust on first use: the SNs whose data made a verified file are remembered."""
        assert self.manifest is not None
        used = [s for s in self.sources if not s.refused and (s.blocks > 0 or s is self.sources[0])]
        self.trust.record_use(
            [(s.server.node_id, s.server.public_key, _endpoint(s.server)) for s in used],
            self.manifest.name,
            self.manifest.content_id,
        )

    async def _resolve_prefix(self, prefix: str) -> tuple[bytes | None, SearchResult]:
        """The one content id starting with ``prefix`` that nodes offer, or None."""
        result = await self.search(
            pattern=None, content_id=None, content_id_prefix=prefix, answers=self.max_sources
        )
        matches: dict[bytes, tuple[FileOffer, list[str]]] = {}
        await self._judge(result.servers)
        for server in result.servers:
            if not self._believed(server):
                continue
            for f in server.files.values():
                if prefix_matches(prefix, f.content_id):  # an SN's answer is only a claim
                    matches.setdefault(f.content_id, (f, []))[1].append(server.node_id.hex())
        if len(matches) > 1:
            candidates = [
                {
                    "content_id": cid.hex(),
                    "size": f.size,
                    "name": f.name,
                    "nodes": sorted(nodes),
                }
                for cid, (f, nodes) in sorted(matches.items(), key=lambda m: m[1][0].name)
            ]
            self.event("ambiguous", prefix=prefix, candidates=candidates)
            raise Ambiguous(
                f"content id prefix {prefix} is ambiguous: {len(matches)} files match; "
                "give more digits"
            )
        if not matches:
            return None, result
        [content_id] = matches
        return content_id, result

    def _not_found(self, message: str) -> NoReturn:
        self.event("not_found", target=self.target, error=message)
        raise NotFound(message)

    async def _connect(self, source: Source) -> ControlClient:
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.protocol import Factory

        from mcp2p.trust.tls import VerifiedClientEndpoint

        host = source.server.address
        endpoint = VerifiedClientEndpoint(
            self.reactor,
            HostnameEndpoint(self.reactor, host, source.offer.control_port, timeout=10),
            self.identity,
            source.server.node_id,
        )
        self.budget.tried.add(source.server.node_id)
        try:
            client = await self._timed(endpoint.connect(Factory.forProtocol(ControlClient)))
        except Exception as e:
            raise FetchError(f"cannot reach {source.name} at {host}: {e}") from None
        source.client = client
        source.state = "connected"
        client.lost.addErrback(lambda f: None)
        client.lost.addCallback(lambda reason: self._lost(source))
        return client

    async def _manifest(self, content_id: bytes) -> Source:
        errors: list[str] = []
        f = self.config.fetching
        while self.candidates:
            why = self.budget.over_tried(self.candidates[0].server.node_id)
            if why:
                raise FetchError(why + ": " + "; ".join(errors[-3:]))
            source = self.candidates.pop(0)
            try:
                client = await self._connect(source)
                data = b""
                while True:
                    part = await self._timed(
                        client.callRemote(GetManifest, content_id=content_id, offset=len(data))
                    )
                    if (
                        part["total"] > MAX_MANIFEST
                        or not part["data"]
                        and len(data) < part["total"]
                    ):
                        raise ProtocolError("manifest too large or truncated")
                    data += part["data"]
                    if len(data) >= part["total"]:
                        break
                manifest = decode_manifest(
                    data, max_piece_length=f.max_piece_length, max_size=f.max_file_size
                )
                verify_manifest(manifest, content_id, source.server.public_key)
                self.manifest = manifest
                return source
            except Exception as e:  # try the next candidate
                errors.append(f"{source.name}: {e}")
                _log.warn(
                    "manifest from {node} refused: {error}",
                    node=source.name,
                    error=display_text(str(e)),
                )
                self._drop(source, "manifest failed")
        raise FetchError("no usable manifest: " + "; ".join(errors))

    def _timed(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """``d``, failed with a TimeoutError if an SN leaves it unanswered too long."""
        timeout = max(10.0, 4 * self.config.fetching.stall_timeout)
        return d.addTimeout(timeout, self.reactor)

    def _check_space(self) -> None:
        """Fail with "disk full" before allocating anything when the download
        directory cannot hold the bytes still missing (what a part file of
        ours already holds counts as there)."""
        m = self.manifest
        assert m is not None
        held = 0
        try:
            st = os.stat(self.out_dir / part_name(m.name, m.content_id), follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                held = min(m.size, st.st_blocks * 512)
        except (OSError, ValueError):
            pass
        need = m.size - held
        try:
            vfs = os.statvfs(self.out_dir)
        except OSError:
            return  # the store says what is wrong with the directory
        free = vfs.f_bavail * vfs.f_frsize
        if need > free:
            raise FetchError(
                f"disk full: {m.name!r} needs {need} bytes in {self.out_dir}, {free} free"
            )

    def _fail(self, error: Exception) -> None:
        """End the fetch with ``error`` (its message is the one line users see):
        every source is dropped so that nothing more is written."""
        if self.done.called:
            return
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        for source in self.sources:
            if source.state in ("active", "connected"):
                self._drop(source, "the fetch failed")
        self.done.errback(error)

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

    async def _start_sources(self, sources: list[Source], units: RangeSet) -> None:
        shares = fetchplan.deal(units, len(sources))
        results = await defer.DeferredList(
            [
                defer.ensureDeferred(self._subscribe(s, share))
                for s, share in zip(sources, shares, strict=True)
            ],
            consumeErrors=True,
        )
        for (ok, result), source in zip(results, sources, strict=True):
            failure: Any = result
            if not ok:
                _log.warn(
                    "subscribing to {node} failed: {error}",
                    node=source.name,
                    error=display_text(failure.getErrorMessage()),
                )
                self._drop(source, f"subscribe failed: {failure.getErrorMessage()}")
        if not any(s.state == "active" for s in self.sources):
            last = f" (last: {self.last_drop})" if self.last_drop else ""
            raise FetchError(f"no SN accepted the subscription{last}")

    async def _subscribe(self, source: Source, share: RangeSet) -> None:
        why = self.budget.over_subscribed(self.last_drop) or self.budget.over_tried(
            source.server.node_id
        )
        if why:
            raise FetchError(why)
        self.budget.subscriptions += 1
        if source.client is None:
            await self._connect(source)
        assert source.client is not None and self.manifest is not None
        source.share = share
        receiver = Receiver(
            self.reactor,
            0,
            lambda piece, symbol, payload: self._deliver(source, piece, symbol, payload),
            lambda lost, received: self._report(source, lost, received),
            deliver_many=lambda items: self._deliver_many(source, items),
        )
        source.receiver = receiver
        port = 0
        family = self._family(source)
        if source.mode == "unicast":
            # The SN sends to the address our control channel comes from: its family.
            here = self._address6() if ":" in source.server.address else self.interface
            # IReactorUDP declares no default maxPacketSize; the reactors' is 8192.
            source.port = self.reactor.listenUDP(0, receiver, interface=here)  # type: ignore[call-arg]
            multicast.set_buffers(source.port, receive=RCVBUF)
            read_in_batches(source.port, receiver)
            port = source.port.getHost().port
        chunks = wanted_chunks(share, replace=False)
        more = len(chunks) > 1  # too big for one value: sent by UpdateWanted below
        reply = await self._timed(
            source.client.callRemote(
                Subscribe,
                content_id=self.manifest.content_id,
                mode=source.mode,
                port=port,
                rate=self.rate,
                code=self.code.name,
                wanted=b"" if more else chunks[0],
                more=more,
                family=family,
            )
        )
        source.subscription = reply["subscription"]
        source.rate = reply["rate"]
        receiver.ssrc = reply["session_id"]
        source.client.handlers[source.subscription] = _Handler(self, source)
        if more:
            for chunk in chunks:
                await self._timed(
                    source.client.callRemote(
                        UpdateWanted, subscription=source.subscription, wanted=chunk, replace=False
                    )
                )
        if source.mode == "multicast":
            source.port = self._join(receiver, reply["group"], reply["source"], reply["port"])
        source.state = "active"
        source.last_progress = self.reactor.seconds()
        self.event(
            "subscribed",
            source=source.to_json(),
            group=reply["group"],
            session_id=reply["session_id"],
        )

    def _session_ended(self, source: Source, reason: str) -> None:
        """The SN ended our session: subscribe to it again for what is still
        missing of its share, or drop it (`fetchplan.session_ended` says which)."""
        if self.done.called:
            return
        still = source.share.intersection(self._missing())
        action = fetchplan.session_ended(
            reason,
            bool(still),
            source.client is not None,
            source.resubscribes,
            source.blocks > source.blocks_at_resubscribe,
            bool(self.budget.over_subscribed()),
        )
        if isinstance(action, fetchplan.Resubscribe):
            source.resubscribes = action.in_a_row
            source.blocks_at_resubscribe = source.blocks
            source.state = "connected"
            if source.port is not None:
                port, source.port = source.port, None
                port.stopListening()
            before = dict(source.receiver.counters) if source.receiver is not None else {}
            self.event("resubscribe", source=source.to_json(), reason=reason, units=len(still))

            async def again() -> None:
                await self._subscribe(source, still)
                if source.receiver is not None:
                    counters = source.receiver.counters
                    for key, value in before.items():
                        merged = max if key.endswith("_max") else (lambda a, b: a + b)
                        counters[key] = merged(counters.get(key, 0), value)

            def failed(f: Any) -> None:
                self._drop(source, f"resubscribe failed: {f.getErrorMessage()}")
                self._redistribute()

            defer.ensureDeferred(again()).addErrback(failed)
            return
        self._drop(source, action.reason)
        self._redistribute()

    def _moved(self, source: Source, group: str) -> None:
        """The SN's ASM session moved: follow it to its new group."""
        if source.state != "active" or source.receiver is None or source.port is None:
            return
        import ipaddress

        try:
            if not ipaddress.ip_address(group).is_multicast:
                raise ValueError(group)
        except ValueError:
            self._drop(source, f"moved to {group!r}, not a multicast group")
            return
        port = source.port.getHost().port
        old, source.port = source.port, None
        old.stopListening()
        # Its notices and held packets stay valid on the new group.
        source.receiver = source.receiver.successor()
        source.port = self._join(source.receiver, group, "", port)
        self.event("moved", source=source.to_json(), group=group)

    def _family(self, source: Source) -> int:
        """The IP version of the group to ask ``source`` for ([fetching] family):
        auto is that of the address the SN was found at, when this node has
        IPv6 ([node] interface6), else 4."""
        try:
            return fetchplan.group_family(
                self.config.fetching.family, source.server.address, bool(self.interface6)
            )
        except ValueError as e:
            raise FetchError(str(e)) from None

    def _address6(self) -> str:
        """This node's IPv6 address on interface6 (any IPv6 address without it)."""
        return multicast.interface_address6(self.interface6) if self.interface6 else "::"

    def _join(self, receiver: Receiver, group: str, source: str, port: int) -> Any:
        import ipaddress

        g = ipaddress.ip_address(group)
        if g.version == 6 and not self.interface6:
            raise FetchError(f"the SN's session is on IPv6 group {g}: set [node] interface6")
        interface = self.interface if g.version == 4 else self.interface6
        src = ipaddress.ip_address(source) if source else None
        lport = multicast.listen_group(self.reactor, receiver, g, port, interface, src)
        multicast.set_buffers(lport, receive=RCVBUF)
        read_in_batches(lport, receiver)
        return lport

    # -- data path

    def _deliver(self, source: Source, piece: int, symbol: int, payload: bytes) -> None:
        if source.state != "active":
            return  # the rest of a dropped SN's burst: not trusted any more
        layout = self.layout
        try:
            if self.per_block:
                index = layout.block_index(piece, symbol)
                event = self.store.write_block(index, payload)
                events = [event] if event is not None else []
            else:
                events = []
                for offset, data in self.decoder.add(piece, symbol, payload):
                    events.append(self.store.write_piece(offset // layout.piece_length, data))
        except ValueError:
            self.counters["bad_blocks"] += 1
            return
        except StoreError as e:  # a full disk: the fetch ends, in one line
            self._fail(FetchError(str(e)))
            return
        source.blocks += 1
        source.last_progress = self.reactor.seconds()
        self.contributors.setdefault(piece, set()).add(source.name)
        for event in events:
            if event is None:
                continue
            if event.ok:
                self.counters["pieces"] += 1
                self.contributors.pop(event.piece, None)
            else:
                self._bad_piece(event.piece)
        if self.store.complete and not self.done.called:
            self.done.callback(None)

    def _deliver_many(self, source: Source, items: Items) -> None:
        """The authenticated packets of one batch (payloads are views into the
        reader's buffer, valid during this call): with the plain code, written
        to the store together; with a code whose decoder takes a batch
        (``add_many``: RaptorQ), decoded together; else one by one through
        ``_deliver``."""
        if source.state != "active":
            return
        deliver = self._deliver
        ours = getattr(deliver, "__func__", None) is Fetch._deliver
        if not ours or not (self.per_block or hasattr(self.decoder, "add_many")):
            for piece, symbol, payload in items:  # a block code keeps its symbols: copied
                deliver(source, piece, symbol, bytes(payload))
                if source.state != "active":
                    return
            return
        try:
            if self.per_block:
                events, bad = self.store.write_blocks(items)
            else:  # a block code that takes a batch (RaptorQ): whole pieces out
                events, bad = self._decode_many(items)
        except StoreError as e:  # a full disk: the fetch ends, in one line
            self._fail(FetchError(str(e)))
            return
        if bad:
            self.counters["bad_blocks"] += bad
        if len(items) > bad:
            source.blocks += len(items) - bad
            source.last_progress = self.reactor.seconds()
            name = source.name
            contributors = self.contributors
            for piece in {item[0] for item in items}:
                senders = contributors.get(piece)
                if senders is None:
                    contributors[piece] = {name}
                else:
                    senders.add(name)
        for event in events:
            if event.ok:
                self.counters["pieces"] += 1
                self.contributors.pop(event.piece, None)
            else:
                self._bad_piece(event.piece)
        if self.store.complete and not self.done.called:
            self.done.callback(None)

    def _decode_many(self, items: Items) -> tuple[list[Any], int]:
        """The decoder's pieces of a batch, verified and written by the store:
        (piece events, symbols the decoder refused)."""
        decoder, store = self.decoder, self.store
        rejected = decoder.rejected
        length = self.layout.piece_length
        events = []
        for offset, data in decoder.add_many(items):
            try:
                event = store.write_piece(offset // length, data)
            except ValueError:
                rejected -= 1  # counted as a bad symbol below
                continue
            if event is not None:
                events.append(event)
        return events, decoder.rejected - rejected

    def _bad_piece(self, piece: int) -> None:
        """A piece failed its hash: every SN that sent blocks of it is counted
        against; one that reaches the limit is dropped, and the unverified
        pieces it touched are thrown away. Those pieces are wanted again.

        An SN that alone sent the piece is proven wrong: it is dropped at
        once, so nothing more of it is written. A piece shared with an SN
        already refused is blamed on that one only."""
        self.counters["bad_pieces"] += 1
        names = self.contributors.pop(piece, set())
        _log.warn(
            "piece {piece} failed verification (from {nodes})",
            piece=piece,
            nodes=", ".join(sorted(names)) or "?",
        )
        again = {piece: names}
        refused = {s.name for s in self.sources if s.refused}
        blamed = fetchplan.blamed(names, refused)
        for source in self.sources:
            if source.name not in blamed or source.state == "dropped":
                continue
            source.bad_pieces += 1
            if fetchplan.refuses(len(blamed), source.bad_pieces, self.config.fetching.bad_pieces):
                source.refused = True
                self._drop(
                    source,
                    f"{source.bad_pieces} pieces failed verification"
                    if source.bad_pieces > 1
                    else f"piece {piece} failed verification",
                )
                for other, senders in list(self.contributors.items()):
                    if source.name in senders:
                        again[other] = self.contributors.pop(other)
        for p, senders in again.items():
            self._rewant(p, senders)
        self._redistribute()

    def _rewant(self, piece: int, senders: set[str]) -> None:
        """Throw away what we hold of ``piece`` and ask one SN for all of it, one
        that did not send it if there is one, so a liar's blocks are never mixed
        into an honest SN's retry. The SN that gets it may have sent those units
        already (it thinks they are done): the request adds them again."""
        self._forget(piece)
        active = self._active()
        target = fetchplan.rewant_target([(s.name, s.bad_pieces) for s in active], senders)
        if target is None:
            return
        units = fetchplan.piece_units(self.layout, piece, self.per_block)
        for s in active:
            s.share.difference_update(units)
        active[target].share.update(units)
        self._send_wanted(active[target], units, replace=False)

    def _forget(self, piece: int) -> None:
        self.store.forget(piece)
        if hasattr(self.decoder, "forget"):
            self.decoder.forget(piece)

    def _report(self, source: Source, lost: RangeSet, received: int) -> None:
        if source.client is None or source.state != "active":
            return
        d = source.client.callRemote(
            ReportLoss, subscription=source.subscription, lost=lost.encode(), received=received
        )
        d.addCallback(lambda r: setattr(source, "rate", r["rate"]))
        d.addErrback(lambda f: None)

    def _send_wanted(
        self, source: Source, units: RangeSet, replace: bool, nudge: bool = False
    ) -> None:
        if source.client is None or source.state != "active":
            return
        if not replace and units and not nudge:
            # New work: its stall clock starts now, not at its last delivery.
            # (A nudge asks again for old work: it must not restart the clock,
            # or a silent SN, nudged every stall_timeout / 2, is never dropped.)
            source.last_progress = max(source.last_progress, self.reactor.seconds())
        for chunk in wanted_chunks(units, replace):
            d = source.client.callRemote(
                UpdateWanted, subscription=source.subscription, wanted=chunk, replace=replace
            )
            d.addErrback(lambda f: None)

    # -- supervision

    def _active(self) -> list[Source]:
        return [s for s in self.sources if s.state == "active"]

    def _tick(self) -> None:
        try:
            self._supervise()
        except StoreError as e:  # a full disk while flushing: the fetch ends, in one line
            self._fail(FetchError(str(e)))

    def _supervise(self) -> None:
        now = self.reactor.seconds()
        why = self._over_budget()
        if why:
            self._fail(FetchError(why))
            return
        missing = self._missing()
        active = self._active()
        for source in active:
            source.share = source.share.intersection(missing)
        verdicts = fetchplan.supervise(
            now,
            [fetchplan.Watched(bool(s.share), s.last_progress, s.nudged_at) for s in active],
            bool(self.candidates),
            self.config.fetching.stall_timeout,
        )
        for source, verdict in zip(active, verdicts, strict=True):
            if verdict == "stalled":
                self._drop(source, "stalled")
            elif verdict == "nudge":
                source.nudged_at = now
                self._send_wanted(source, source.share, replace=False, nudge=True)
        if fetchplan.failover_due(
            any(s.share for s in self.sources if s.state == "dropped"),
            bool(missing),
            any(s.share for s in self._active()),
        ):
            self._redistribute()
        for source in self._active():
            self._send_wanted(source, source.share, replace=True)
        self.store.flush_due() and self.store.flush()
        self._progress(now)

    def _over_budget(self) -> str:
        """Why the fetch must stop now, or "": too many bytes received without a
        piece verifying ([fetching] max_unverified), or too many held in memory
        in pieces not yet decoded ([fetching] max_in_flight)."""
        received = None  # a block code's pieces are verified before they are written
        if self.per_block:
            counters = self.store.counters
            received = (counters["written"] + counters["duplicates"]) * self.layout.block_length
        return self.budget.over_spent(
            int(getattr(self.decoder, "pending_bytes", 0)),
            received,
            self.store.bytes_verified,
            self.layout.size,
            self.last_drop,
        )

    def _received_bytes(self) -> int:
        """Bytes held: verified pieces, plus blocks written (or symbols pending)
        in pieces not yet complete. Random block order completes pieces late,
        so counting only verified pieces would show no progress for long."""
        layout = self.layout
        if self.per_block:
            missing = sum(b - a for a, b in self.store.missing_block_ranges())
            return max(0, layout.size - missing * layout.block_length)
        return int(self.store.bytes_verified + getattr(self.decoder, "pending_bytes", 0))

    def _progress(self, now: float) -> None:
        done = self._received_bytes()
        self.rate_window.append((now, done))
        self.rate_window = [(t, b) for t, b in self.rate_window if now - t <= 5.0]
        t0, b0 = self.rate_window[0]
        rate = (done - b0) / (now - t0) if now > t0 else 0.0
        total = self.manifest.size  # type: ignore[union-attr]
        self.event(
            "progress",
            bytes=done,
            verified=self.store.bytes_verified,
            total=total,
            rate=rate,
            eta=(total - done) / rate if rate > 0 else None,
            sources=[s.to_json() for s in self.sources],
        )

    def _lost(self, source: Source) -> None:
        if source.state in ("active", "connected"):
            self._drop(source, "control channel closed")
            if self.loop is not None and self.loop.running:
                self._redistribute()

    def _drop(self, source: Source, reason: str) -> None:
        if source.state == "dropped":
            return
        source.state = "dropped"
        self.last_drop = f"{source.name} {reason}"
        _log.info("source {node} dropped: {reason}", node=source.name, reason=display_text(reason))
        self.event("source_dropped", source=source.to_json(), reason=reason)
        if source.port is not None:
            port, source.port = source.port, None
            port.stopListening()
        if source.client is not None:
            client, source.client = source.client, None
            if client.transport is not None:
                client.transport.loseConnection()

    def _redistribute(self) -> None:
        """Give the shares of dropped SNs to the active ones, or to new candidates."""
        if self.done.called:
            return
        dropped = [s for s in self.sources if s.state == "dropped" and s.share]
        orphaned = fetchplan.orphaned(
            self._missing(), [s.share for s in dropped], [s.share for s in self._active()]
        )
        for s in dropped:
            s.share = RangeSet()
        active = self._active()
        action = fetchplan.failover(
            orphaned,
            len(active),
            self.candidates[0].server.node_id if self.candidates else None,
            self.searching,
            self.budget,
            self.last_drop,
        )
        if isinstance(action, fetchplan.Deal):
            for s, part in zip(active, action.parts, strict=True):
                s.share.update(part)
                self._send_wanted(s, part, replace=False)
        elif isinstance(action, fetchplan.GiveUp):
            self._fail(FetchError(action.reason))
        elif isinstance(action, fetchplan.SearchAgain):
            self.searching = True
            d = defer.ensureDeferred(self._search_again())
            d.addBoth(self._searched)
        elif isinstance(action, fetchplan.TakeCandidate):
            source = self.candidates.pop(0)
            self.sources.append(source)
            d = defer.ensureDeferred(self._subscribe(source, action.units))

            def failed(f: Any) -> None:
                self._drop(source, f.getErrorMessage())
                self._redistribute()

            d.addErrback(failed)

    async def _search_again(self) -> None:
        """Every SN used failed: look for others that offer the content."""
        assert self.manifest is not None
        self.researches += 1
        tried = {s.server.node_id for s in self.sources}
        result = await self.search(
            pattern=None, content_id=self.manifest.content_id, answers=1, exclude=tuple(tried)
        )
        await self._judge(result.servers)
        for server in result.servers:
            offer = server.files.get(self.manifest.content_id)
            if offer is None or server.node_id in tried:
                continue
            if self._believed(server):
                self.candidates.append(Source(server, offer, mode=self.mode))
        self.candidates.sort(key=self._rank)
        self.event("searched", found=[c.to_json() for c in self.candidates])

    def _searched(self, result: Any) -> None:
        self.searching = False
        if self.done.called:
            return
        if not self.candidates:
            last = f" (last: {self.last_drop})" if self.last_drop else ""
            self._fail(FetchError(f"every SN failed{last} and no other node offers the content"))
            return
        self._redistribute()

    async def _close(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        for source in self.sources + self.candidates:
            was, source.state = source.state, "closed"
            if source.client is not None and was == "active":
                try:
                    await source.client.callRemote(Unsubscribe, subscription=source.subscription)
                except Exception:  # closing anyway
                    pass
            if source.port is not None:
                await defer.maybeDeferred(source.port.stopListening)
                source.port = None
            if source.client is not None:
                client, source.client = source.client, None
                if client.transport is not None:
                    client.transport.loseConnection()
                await client.lost
        if self.store is not None:
            try:
                self.store.close()
            except StoreError as e:  # a full disk: the fetch's own error says so already
                _log.warn("progress not recorded: {error}", error=display_text(str(e)))


class _Handler:
    """Routes a subscription's notices and end to the fetch."""

    def __init__(self, fetch: Fetch, source: Source) -> None:
        self.fetch = fetch
        self.source = source

    def notices(self, notices: list[tuple[int, bytes]]) -> None:
        if self.source.receiver is not None:
            self.source.receiver.notices(notices)

    def session_moved(self, group: str) -> None:
        self.fetch._moved(self.source, group)

    def session_ended(self, reason: str) -> None:
        if self.source.share and self.source.state == "active":
            self.fetch._session_ended(self.source, reason)


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
