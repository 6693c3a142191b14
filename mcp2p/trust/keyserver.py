"""A key server: keeps signed key records, answers HKP, replicates by anti-entropy.

``[keys] serve = yes`` adds a `KeyService` to the daemon. It listens on
``[keys] listen`` (HTTP, HKP's conventions, ``twisted.web``):

``GET /pks/lookup?op=get&search=NODEID``
    the record (its canonical JSON, one line), 404 when none is held.
``GET /pks/lookup?op=index&search=NODEID|LABEL``
    HKP's machine-readable index (``info:``/``pub:``/``uid:`` lines).
``POST /pks/add``
    a record, as HKP sends keys: form-encoded ``keytext=RECORD``
    (``application/x-www-form-urlencoded``), or the record itself as the
    body (any other content type). At most ``MAX_BODY`` bytes. 200 when
    stored; otherwise ``refused: REASON: detail`` with 400 (malformed,
    forged, expired), 409 (replayed, revoked), 413 (oversized), 429
    (rate) or 507 (full).
``GET /pks/summary`` and ``GET /pks/bucket?b=NN&after=NODEID``
    for the other servers' anti-entropy (mcp2p's own, not HKP).

Every answer carries ``X-Key-Server: <this node's id>``, so a client
reaching the servers by anycast can tell which one answered.

Anti-entropy (`Replicator`): records fall into 256 buckets by the first
byte of their node id; a bucket's digest hashes its records' digests in
node id order. Every ``replication_interval`` seconds each server asks each
of its ``[keys] peers`` for their 256 digests and, for the buckets that
differ, pages through the peer's records (``PAGE`` per request, at most
``max_per_round`` per peer and round, resuming where it stopped), offering
each to its own store, which keeps what is newer. So a record published to
one server is on all of them within one interval per peer hop, and a
server that was down catches up in its first rounds. Only pulls: a peer
cannot push anything, and whatever it sends is verified like any record.

Flood bounds (`KeyStore`): a source address may add ``add_rate`` records
per second (burst ``add_burst``; at most ``MAX_SOURCES`` sources tracked,
least recently seen forgotten first); the store holds at most
``max_records`` records and refuses new node ids when full rather than
evict: an eviction policy a flood can trigger would let it push honest
records out, a refusal leaves every record already held in place. Expired
records are dropped, revocations kept (they are final). Every refusal is
counted by reason (``/metrics``: ``mcp2p_keys_rejected{reason}``) and
logged in summary, one line per minute at most.

Records are kept in memory and written to ``STATE/keys.records`` (one
record per line) atomically, at most once a second; at start each line is
verified again.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

import blake3
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource, server

from mcp2p.atomicfile import write_atomic
from mcp2p.core.pacing import TokenBucket
from mcp2p.errors import ProtocolError
from mcp2p.trust import records
from mcp2p.trust.keyclient import SERVER_HEADER, Endpoint, http_request
from mcp2p.trust.records import KeyRecord, RecordError

if TYPE_CHECKING:
    from mcp2p.config import KeysSection
    from mcp2p.trust.keyclient import IHTTPReactor

_log = Logger()

RECORDS_FILE = "keys.records"
MAX_BODY = 8 * 1024  # a POST body: one form-encoded record with room to spare
MAX_SOURCES = 4096
MAX_INDEX = 100  # records an index answer lists
PAGE = 64  # records per bucket page
BUCKETS = 256
SUMMARY_BYTES = BUCKETS * 33 + 64
PAGE_BYTES = PAGE * (records.MAX_RECORD + 1) + 64
STATUS = {
    "malformed": 400,
    "forged": 400,
    "expired": 400,
    "replayed": 409,
    "revoked": 409,
    "oversized": 413,
    "rate": 429,
    "full": 507,
}
SUMMARY_INTERVAL = 60.0


class KeyStore:
    """The records one server holds, and what it refuses (pure: time is passed in)."""

    def __init__(
        self,
        max_records: int = 100_000,
        add_rate: float = 1.0,
        add_burst: int = 10,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.max_records = max_records
        self.add_rate = add_rate
        self.add_burst = add_burst
        self.max_sources = max_sources
        self.records: dict[bytes, KeyRecord] = {}
        self.rejected: Counter[str] = Counter({r: 0 for r in records.REASONS})
        self.counters: Counter[str] = Counter(accepted=0, replicated=0, pruned=0)
        self.sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._keys: list[list[bytes]] = [[] for _ in range(BUCKETS)]  # sorted node ids
        self._digests: list[bytes | None] = [None] * BUCKETS
        self.version = 0  # bumped at every change (the persister watches it)

    def __len__(self) -> int:
        return len(self.records)

    # -- adding ------------------------------------------------------------

    def add(self, data: bytes, now: float, source: str | None = None) -> KeyRecord:
        """Decode, verify and keep ``data``; RecordError (counted) when refused.

        ``source`` is the sender's address for a client's POST (rate-limited),
        None for a record replicated from a peer.
        """
        try:
            if source is not None and not self._source_allows(source, now):
                raise RecordError("rate", f"{source} over {self.add_rate:g} records/s")
            record = records.decode(data)
            self.offer(record, now)
        except RecordError as e:
            self.rejected[e.reason] += 1
            raise
        self.counters["accepted" if source is not None else "replicated"] += 1
        return record

    def offer(self, record: KeyRecord, now: float) -> None:
        """Keep a verified record if it wins over the one held (RecordError if not)."""
        held = self.records.get(record.node_id)
        if held is not None and held.expired(now):
            self._remove(held.node_id)
            held = None
        records.judge(held, record, now)
        if held is None and len(self.records) >= self.max_records:
            self.prune(now)
            if len(self.records) >= self.max_records:
                raise RecordError("full", f"{self.max_records} records held")
        self._put(record)

    def _source_allows(self, source: str, now: float) -> bool:
        bucket = self.sources.get(source)
        if bucket is None:
            bucket = TokenBucket(self.add_rate, self.add_burst, now)
            self.sources[source] = bucket
            while len(self.sources) > self.max_sources:
                self.sources.popitem(last=False)
        else:
            self.sources.move_to_end(source)
        return bucket.take(now)

    def _put(self, record: KeyRecord) -> None:
        node_id = record.node_id
        keys = self._keys[node_id[0]]
        if node_id not in self.records:
            bisect.insort(keys, node_id)
        self.records[node_id] = record
        self._digests[node_id[0]] = None
        self.version += 1

    def _remove(self, node_id: bytes) -> None:
        if self.records.pop(node_id, None) is None:
            return
        keys = self._keys[node_id[0]]
        del keys[bisect.bisect_left(keys, node_id)]
        self._digests[node_id[0]] = None
        self.version += 1

    def prune(self, now: float) -> int:
        """Drop expired records (revocations stay); how many went."""
        gone = [n for n, r in self.records.items() if r.expired(now)]
        for node_id in gone:
            self._remove(node_id)
        self.counters["pruned"] += len(gone)
        return len(gone)

    # -- reading -----------------------------------------------------------

    def get(self, node_id: bytes, now: float) -> KeyRecord | None:
        record = self.records.get(node_id)
        if record is not None and record.expired(now):
            self._remove(node_id)
            return None
        return record

    def index(self, search: str, now: float) -> list[KeyRecord]:
        """Records whose node id is ``search`` (32 hex digits) or that carry the label."""
        try:
            record = self.get(records.parse_node_id(search), now)
            return [record] if record is not None else []
        except ValueError:
            pass
        out = []
        for record in self.records.values():
            if search in record.labels and not record.expired(now):
                out.append(record)
                if len(out) >= MAX_INDEX:
                    break
        return out

    def summary(self) -> list[bytes]:
        """The 256 buckets' digests (8 bytes each)."""
        return [self.bucket_digest(b) for b in range(BUCKETS)]

    def bucket_digest(self, bucket: int) -> bytes:
        digest = self._digests[bucket]
        if digest is None:
            h = blake3.blake3()
            for node_id in self._keys[bucket]:
                h.update(self.records[node_id].digest())
            digest = self._digests[bucket] = h.digest()[:8]
        return digest

    def page(self, bucket: int, after: bytes = b"", limit: int = PAGE) -> list[KeyRecord]:
        """Up to ``limit`` records of ``bucket`` whose node id sorts after ``after``."""
        keys = self._keys[bucket]
        start = bisect.bisect_right(keys, after) if after else 0
        return [self.records[n] for n in keys[start : start + limit]]

    # -- persistence ---------------------------------------------------------

    def dump(self) -> bytes:
        return b"".join(r.encode() + b"\n" for r in self.records.values())

    def load(self, data: bytes, now: float) -> tuple[int, int]:
        """Records from ``dump``'s lines: (kept, refused)."""
        kept = refused = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                self.offer(records.decode(line), now)
                kept += 1
            except ProtocolError:
                refused += 1
        return kept, refused


