"""SAP/SDP discovery: the CN's directory, the SN's announcer, and the protocol.

``SAPDirectory`` is the cache of what was heard (RFC 2974 section 4
timeouts), searched locally.  ``SAPAnnouncer`` repeats this node's
announcements at the section 3.1 interval, so that the whole scope (ours
plus every other announcement heard) stays under one bandwidth limit.
``SAPProtocol`` only translates datagrams into directory updates.  None of
them opens sockets or joins groups: the service that owns them does, with
one protocol and one announcer per SAP group (scope).
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p.core.sapinterval import (
    DEFAULT_BANDWIDTH_LIMIT_BPS,
    DEFAULT_CACHE_FLOOR,
    DEFAULT_MIN_INTERVAL,
    announcement_interval,
    cache_timeout,
    equilibrium_phase,
    jittered,
)
from mcp2p.errors import ProtocolError
from mcp2p.logsummary import summary_level
from mcp2p.trust.keys import node_id_of
from mcp2p.wire.sap import (
    SDP_PAYLOAD_TYPE,
    SAPPacket,
    decode_sap,
    encode_sap,
    sign_sap,
    verify_sap,
)
from mcp2p.wire.sdp import (
    MAX_VERSION,
    Announcement,
    SessionOrigin,
    decode_deletion,
    decode_sdp,
    encode_deletion,
    encode_sdp,
)
from mcp2p.wire.types import FileOffer, IPAddress

DEFAULT_SCOPE = ""
DEFAULT_MAX_PER_SOURCE = 256  # directory entries one source address may hold
DEFAULT_MAX_ENTRIES = 16384
UDP_IP_OVERHEAD = {4: 20 + 8, 6: 40 + 8}  # header bytes per datagram, no options

# A directory key: (node id, session id). The node id is bound to the key that
# signed the announcement (mcp2p.trust.keys.node_id_of), so no other node can
# replace an entry; a deletion names the o= line's (origin, session id), which
# ``_by_session`` maps back to the entries it may concern.
_Key = tuple[bytes, int]


@dataclass
class _Heard:
    last: float  # when it was last heard in this scope
    gap: float = 0.0  # time between the last two repeats: the sender's interval


@dataclass
class _Entry:
    announcement: Announcement
    size: int
    msg_id_hash: int | None
    source: str  # the address the datagrams came from (bounded entries per source)
    scopes: dict[str, _Heard] = field(default_factory=dict)


class SAPDirectory:
    """The CN's cache of validated announcements, with RFC 2974 implicit timeouts.

    An entry not heard again for ``cache_timeout(interval, floor)`` is
    dropped by ``expire``, where the interval is the larger of the gap seen
    between its repeats and the one the RFC rule predicts for its size and
    the number of ads in its scope.  The owner calls ``expire`` now and then
    (a ``LoopingCall`` every minute is plenty).

    Only what ``SAPProtocol`` validated (signed by the node that it names)
    is recorded, so only that counts towards a scope's interval; a source
    address holds at most ``max_per_source`` entries and the directory at
    most ``max_entries``: what would go beyond is refused and counted in
    ``refused``, so a flood cannot silence the honest announcers (issue 12).
    """

    def __init__(
        self,
        floor: float = DEFAULT_CACHE_FLOOR,
        bandwidth_limit_bps: float = DEFAULT_BANDWIDTH_LIMIT_BPS,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._floor = floor
        self._limit = bandwidth_limit_bps
        self._min_interval = min_interval
        self.max_per_source = max_per_source
        self.max_entries = max_entries
        self._entries: dict[_Key, _Entry] = {}
        self._by_session: dict[tuple[IPAddress, int], set[_Key]] = {}
        self._by_hash: dict[tuple[IPAddress, int], set[_Key]] = {}
        self._per_source: dict[str, int] = {}
        self.refused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def heard(
        self,
        announcement: Announcement,
        now: float,
        scope: str = DEFAULT_SCOPE,
        size: int = 0,
        msg_id_hash: int | None = None,
        source: str = "",
    ) -> bool:
        """Record an announcement; True when it is new or its description changed.

        A new entry beyond ``max_per_source`` for ``source`` (or beyond
        ``max_entries``) is refused: False, counted in ``refused``.
        """
        key: _Key = (announcement.node_id, announcement.offer.session_id)
        entry = self._entries.get(key)
        if entry is None:
            if (
                self._per_source.get(source, 0) >= self.max_per_source
                or len(self._entries) >= self.max_entries
            ):
                self.refused += 1
                return False
            entry = self._entries[key] = _Entry(announcement, size, None, source)
            self._per_source[source] = self._per_source.get(source, 0) + 1
            changed = True
        else:
            changed = entry.announcement != announcement
            self._unindex(key, entry)
        entry.announcement = announcement
        entry.size = size
        entry.msg_id_hash = msg_id_hash
        self._index(key, entry)
        self._touch(entry, scope, now)
        return changed

    def candidates(self, session: SessionOrigin) -> list[Announcement]:
        """The announcements a deletion naming ``session`` may concern."""
        keys = self._by_session.get((session.origin, session.session_id), ())
        return [self._entries[k].announcement for k in keys]

    def candidates_by_hash(self, origin: IPAddress, msg_id_hash: int) -> list[Announcement]:
        """The announcements a deletion known only by its SAP header may concern."""
        return [self._entries[k].announcement for k in self._by_hash.get((origin, msg_id_hash), ())]

    def deleted(self, session: SessionOrigin, node_id: bytes | None = None) -> Announcement | None:
        """Apply a deletion naming ``session`` (of ``node_id`` only, if given);
        the removed announcement, if any.

        A deletion of an older version than the one cached (a late, reordered
        packet) is ignored.
        """
        removed = None
        for key in list(self._by_session.get((session.origin, session.session_id), ())):
            a = self._entries[key].announcement
            if node_id is not None and a.node_id != node_id:
                continue
            if a.version > session.version:
                continue
            self._remove(key)
            removed = removed or a
        return removed

    def deleted_by_hash(
        self, origin: IPAddress, msg_id_hash: int, node_id: bytes | None = None
    ) -> bool:
        """Apply a deletion known only by its SAP header; True if something went."""
        gone = False
        for key in list(self._by_hash.get((origin, msg_id_hash), ())):
            if node_id is None or key[0] == node_id:
                self._remove(key)
                gone = True
        return gone

    def expire(self, now: float) -> list[Announcement]:
        """Drop what timed out in every scope; the announcements dropped."""
        counts = self._scope_counts()
        dropped = []
        for key, entry in list(self._entries.items()):
            for scope, heard in list(entry.scopes.items()):
                predicted = announcement_interval(
                    entry.size, counts[scope], self._limit, self._min_interval
                )
                if now - heard.last > cache_timeout(max(heard.gap, predicted), self._floor):
                    del entry.scopes[scope]
            if not entry.scopes:
                self._remove(key)
                dropped.append(entry.announcement)
        return dropped

    def search(
        self, pattern: str | None = None, content_id: bytes | None = None
    ) -> list[Announcement]:
        """Announcements whose name matches ``pattern`` (fnmatch, no case) and id."""
        folded = None if pattern is None else pattern.casefold()
        found = []
        for entry in self._entries.values():
            a = entry.announcement
            if content_id is not None and a.offer.content_id != content_id:
                continue
            if folded is not None and not fnmatch.fnmatchcase(a.offer.name.casefold(), folded):
                continue
            found.append(a)
        found.sort(key=lambda a: (a.offer.name, str(a.origin), a.offer.session_id))
        return found

    def ads_in_scope(self, scope: str = DEFAULT_SCOPE) -> int:
        """How many validated announcements (ours excluded) are live in ``scope``."""
        return sum(1 for e in self._entries.values() if scope in e.scopes)

    def _scope_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            for scope in entry.scopes:
                counts[scope] = counts.get(scope, 0) + 1
        return counts

    def _touch(self, entry: _Entry, scope: str, now: float) -> None:
        heard = entry.scopes.get(scope)
        if heard is None:
            entry.scopes[scope] = _Heard(now)
        else:
            if now > heard.last:
                heard.gap = now - heard.last
            heard.last = max(heard.last, now)

    def _index(self, key: _Key, entry: _Entry) -> None:
        a = entry.announcement
        self._by_session.setdefault((a.origin, a.offer.session_id), set()).add(key)
        if entry.msg_id_hash is not None:
            self._by_hash.setdefault((a.origin, entry.msg_id_hash), set()).add(key)

    def _unindex(self, key: _Key, entry: _Entry) -> None:
        a = entry.announcement
        for table, ident in (
            (self._by_session, (a.origin, a.offer.session_id)),
            (self._by_hash, (a.origin, entry.msg_id_hash)),
        ):
            keys = table.get(ident)  # type: ignore[arg-type]
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del table[ident]  # type: ignore[arg-type]

    def _remove(self, key: _Key) -> None:
        entry = self._entries.pop(key)
        self._unindex(key, entry)
        left = self._per_source.get(entry.source, 1) - 1
        if left:
            self._per_source[entry.source] = left
        else:
            self._per_source.pop(entry.source, None)


def msg_id_hash(session_id: int, version: int) -> int:
    """A 16-bit, never-zero hash of (session id, version) for the SAP header."""
    digest = hashlib.blake2s(struct.pack("!IQ", session_id, version), digest_size=2).digest()
    return int.from_bytes(digest, "big") or 1


@dataclass
class _Ad:
    announcement: Announcement
    msg_id_hash: int
    packet: bytes
    last_sent: float | None = None  # tp in RFC 2974 section 3.1; None: not yet sent
    fraction: float = 1.0  # this round's delay in intervals, kept across reconsiderations
    second_at: float = 0.0  # when the first repeat is due, set with the first send
    call: IDelayedCall | None = None

    @property
    def wire_size(self) -> int:
        """Bytes on the wire: the limit is the link's, so IP and UDP headers count."""
        return len(self.packet) + UDP_IP_OVERHEAD[self.announcement.origin.version]


class SAPAnnouncer:
    """Repeats this node's announcements on one SAP group (one scope).

    Each announcement is sent at ``tp + jittered(interval)`` where the
    interval is RFC 2974's for its size and the number of ads in the scope
    (ours plus the others in ``directory``), reconsidered when the timer
    fires.  Removing an announcement, and ``stop()``, send a deletion packet
    (T=1) for each one that was sent.  With ``private_key`` (the node's),
    every packet carries its Ed25519 signature (``mcp2p.wire.sap.sign_sap``):
    listeners drop unsigned ones.

    New announcements go out promptly but paced.  A batch added at once
    gets one slot each at the bandwidth limit (``8*size/limit`` seconds) and
    is first sent within ``first_delay`` of its slot's start: one new file
    within a second, a thousand spread over one interval, never a burst.
    Their first repeats then start at the equilibrium phase
    (``equilibrium_phase``) after the batch, so the scope sends at the
    limit from the start instead of overshooting while the jitters spread.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[bytes], object],
        rng: random.Random,
        *,
        node_id: bytes,
        public_key: bytes,
        origin: IPAddress,
        ttl: int = 255,
        bandwidth_limit_bps: float = DEFAULT_BANDWIDTH_LIMIT_BPS,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        directory: SAPDirectory | None = None,
        scope: str = DEFAULT_SCOPE,
        first_delay: float = 1.0,
        private_key: Ed25519PrivateKey | None = None,
    ) -> None:
        # Validates the limits now rather than at the first timer.
        announcement_interval(1, 1, bandwidth_limit_bps, min_interval)
        self._clock = clock
        self._send = send
        self._rng = rng
        self.node_id = node_id
        self.public_key = public_key
        self.origin = origin
        self.ttl = ttl
        self._limit = bandwidth_limit_bps
        self._min_interval = min_interval
        self._directory = directory
        self._scope = scope
        self._first_delay = first_delay
        self._key = private_key
        self._ads: dict[int, _Ad] = {}  # by session id
        self._hashes: set[int] = set()  # the msg id hashes of _ads
        self._running = False
        self._burst_end = 0.0  # first-send slots are booked up to this time
        self.sent_packets = 0
        self.sent_bytes = 0
        self.deletions_sent = 0
        self.send_errors = 0

    # -- what the service calls ------------------------------------------

    @property
    def announcements(self) -> list[Announcement]:
        return [ad.announcement for ad in self._ads.values()]

    def start(self) -> None:
        """Begin announcing: every current announcement goes out promptly."""
        if self._running:
            return
        self._running = True
        self._burst_end = self._clock.seconds()
        self._schedule_first(list(self._ads.values()))

    def stop(self) -> None:
        """Send a deletion for everything announced and cancel every timer."""
        self._running = False
        for ad in self._ads.values():
            self._cancel(ad)
            if ad.last_sent is not None:
                self._send_deletion(ad)
                ad.last_sent = None

    def set_offers(self, offers: Iterable[FileOffer]) -> None:
        """``set_announcements`` for this node's identity; versions kept or bumped."""
        now = int(self._clock.seconds())
        announcements = []
        for offer in offers:
            ad = self._ads.get(offer.session_id)
            if ad is not None and ad.announcement.offer == offer:
                announcements.append(ad.announcement)
                continue
            announcements.append(
                Announcement(
                    offer=offer,
                    node_id=self.node_id,
                    public_key=self.public_key,
                    origin=self.origin,
                    ttl=self.ttl,
                    version=min(max(now, 0), MAX_VERSION),
                )
            )
        self.set_announcements(announcements)

    def set_announcements(self, announcements: Iterable[Announcement]) -> None:
        """Make ``announcements`` the set announced (keyed by session id).

        Gone ones are deleted on the wire; a changed one is deleted and
        re-announced under a higher version (bumped here if the caller kept
        the old one, since the SAP hash must change with the description).
        """
        wanted: dict[int, Announcement] = {}
        for a in announcements:
            sid = a.offer.session_id
            if sid in wanted:
                raise ValueError(f"two announcements with session id {sid}")
            wanted[sid] = a
        for sid in [sid for sid in self._ads if sid not in wanted]:
            self._remove(sid)
        new = []
        for sid, a in wanted.items():
            old = self._ads.get(sid)
            avoid = set()
            if old is not None:
                if old.announcement == a:
                    continue
                if a.version <= old.announcement.version < MAX_VERSION:
                    a = replace(a, version=old.announcement.version + 1)
                self._remove(sid)
                avoid.add(old.msg_id_hash)  # the new version needs a new hash
            new.append(self._add(a, avoid))
        if self._running:
            self._schedule_first(new)

    def interval_for(self, ad_size: int, ads_in_scope: int | None = None) -> float:
        """The base interval now, for an ad of ``ad_size`` bytes (headers included)."""
        if ads_in_scope is None:
            ads_in_scope = self.ads_in_scope()
        return announcement_interval(ad_size, ads_in_scope, self._limit, self._min_interval)

    def ads_in_scope(self) -> int:
        """Ours plus every other announcement live in the directory for our scope."""
        others = 0 if self._directory is None else self._directory.ads_in_scope(self._scope)
        return len(self._ads) + others

    def stats(self) -> dict[str, int]:
        return {
            "announcements": len(self._ads),
            "sent_packets": self.sent_packets,
            "sent_bytes": self.sent_bytes,
            "deletions_sent": self.deletions_sent,
            "send_errors": self.send_errors,
        }

    # -- internals ---------------------------------------------------------

    def _add(self, a: Announcement, avoid: set[int]) -> _Ad:
        h = msg_id_hash(a.offer.session_id, a.version)
        while h in self._hashes or h in avoid:  # unique per announcer (RFC 2974 s. 6)
            h = h % 0xFFFF + 1
        packet = self._encode(SAPPacket(False, h, a.origin, encode_sdp(a)))
        ad = self._ads[a.offer.session_id] = _Ad(a, h, packet)
        self._hashes.add(h)
        return ad

    def _remove(self, sid: int) -> None:
        ad = self._ads.pop(sid)
        self._hashes.discard(ad.msg_id_hash)
        self._cancel(ad)
        if ad.last_sent is not None:
            self._send_deletion(ad)

    def _schedule_first(self, batch: list[_Ad]) -> None:
        if not batch:
            return
        now = self._clock.seconds()
        start = max(now, self._burst_end)  # after any batch still going out
        slots = [8.0 * ad.wire_size / self._limit for ad in batch]
        span = sum(slots)
        self._burst_end = start + span
        position = 0.0
        ads_in_scope = self.ads_in_scope()
        for ad, slot in zip(batch, slots, strict=True):
            first = start + position + self._rng.uniform(0.0, min(slot, self._first_delay))
            # Stratified quantiles keep each ad's first gap near one interval.
            q = min(1.0, (position + self._rng.uniform(0.0, slot)) / span)
            interval = self.interval_for(ad.wire_size, ads_in_scope)
            ad.second_at = start + span + interval * equilibrium_phase(q)
            ad.call = self._clock.callLater(first - now, self._fire, ad)
            position += slot

    def _fire(self, ad: _Ad) -> None:
        ad.call = None
        now = self._clock.seconds()
        interval = self.interval_for(ad.wire_size)
        if ad.last_sent is None:
            # A first send: _schedule_first placed its first repeat.
            delay = max(0.0, ad.second_at - now)
            self._transmit(ad.packet)
            ad.last_sent = now
            ad.fraction = delay / interval
            ad.call = self._clock.callLater(delay, self._fire, ad)
            return
        # Reconsideration (RFC 2974 section 3.1): ads heard since this timer
        # was set lengthen the interval and push the transmission back.
        due = ad.last_sent + ad.fraction * interval
        if due > now + 1e-6:
            ad.call = self._clock.callLater(due - now, self._fire, ad)
            return
        self._transmit(ad.packet)
        ad.last_sent = now
        ad.fraction = jittered(1.0, self._rng)
        ad.call = self._clock.callLater(ad.fraction * interval, self._fire, ad)

    def _send_deletion(self, ad: _Ad) -> None:
        a = ad.announcement
        self._transmit(self._encode(SAPPacket(True, ad.msg_id_hash, a.origin, encode_deletion(a))))
        self.deletions_sent += 1

    def _encode(self, packet: SAPPacket) -> bytes:
        if self._key is not None:
            packet = sign_sap(packet, self._key)
        return encode_sap(packet)

    def _transmit(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError as e:
            self.send_errors += 1
            failed = self.send_errors
            self._log.emit(
                summary_level(failed),
                "SAP send failed ({failed} so far): {error}",
                failed=failed,
                error=e,
            )
            return
        self.sent_packets += 1
        self.sent_bytes += len(data)

    @staticmethod
    def _cancel(ad: _Ad) -> None:
        if ad.call is not None and ad.call.active():
            ad.call.cancel()
        ad.call = None


class SAPProtocol(DatagramProtocol):
    """Decodes SAP + SDP datagrams from one SAP group into ``directory``.

    An mcp2p announcement is recorded only when its node id is the one its
    public key makes and its SAP authentication data is that key's
    signature; a deletion only removes the entries whose key signed it.
    Anything else is dropped and counted in ``forged`` (issue 12).
    Malformed datagrams are counted in ``dropped``; valid SAP announcements
    that are not mcp2p's are counted in ``foreign`` and not kept: unsigned,
    anyone could forge any number of them, so they do not lengthen the
    scope's interval.  Each kind of drop is logged on its 1st, 2nd, 4th,
    8th... occurrence, never raised.
    """

    _log = Logger()
    noisy = False

    def __init__(
        self,
        directory: SAPDirectory,
        clock: IReactorTime,
        node_id: bytes,
        scope: str = DEFAULT_SCOPE,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._node_id = node_id
        self.scope = scope
        self.received = 0
        self.dropped = 0
        self.foreign = 0
        self.own = 0
        self.deletions = 0
        self.forged = 0

    def sender(self, group: str, port: int) -> Callable[[bytes], None]:
        """A ``send`` for ``SAPAnnouncer`` that writes to ``group``:``port``."""

        def send(data: bytes) -> None:
            assert self.transport is not None, "SAPProtocol is not listening"
            self.transport.write(data, (group, port))

        return send

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "dropped": self.dropped,
            "foreign": self.foreign,
            "own": self.own,
            "deletions": self.deletions,
            "forged": self.forged,
            "refused": self.directory.refused,
            "directory": len(self.directory),
        }

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received += 1
        now = self._clock.seconds()
        try:
            packet = decode_sap(datagram)
        except ProtocolError as e:
            self._drop(addr, e)
            return
        is_sdp = packet.payload_type.lower() == SDP_PAYLOAD_TYPE
        if packet.delete:
            self.deletions += 1
            self._deletion(packet, is_sdp, addr)
            return
        try:
            if not is_sdp:
                raise ProtocolError(f"payload type {packet.payload_type!r}")
            announcement = decode_sdp(packet.payload)
            if announcement.origin != packet.origin:
                raise ProtocolError("SAP originating source differs from the SDP o= address")
        except ProtocolError as e:
            self._not_ours(packet, addr, e)
            return
        if announcement.node_id == self._node_id:
            self.own += 1
            return
        if node_id_of(announcement.public_key) != announcement.node_id:
            self._forged(addr, "announcement's node id is not its public key's")
            return
        if not verify_sap(packet, announcement.public_key):
            self._forged(addr, "announcement not signed by the key it names")
            return
        host = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        self.directory.heard(
            announcement,
            now,
            self.scope,
            size=len(datagram),
            msg_id_hash=packet.msg_id_hash,
            source=host,
        )

    def _deletion(self, packet: SAPPacket, is_sdp: bool, addr: Any) -> None:
        session = None
        if is_sdp:
            try:
                session = decode_deletion(packet.payload)
            except ProtocolError:
                pass
        if session is not None:
            candidates = self.directory.candidates(session)
        else:
            candidates = self.directory.candidates_by_hash(packet.origin, packet.msg_id_hash)
        if not candidates:
            return  # nothing of ours to delete: a foreign or an unknown session
        signers = {a.node_id for a in candidates if verify_sap(packet, a.public_key)}
        if not signers:
            self._forged(addr, "deletion not signed by the announcing node")
            return
        for node_id in signers:
            if session is not None:
                self.directory.deleted(session, node_id)
            else:
                self.directory.deleted_by_hash(packet.origin, packet.msg_id_hash, node_id)

    def _not_ours(self, packet: SAPPacket, addr: Any, error: ProtocolError) -> None:
        if b"a=x-mcp2p-" in packet.payload:
            self._drop(addr, error)  # meant to be ours, but broken
        else:
            self.foreign += 1

    def _drop(self, addr: Any, error: ProtocolError) -> None:
        self.dropped += 1
        # Warn on the 1st, 2nd, 4th, 8th... drop so a flood cannot fill the log.
        self._log.emit(
            summary_level(self.dropped),
            "dropped SAP datagram from {addr} ({dropped} so far): {error}",
            addr=addr,
            dropped=self.dropped,
            error=str(error),
        )

    def _forged(self, addr: Any, why: str) -> None:
        self.forged += 1
        self._log.emit(
            summary_level(self.forged),
            "dropped forged SAP datagram from {addr} ({forged} so far): {why}",
            addr=addr,
            forged=self.forged,
            why=why,
        )