# -- HTTP --------------------------------------------------------------------


class _BoundedRequest(server.Request):
    """A request whose body is kept up to MAX_BODY bytes; the rest is dropped (and
    the connection closed once a client sends far more than that)."""

    too_big = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.too_big = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.too_big = True
        if self.too_big:
            channel = self.channel
            if self._received > 16 * MAX_BODY and channel is not None:
                if channel.transport is not None:
                    channel.transport.loseConnection()
            return
        super().handleContentChunk(data)


class KeySite(server.Site):
    requestFactory = _BoundedRequest

    def log(self, request: Any) -> None:
        _log.debug(
            "keys {method} {uri!r}: {code}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri[:200].decode("ascii", "replace"),
            code=request.code,
        )


def _arg(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values or len(values) != 1:
        return None
    try:
        return str(values[0].decode("ascii"))[:256]
    except UnicodeDecodeError:
        return None


class _Base(resource.Resource):
    isLeaf = True

    def __init__(self, service: KeyService) -> None:
        super().__init__()
        self.service = service

    def answer(self, request: Any, code: int, text: str | bytes, ctype: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(SERVER_HEADER, self.service.server_id.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-cache")
        return text if isinstance(text, bytes) else (text + "\n").encode("utf-8")

    def text(self, request: Any, code: int, text: str) -> bytes:
        return self.answer(request, code, text, b"text/plain; charset=utf-8")


class _Lookup(_Base):
    def render_GET(self, request: Any) -> bytes:
        store, now = self.service.store, self.service.now()
        self.service.counters["lookups"] += 1
        op, search = _arg(request, b"op"), _arg(request, b"search")
        if op is None or search is None:
            return self.text(request, 400, "need op= and search=")
        if op == "get":
            try:
                node_id = records.parse_node_id(search)
            except ValueError as e:
                return self.text(request, 400, f"search: {e}")
            record = store.get(node_id, now)
            if record is None:
                return self.text(request, 404, "no record for that node id")
            return self.answer(request, 200, record.encode() + b"\n", b"application/json")
        if op in ("index", "vindex"):
            found = store.index(search, now)
            if not found:
                return self.text(request, 404, "no records match")
            lines = [f"info:1:{len(found)}"]
            for r in found:
                flags = "r" if r.revoked else ""
                lines.append(f"pub:{r.node_id.hex()}:22:256:{r.issued}:{r.expires}:{flags}")
                lines += [f"uid:{quote(label)}:{r.issued}:{r.expires}:" for label in r.labels]
            return self.text(request, 200, "\n".join(lines))
        return self.text(request, 501, f"op={op[:20]!r} is not implemented")


class _Add(_Base):
    def render_POST(self, request: Any) -> bytes:
        store, now = self.service.store, self.service.now()
        source = request.getClientAddress().host
        if request.too_big:
            store.rejected["oversized"] += 1
            self.service.refused("oversized", source)
            return self.text(request, 413, f"refused: oversized: over {MAX_BODY} bytes")
        body = request.content.read(MAX_BODY + 1)
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype == b"application/x-www-form-urlencoded":
            try:
                form = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=4)
                (keytext,) = form["keytext"]
                data = keytext.strip().encode("ascii")
            except (ValueError, KeyError, UnicodeError):
                store.rejected["malformed"] += 1
                self.service.refused("malformed", source)
                return self.text(request, 400, "refused: malformed: expected keytext=RECORD")
        else:
            data = body.strip()
        try:
            record = store.add(data, now, source)
        except RecordError as e:
            self.service.refused(e.reason, source)
            return self.text(request, STATUS.get(e.reason, 400), f"refused: {e}")
        self.service.changed()
        what = "revocation" if record.revoked else "record"
        _log.info(
            "key server: {what} of {node} stored (from {source})",
            what=what,
            node=record.short,
            source=source,
        )
        return self.text(request, 200, f"stored {what} of {record.node_id.hex()}")


class _Summary(_Base):
    def render_GET(self, request: Any) -> bytes:
        self.service.counters["summaries"] += 1
        body = "\n".join(d.hex() for d in self.service.store.summary())
        request.setHeader(b"X-Key-Records", str(len(self.service.store)).encode())
        return self.text(request, 200, body)


class _Bucket(_Base):
    def render_GET(self, request: Any) -> bytes:
        self.service.counters["pages"] += 1
        b, after = _arg(request, b"b"), _arg(request, b"after") or ""
        try:
            bucket = int(b or "", 16)
            if not 0 <= bucket < BUCKETS or len(b or "") != 2:
                raise ValueError
            start = records.parse_node_id(after) if after else b""
        except ValueError:
            return self.text(request, 400, "need b=00..ff and optionally after=NODEID")
        page = self.service.store.page(bucket, start)
        body = b"".join(r.encode() + b"\n" for r in page)
        return self.answer(request, 200, body, b"application/x-ndjson")


def root_resource(service: KeyService) -> resource.Resource:
    pks = resource.Resource()
    pks.putChild(b"lookup", _Lookup(service))
    pks.putChild(b"add", _Add(service))
    pks.putChild(b"summary", _Summary(service))
    pks.putChild(b"bucket", _Bucket(service))
    root = resource.Resource()
    root.putChild(b"pks", pks)
    return root


# -- anti-entropy ---------------------------------------------------------------


class Replicator:
    """Pulls from each peer what differs from our summary (bounded per round)."""

    def __init__(self, service: KeyService, peers: tuple[Endpoint, ...], per_round: int) -> None:
        self.service = service
        self.peers = peers
        self.per_round = per_round
        self.cursor: dict[Endpoint, tuple[int, bytes]] = {}  # where the last round stopped
        self.running = False

    async def round(self) -> int:
        """One round with every peer; how many records were taken."""
        if self.running:
            return 0
        self.running = True
        taken = 0
        try:
            for peer in self.peers:
                try:
                    taken += await self.pull(peer)
                except Exception as e:
                    self.service.counters["peer_errors"] += 1
                    self.service.peer_failed(peer, e)
        finally:
            self.running = False
        self.service.counters["rounds"] += 1
        return taken

    async def pull(self, peer: Endpoint) -> int:
        service, reactor, timeout = self.service, self.service.reactor, self.service.timeout
        reply = await http_request(
            reactor, b"GET", peer.url("/pks/summary"), max_bytes=SUMMARY_BYTES, timeout=timeout
        )
        theirs = _parse_summary(reply)
        ours = service.store.summary()
        differ = [b for b in range(BUCKETS) if theirs[b] != ours[b]]
        if not differ:
            self.cursor.pop(peer, None)
            return 0
        # Resume in the bucket (and after the node id) where the last round stopped.
        start_bucket, after = self.cursor.get(peer, (differ[0], b""))
        first = bisect.bisect_left(differ, start_bucket)
        order = differ[first:] + differ[:first]
        if not order or order[0] != start_bucket:
            after = b""
        budget, taken = self.per_round, 0
        for bucket in order:
            while budget > 0:
                args = {"b": f"{bucket:02x}"} | ({"after": after.hex()} if after else {})
                query = urlencode(args)
                reply = await http_request(
                    reactor,
                    b"GET",
                    peer.url("/pks/bucket?" + query),
                    max_bytes=PAGE_BYTES,
                    timeout=timeout,
                )
                if reply.code != 200:
                    raise ProtocolError(f"bucket page: HTTP {reply.code}")
                lines = [line for line in reply.body.split(b"\n") if line]
                if len(lines) > PAGE:
                    raise ProtocolError("bucket page over its size")
                for line in lines[:budget]:
                    budget -= 1
                    taken += service.take_replicated(line)
                    after = line_node_id(line) or after
                if len(lines) < PAGE or budget <= 0:
                    break
            if budget <= 0:
                self.cursor[peer] = (bucket, after)
                return taken
            after = b""
        self.cursor.pop(peer, None)
        return taken


def _parse_summary(reply: Any) -> list[bytes]:
    if reply.code != 200:
        raise ProtocolError(f"summary: HTTP {reply.code}")
    lines = reply.body.split()
    if len(lines) != BUCKETS:
        raise ProtocolError("summary: not 256 lines")
    try:
        out = [bytes.fromhex(line.decode("ascii")) for line in lines]
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("summary: not hex") from None
    if any(len(d) != 8 for d in out):
        raise ProtocolError("summary: digests are 8 bytes")
    return out


def line_node_id(line: bytes) -> bytes | None:
    """The node id a record line claims (for paging; the record itself is verified apart)."""
    at = line.find(b'"node":"')
    if at < 0:
        return None
    try:
        return records.parse_node_id(line[at + 8 : at + 40].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


# -- the service ------------------------------------------------------------------


class KeyService(Service):
    """The key server of one daemon: store, HTTP site, persistence and replication."""

    name = "keys"  # type: ignore[assignment]

    def __init__(
        self, reactor: IHTTPReactor, keys: KeysSection, state_dir: Path, node_id: bytes
    ) -> None:
        """``keys``: [keys]; ``state_dir``: where RECORDS_FILE is kept ([node]
        state_dir); ``node_id``: this node's, sent as SERVER_HEADER."""
        self.reactor = reactor
        self.keys = keys
        self.server_id = node_id.hex()
        self.timeout = float(keys.lookup_timeout)
        self.store = KeyStore(keys.max_records, keys.add_rate, keys.add_burst)
        self.counters: Counter[str] = Counter(
            lookups=0, summaries=0, pages=0, rounds=0, peer_errors=0
        )
        self.path = Path(state_dir) / RECORDS_FILE
        self.replicator = Replicator(self, tuple(keys.peers), keys.max_per_round)
        self.port: Any = None
        self._loop: task.LoopingCall | None = None
        self._save_call: Any = None
        self._saved_version = 0
        self._refused_since: Counter[str] = Counter()
        self._summary_call: Any = None
        self._peer_errors: dict[Endpoint, str] = {}

    def now(self) -> float:
        return float(self.reactor.seconds())

    def startService(self) -> None:
        super().startService()
        self._load()
        listen = self.keys.listen
        if listen is None:
            from mcp2p.api.service import _exit_line

            _exit_line("mcp2p: [keys] serve = yes needs [keys] listen = ADDRESS:PORT")
        site = KeySite(root_resource(self), timeout=30)
        site.displayTracebacks = False
        site.noisy = False
        from mcp2p.listening import listen_or_exit

        self.port = listen_or_exit(
            # Twisted's own annotations refuse its Site as listenTCP's factory.
            lambda: self.reactor.listenTCP(listen.port, site, interface=listen.host),  # type: ignore[arg-type]
            "[keys] listen",
        )
        _log.info(
            "key server on http://{where}/pks/ ({n} records; peers: {peers})",
            where=str(listen),
            n=len(self.store),
            peers=", ".join(str(p) for p in self.replicator.peers) or "none",
        )
        if self.replicator.peers:
            self._loop = task.LoopingCall(self._round)
            self._loop.clock = self.reactor
            self._loop.start(self.keys.replication_interval, now=True)

    def _round(self) -> defer.Deferred[Any]:
        d = defer.ensureDeferred(self.replicator.round())

        def done(taken: int) -> None:
            if taken:
                self.changed()

        return d.addCallback(done).addErrback(lambda f: _log.failure("key replication", f))

    def take_replicated(self, line: bytes) -> int:
        """Offer one record a peer sent; 1 when it was kept."""
        try:
            self.store.add(line, self.now())
        except RecordError as e:
            if e.reason not in ("replayed",):  # a peer sends what we have: not news
                self.refused(e.reason, "peer")
            return 0
        return 1

    def peer_failed(self, peer: Endpoint, error: BaseException) -> None:
        from mcp2p.trust.keyclient import _why

        why = _why(error)
        if self._peer_errors.get(peer) != why:
            self._peer_errors[peer] = why
            _log.info("key server: peer {peer} failed: {why}", peer=str(peer), why=why)

    def refused(self, reason: str, source: str) -> None:
        """Counted already by the store; logged here in summary (once a minute)."""
        self._refused_since[reason] += 1
        if self._summary_call is None or not self._summary_call.active():
            self._summary_call = self.reactor.callLater(SUMMARY_INTERVAL, self._log_refused)
            if sum(self._refused_since.values()) == 1:
                _log.info("key server: refused a record ({reason}) from {source}",
                          reason=reason, source=source)  # fmt: skip

    def _log_refused(self) -> None:
        counts, self._refused_since = self._refused_since, Counter()
        if counts:
            _log.info(
                "key server: refused {n} records in the last minute ({by})",
                n=sum(counts.values()),
                by=", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            )

    def changed(self) -> None:
        if self._save_call is None or not self._save_call.active():
            self._save_call = self.reactor.callLater(1.0, self._save)

    def _save(self) -> None:
        if self.store.version == self._saved_version:
            return
        try:
            write_atomic(self.path, self.store.dump())
            self._saved_version = self.store.version
        except OSError as e:
            _log.error("key server: cannot write {path}: {why}", path=str(self.path), why=e)

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            _log.error("key server: cannot read {path}: {why}", path=str(self.path), why=e)
            return
        kept, refused = self.store.load(data, self.now())
        self._saved_version = self.store.version
        if refused:
            _log.warn(
                "key server: {n} records in {path} refused (bad or expired)",
                n=refused,
                path=str(self.path),
            )

    def stats(self) -> dict[str, int]:
        return {
            "records": len(self.store),
            **self.counters,
            **self.store.counters,
        }

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in (self._save_call, self._summary_call):
            if call is not None and call.active():
                call.cancel()
        self._save()
        self._log_refused()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None
