"""SAP directory, announcer and protocol, on a Clock; and the packets in tshark."""

from __future__ import annotations

import ipaddress
import random
import re
import shutil
import struct
import subprocess
from bisect import bisect_left
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger

from mcp2p.core.sapinterval import announcement_interval
from mcp2p.discovery.sap import (
    UDP_IP_OVERHEAD,
    SAPAnnouncer,
    SAPDirectory,
    SAPProtocol,
    msg_id_hash,
)
from mcp2p.trust.keys import node_id_of
from mcp2p.wire.sap import SAPPacket, decode_sap, encode_sap, sign_sap
from mcp2p.wire.sdp import (
    Announcement,
    SessionOrigin,
    decode_deletion,
    decode_sdp,
    encode_deletion,
    encode_sdp,
)
from tests.wire.test_sdp import make_announcement, make_offer

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
LIMIT = 4000
ORIGIN = V4("192.0.2.10")
OTHER = V4("198.51.100.7")


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


THEIR_KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
THEIR_PUBLIC = _raw(THEIR_KEY)
THEIR_ID = node_id_of(THEIR_PUBLIC)


class Wire:
    """A ``send`` that records what went out and when."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.sent.append((self.clock.seconds(), data))

    def packets(self) -> list[tuple[float, SAPPacket]]:
        return [(t, decode_sap(d)) for t, d in self.sent]

    def deletions(self) -> list[SAPPacket]:
        return [p for _, p in self.packets() if p.delete]


def announcer(clock: Clock, wire: Wire, seed: int = 1, **kw: Any) -> SAPAnnouncer:
    kw.setdefault("min_interval", 1.0)
    return SAPAnnouncer(
        clock,
        wire,
        random.Random(seed),
        node_id=b"\x11" * 16,
        public_key=b"\x22" * 32,
        origin=ORIGIN,
        bandwidth_limit_bps=LIMIT,
        **kw,
    )


def theirs(i: int, origin: V4 = OTHER) -> Announcement:
    return replace(make_announcement(i), node_id=THEIR_ID, public_key=THEIR_PUBLIC, origin=origin)


def run_until(clock: Clock, end: float) -> None:
    """Advance to each timer exactly, so sends carry their true times."""
    while True:
        calls = clock.getDelayedCalls()
        due = min((c.getTime() for c in calls), default=None)
        if due is None or due > end:
            break
        clock.advance(max(0.0, due - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


# -- the bandwidth rule -------------------------------------------------------


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_scope_stays_under_the_bandwidth_limit(n: int) -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire, seed=n)
    ann.set_announcements([make_announcement(i) for i in range(n)])
    ann.start()
    wire_size = len(encode_sap(SAPPacket(False, 1, ORIGIN, encode_sdp(make_announcement(1)))))
    wire_size += UDP_IP_OVERHEAD[4]
    assert 700 < wire_size < 800  # a realistic announcement
    interval = ann.interval_for(wire_size)
    assert interval == pytest.approx(8 * n * wire_size / LIMIT, rel=0.02)
    intervals = 3
    run_until(clock, intervals * interval)

    sizes = [(t, len(d) + UDP_IP_OVERHEAD[4]) for t, d in wire.sent]
    # Over the whole run, startup included: the limit, give or take chance.
    average = 8 * sum(s for _, s in sizes) / (intervals * interval)
    assert 0.9 * LIMIT < average < 1.05 * LIMIT, average
    # Over any one-interval window: within the jitter's spread (+1/3).
    windows = [
        8 * sum(s for t, s in sizes if start <= t < start + interval) / interval
        for start in (k * interval / 10 for k in range(10 * (intervals - 1) + 1))
    ]
    assert max(windows) < LIMIT * 4 / 3, max(windows)
    # Every announcement went out, and not in a burst: during the first
    # interval (all first sends, paced) no second holds more than two.
    assert {decode_sap(d).msg_id_hash for _, d in wire.sent} == {
        ad.msg_id_hash for ad in ann._ads.values()
    }
    per_second: dict[int, int] = {}
    for t, _ in wire.sent:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    assert max(c for second, c in per_second.items() if second < interval) <= 2
    assert max(per_second.values()) <= 6  # later, only chance coincidences
    ann.stop()
    assert clock.getDelayedCalls() == []


def test_others_in_the_directory_lengthen_our_interval() -> None:
    def gaps(directory: SAPDirectory | None) -> list[float]:
        clock = Clock()
        wire = Wire(clock)
        ann = announcer(clock, wire, directory=directory, scope="g")
        ann.set_announcements([make_announcement(1)])
        ann.start()
        run_until(clock, 20000)
        ann.stop()
        times = [t for t, p in wire.packets() if not p.delete]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    alone = gaps(None)
    directory = SAPDirectory()
    for i in range(99):
        directory.heard(theirs(i), 0.0, scope="g", size=700)
    directory.heard(theirs(500), 0.0, scope="elsewhere", size=700)
    crowded = gaps(directory)
    assert directory.ads_in_scope("g") == 99
    size = len(encode_sap(SAPPacket(False, 1, ORIGIN, encode_sdp(make_announcement(1))))) + 28
    expected = 8 * 100 * size / LIMIT
    assert max(alone[1:]) < 2.0  # 8 * 1 * size / 4000 = 1.4 s, jittered
    assert len(crowded) >= 10
    assert all(2 / 3 * expected - 1e-6 <= g <= 4 / 3 * expected + 1e-6 for g in crowded[1:])
    assert sum(crowded) / len(crowded) == pytest.approx(expected, rel=0.15)


def test_reconsideration_pushes_back_when_the_scope_grows() -> None:
    clock = Clock()
    wire = Wire(clock)
    directory = SAPDirectory()
    ann = announcer(clock, wire, directory=directory)
    ann.set_announcements([make_announcement(1)])
    ann.start()
    run_until(clock, 5.0)  # announced, and repeated every ~1.4 s
    before = len(wire.sent)
    for i in range(999):
        directory.heard(theirs(i), clock.seconds(), size=700)
    run_until(clock, 100.0)
    # With 1000 ads the interval is ~1400 s: at most the one already due.
    assert len(wire.sent) - before <= 1
    ann.stop()


@pytest.mark.parametrize("seed", range(5))
def test_a_cold_listener_hears_everything_within_four_thirds_of_an_interval(seed: int) -> None:
    """What a listener started at any moment can count on (mcp2p search --method sap).

    Two ads at 4000 bit/s repeat every 8*2*size/limit = 2.7 s, jittered to
    1.8-3.6 s apart: min_interval (1 s) does not set it.  A window of 4/3 of
    the interval always holds every ad; the 2.5 s the daemon test listened
    did not.
    """
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire, seed=seed)
    ann.set_announcements([make_announcement(1), make_announcement(2)])
    ann.start()
    run_until(clock, 600.0)
    size = len(wire.sent[0][1]) + UDP_IP_OVERHEAD[4]
    interval = ann.interval_for(size)
    assert interval == pytest.approx(8 * 2 * size / LIMIT, rel=0.02) and interval > 2.5
    sends: dict[int, list[float]] = {}
    for t, p in wire.packets():
        sends.setdefault(p.msg_id_hash, []).append(t)
    assert len(sends) == 2
    for times in sends.values():
        gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]  # repeats only
        assert len(gaps) > 150
        assert max(gaps) <= interval * 4 / 3 + 1e-9
        assert min(gaps) >= interval * 2 / 3 - 1e-9

    def missed(window: float) -> float:
        """The share of listens of ``window`` seconds (started every 50 ms) missing an ad."""
        starts = [k * 0.05 for k in range(20, int((600 - 4 * interval) / 0.05))]
        return sum(
            any(bisect_left(times, s) == bisect_left(times, s + window) for times in sends.values())
            for s in starts
        ) / len(starts)

    assert missed(interval * 4 / 3) == 0
    assert 0.05 < missed(2.5) < 0.4
    ann.stop()


# -- new, removed, changed, stopped ---------------------------------------------


def test_new_announcement_goes_out_within_a_second() -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire, min_interval=300.0)
    ann.set_announcements([make_announcement(i) for i in range(100)])
    ann.start()
    run_until(clock, 2000.0)
    ann.set_announcements([make_announcement(i) for i in range(101)])
    added = clock.seconds()
    run_until(clock, added + 1.0)
    firsts = [t for t, p in wire.packets() if decode_sdp(p.payload).offer.session_id == 0x10000064]
    assert len(firsts) == 1 and firsts[0] - added <= 1.0
    ann.stop()


def test_removing_a_file_sends_one_deletion() -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire)
    a1, a2 = make_announcement(1), make_announcement(2)
    ann.set_announcements([a1, a2])
    ann.start()
    run_until(clock, 10.0)
    hash2 = ann._ads[a2.offer.session_id].msg_id_hash
    sent_before = len(wire.sent)
    ann.set_announcements([a1])
    deletions = wire.deletions()
    assert len(deletions) == 1
    assert len(wire.sent) == sent_before + 1
    (deletion,) = deletions
    assert deletion.msg_id_hash == hash2 and deletion.origin == ORIGIN
    assert decode_deletion(deletion.payload) == SessionOrigin(
        a2.offer.session_id, a2.version, a2.origin
    )
    assert deletion.payload == encode_deletion(a2)
    run_until(clock, 100.0)
    later = [decode_sdp(p.payload) for _, p in wire.packets()[sent_before + 1 :]]
    assert later and all(a == a1 for a in later)
    assert ann.deletions_sent == 1
    ann.stop()


def test_never_sent_announcement_is_removed_silently() -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire)
    ann.start()
    ann.set_announcements([make_announcement(1)])
    ann.set_announcements([])
    assert wire.sent == [] and clock.getDelayedCalls() == []


def test_stop_deletes_everything_and_leaves_no_timers() -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire)
    ann.set_announcements([make_announcement(i) for i in range(5)])
    ann.start()
    run_until(clock, 30.0)
    ann.stop()
    assert clock.getDelayedCalls() == []
    assert len(wire.deletions()) == 5
    run_until(clock, 1000.0)
    assert len(wire.sent) == len(wire.packets())  # nothing more after stop
    count = len(wire.sent)
    ann.stop()  # idempotent: nothing announced, nothing to delete
    assert len(wire.sent) == count
    ann.start()  # and it can start again
    run_until(clock, 1030.0)
    assert len(wire.sent) > count
    ann.stop()
    assert clock.getDelayedCalls() == []


def test_a_changed_description_is_deleted_then_reannounced_newer() -> None:
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire)
    a = make_announcement(1)
    ann.set_announcements([a])
    ann.start()
    run_until(clock, 5.0)
    old_hash = ann._ads[a.offer.session_id].msg_id_hash
    changed = replace(a, offer=replace(a.offer, rate=1_000_000))  # same version
    ann.set_announcements([changed])
    (deletion,) = wire.deletions()
    assert deletion.msg_id_hash == old_hash
    run_until(clock, 7.0)
    last = decode_sap(wire.sent[-1][1])
    new = decode_sdp(last.payload)
    assert new.offer == changed.offer and new.version == a.version + 1
    assert last.msg_id_hash != old_hash
    ann.stop()


def test_set_offers_keeps_versions_of_unchanged_offers() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    ann = announcer(clock, Wire(clock), ttl=7)
    offers = [make_offer(1), make_offer(2, v6=True)]
    ann.set_offers(offers)
    first = {a.offer.session_id: a for a in ann.announcements}
    assert {a.version for a in first.values()} == {1_700_000_000}
    assert all(a.ttl == 7 and a.node_id == b"\x11" * 16 for a in first.values())
    clock.advance(10)
    ann.set_offers([offers[0], replace(offers[1], rate=5)])
    second = {a.offer.session_id: a for a in ann.announcements}
    assert second[offers[0].session_id] is first[offers[0].session_id]
    assert second[offers[1].session_id].version == 1_700_000_010


def test_duplicate_session_ids_are_refused() -> None:
    ann = announcer(Clock(), Wire(Clock()))
    with pytest.raises(ValueError):
        ann.set_announcements([make_announcement(1), make_announcement(1)])


def test_msg_id_hashes_are_nonzero_and_unique() -> None:
    ann = announcer(Clock(), Wire(Clock()))
    ann.set_announcements([make_announcement(i) for i in range(3000)])
    hashes = [ad.msg_id_hash for ad in ann._ads.values()]
    assert 0 not in hashes and len(set(hashes)) == len(hashes)
    assert all(0 < msg_id_hash(s, v) <= 0xFFFF for s in range(100) for v in (0, 1, 2**64 - 1))


def test_send_errors_are_counted_not_raised() -> None:
    clock = Clock()
    calls = []

    def send(data: bytes) -> None:
        calls.append(data)
        raise BlockingIOError(11, "EAGAIN")

    ann = SAPAnnouncer(
        clock,
        send,
        random.Random(1),
        node_id=b"\x11" * 16,
        public_key=b"\x22" * 32,
        origin=ORIGIN,
        min_interval=1.0,
    )
    ann._log = Logger(observer=cast(ILogObserver, lambda event: None))
    ann.set_announcements([make_announcement(1)])
    ann.start()
    run_until(clock, 10.0)
    assert len(calls) > 2 and ann.send_errors == len(calls) and ann.sent_packets == 0
    ann.stop()
    assert clock.getDelayedCalls() == []


# -- the directory ----------------------------------------------------------------


def test_directory_search() -> None:
    d = SAPDirectory()
    d.heard(replace(theirs(1), offer=make_offer(1, name="Ubuntu-24.04.ISO")), 0.0)
    d.heard(replace(theirs(2), offer=make_offer(2, name="notes.txt")), 0.0)
    third = replace(theirs(3, V4("203.0.113.1")), node_id=b"\x44" * 16)
    d.heard(replace(third, offer=make_offer(1, name="ubuntu.iso")), 0.0)
    assert len(d) == 3
    assert [a.offer.name for a in d.search("ubuntu*.iso")] == ["Ubuntu-24.04.ISO", "ubuntu.iso"]
    assert [a.offer.name for a in d.search("*.TXT")] == ["notes.txt"]
    assert len(d.search()) == 3
    by_id = d.search(content_id=make_offer(1).content_id)
    assert sorted(a.offer.name for a in by_id) == ["Ubuntu-24.04.ISO", "ubuntu.iso"]
    assert d.search("ubuntu*", content_id=make_offer(2).content_id) == []


def test_directory_replaces_by_node_and_session() -> None:
    d = SAPDirectory()
    a = theirs(1)
    assert d.heard(a, 0.0) is True
    assert d.heard(a, 10.0) is False
    newer = replace(a, version=a.version + 1, offer=replace(a.offer, rate=1))
    assert d.heard(newer, 20.0) is True
    assert d.search() == [newer]


def test_directory_deletion_respects_versions() -> None:
    d = SAPDirectory()
    a = theirs(1)
    d.heard(a, 0.0)
    stale = SessionOrigin(a.offer.session_id, a.version - 1, a.origin)
    assert d.deleted(stale) is None and len(d) == 1
    assert d.deleted(SessionOrigin(a.offer.session_id, a.version, V4("192.0.2.99"))) is None
    assert d.deleted(SessionOrigin(a.offer.session_id, a.version, a.origin)) == a
    assert len(d) == 0 and d.ads_in_scope() == 0


def test_directory_deletion_by_hash() -> None:
    d = SAPDirectory()
    d.heard(theirs(1), 0.0, msg_id_hash=77)
    d.heard(theirs(2), 0.0, msg_id_hash=78)
    assert d.ads_in_scope() == 2
    assert d.deleted_by_hash(OTHER, 77, node_id=b"\x44" * 16) is False  # another node's
    assert d.deleted_by_hash(OTHER, 77) is True
    assert d.deleted_by_hash(OTHER, 78, node_id=THEIR_ID) is True
    assert d.deleted_by_hash(OTHER, 79) is False
    assert d.ads_in_scope() == 0


def test_directory_expiry() -> None:
    d = SAPDirectory(floor=3600.0)
    quiet, chatty, slow = theirs(1), theirs(2), theirs(3)
    d.heard(quiet, 0.0)
    for t in (0.0, 300.0, 600.0):
        d.heard(chatty, t)
    # slow repeats every 1000 s: ten intervals, 10000 s, beat the hour.
    d.heard(slow, 0.0)
    d.heard(slow, 1000.0)
    assert d.expire(3600.0) == []
    assert sorted(a.offer.session_id for a in d.expire(3600.1)) == [quiet.offer.session_id]
    assert d.ads_in_scope() == 2
    assert d.expire(4200.1) == [chatty]
    assert d.expire(11000.0) == []
    assert d.expire(11000.1) == [slow]
    assert len(d) == 0


def test_directory_predicts_long_intervals_in_a_crowded_scope() -> None:
    d = SAPDirectory(floor=60.0, min_interval=1.0, max_per_source=2000)
    for i in range(1000):
        d.heard(theirs(i + 2), 0.0, size=700, source="198.51.100.7")
    a = theirs(1)
    d.heard(a, 0.0, size=700)
    # 1001 ads of 700 bytes at 4000 bit/s: a 1401 s interval, kept ten times.
    assert [x for x in d.expire(10000.0) if x == a] == []
    assert a in d.expire(14100.0)


def test_directory_bounds_entries_per_source() -> None:
    d = SAPDirectory(max_per_source=3, max_entries=5)
    for i in range(10):
        d.heard(theirs(i), 0.0, source="203.0.113.66")
    assert len(d) == 3 and d.refused == 7
    assert d.heard(theirs(3), 1.0, source="203.0.113.66") is False  # still full
    assert d.heard(theirs(0), 1.0, source="203.0.113.66") is False  # a repeat: kept, unchanged
    d.heard(theirs(20), 0.0, source="192.0.2.7")
    d.heard(theirs(21), 0.0, source="192.0.2.7")
    assert d.heard(theirs(22), 0.0, source="192.0.2.8") is False  # max_entries
    assert len(d) == 5
    assert d.deleted_by_hash(OTHER, 1) is False
    d.deleted(SessionOrigin(theirs(0).offer.session_id, theirs(0).version, OTHER))
    assert d.heard(theirs(5), 2.0, source="203.0.113.66") is True  # room again


def test_directory_counts_per_scope() -> None:
    d = SAPDirectory()
    a = theirs(1)
    d.heard(a, 0.0, scope="v4")
    d.heard(a, 0.0, scope="v4-admin")
    d.heard(theirs(2), 0.0, scope="v4")
    assert d.ads_in_scope("v4") == 2 and d.ads_in_scope("v4-admin") == 1
    assert d.ads_in_scope("v6") == 0
    assert len(d) == 2


# -- the protocol ---------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


def protocol(clock: Clock | None = None) -> tuple[SAPProtocol, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    proto = SAPProtocol(SAPDirectory(), clock or Clock(), node_id=b"\x11" * 16, scope="g")
    proto._log = Logger(observer=cast(ILogObserver, events.append))
    return proto, events


def sap(
    a: Announcement, h: int = 9, delete: bool = False, key: Ed25519PrivateKey | None = THEIR_KEY
) -> bytes:
    payload = encode_deletion(a) if delete else encode_sdp(a)
    packet = SAPPacket(delete, h, a.origin, payload)
    return encode_sap(packet if key is None else sign_sap(packet, key))


def test_protocol_feeds_the_directory() -> None:
    proto, events = protocol()
    a = theirs(1)
    proto.datagramReceived(sap(a), ("198.51.100.7", 9875))
    assert proto.directory.search() == [a]
    assert proto.directory.ads_in_scope("g") == 1
    proto.datagramReceived(sap(a, delete=True), ("198.51.100.7", 9875))
    assert proto.directory.search() == []
    assert (proto.received, proto.dropped, proto.deletions) == (2, 0, 1)
    assert events == []


def test_protocol_ignores_its_own_node() -> None:
    proto, _ = protocol()
    proto.datagramReceived(sap(make_announcement(1)), ("192.0.2.10", 9875))
    assert len(proto.directory) == 0 and proto.own == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 40,
        b"\x22" + b"\x00" * 40,
        encode_sap(SAPPacket(False, 1, OTHER, b"v=0\r\nx-mcp2p-broken\r\na=x-mcp2p-rate:1\r\n")),
        # The SAP source and the SDP origin disagree.
        encode_sap(SAPPacket(False, 1, V4("203.0.113.9"), encode_sdp(theirs(1)))),
    ],
)
def test_protocol_drops_malformed_datagrams(data: bytes) -> None:
    proto, events = protocol()
    proto.datagramReceived(data, ("203.0.113.9", 9875))
    assert (proto.received, proto.dropped, len(proto.directory)) == (1, 1, 0)
    assert len(events) == 1 and events[0]["log_level"].name == "warn"
    assert "dropped SAP datagram" in events[0]["log_format"]


def test_protocol_log_does_not_flood() -> None:
    proto, events = protocol()
    for _ in range(100):
        proto.datagramReceived(b"junk", ("203.0.113.9", 9875))
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert proto.dropped == 100 and len(warnings) == 7  # 1, 2, 4, ..., 64


def test_protocol_counts_foreign_announcements_but_keeps_none() -> None:
    """Unsigned, anyone could forge them: counted, and not in the scope's interval."""
    proto, events = protocol()
    vlc = (
        b"v=0\r\no=- 3724394400 3724394405 IN IP4 198.51.100.7\r\ns=Radio\r\n"
        b"c=IN IP4 239.255.1.1/255\r\nt=0 0\r\nm=audio 5004 RTP/AVP 10\r\n"
    )
    proto.datagramReceived(encode_sap(SAPPacket(False, 4, OTHER, vlc)), ("x", 1))
    proto.datagramReceived(encode_sap(SAPPacket(False, 0, OTHER, vlc)), ("x", 1))  # SAPv0 hash
    proto.datagramReceived(encode_sap(SAPPacket(False, 5, OTHER, b"<x/>", "text/xml")), ("x", 1))
    assert proto.foreign == 3 and proto.dropped == 0 and events == []
    assert proto.directory.ads_in_scope("g") == 0 and len(proto.directory) == 0
    deletion = b"o=- 3724394400 3724394405 IN IP4 198.51.100.7\r\n"
    proto.datagramReceived(encode_sap(SAPPacket(True, 4, OTHER, deletion)), ("x", 1))
    assert proto.forged == 0 and proto.deletions == 1


def test_protocol_sender_writes_to_the_group() -> None:
    proto, _ = protocol()
    transport = FakeTransport()
    proto.makeConnection(transport)  # type: ignore[arg-type]
    proto.sender("239.255.255.255", 9875)(b"data")
    assert transport.written == [(b"data", ("239.255.255.255", 9875))]


def test_announcer_to_protocol_end_to_end() -> None:
    """One node announces, another's directory fills and then empties."""
    clock = Clock()
    listener = SAPProtocol(SAPDirectory(), clock, node_id=b"\x99" * 16)
    ann = SAPAnnouncer(
        clock,
        lambda data: listener.datagramReceived(data, ("192.0.2.10", 9875)),
        random.Random(3),
        node_id=THEIR_ID,
        public_key=THEIR_PUBLIC,
        origin=ORIGIN,
        min_interval=1.0,
        private_key=THEIR_KEY,
    )
    offers = [make_offer(i, name=f'file {i} "q" 100%.bin') for i in range(20)]
    ann.set_offers(offers)
    ann.start()
    run_until(clock, 60.0)
    assert {a.offer for a in listener.directory.search()} == set(offers)
    assert listener.directory.search('file 1 "q"*')[0].offer == offers[1]
    ann.set_offers(offers[1:])
    assert offers[0] not in {a.offer for a in listener.directory.search()}
    ann.stop()
    assert len(listener.directory) == 0 and listener.dropped == 0 and listener.forged == 0
    assert clock.getDelayedCalls() == []


def test_interval_matches_the_rule() -> None:
    ann = announcer(Clock(), Wire(Clock()), min_interval=300.0)
    ann.set_announcements([make_announcement(i) for i in range(3)])
    assert ann.interval_for(700) == announcement_interval(700, 3, LIMIT, 300.0)


# -- Wireshark ---------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src: V4 | V6, dst: V4 | V6, payload: bytes) -> bytes:
    """Ethernet + IP + UDP (port 9875) around ``payload``, checksums right."""
    length = 8 + len(payload)
    if dst.version == 4:
        mac = b"\x01\x00\x5e" + (int(dst) & 0x7FFFFF).to_bytes(3, "big")
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 255, 17, 0, src.packed, dst.packed
        )
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, length)
        ethertype = b"\x08\x00"
    else:
        mac = b"\x33\x33" + dst.packed[-4:]
        ip = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 255, src.packed, dst.packed)
        pseudo = src.packed + dst.packed + struct.pack("!II", length, 17)
        ethertype = b"\x86\xdd"
    udp = struct.pack("!HHHH", 9875, 9875, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    return mac + b"\x02\x00\x00\x00\x00\x01" + ethertype + ip + udp


def _write_pcap(path: Path, frames: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)))
            f.write(frame)


def _tshark(pcap: Path, *args: str) -> str:
    result = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), *args]
        + ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _expert_infos(pcap: Path) -> list[tuple[str, str, str]]:
    """(severity, protocol, summary) of every expert info tshark raises.

    Two passes, one without a tree and one with: Wireshark's SAP dissector
    skips the payload type only when it builds a tree, so a problem can
    show in one pass and not the other.
    """
    found = []
    for args in (("-q",), ("-V",)):
        severity = ""
        for line in _tshark(pcap, *args, "-z", "expert").splitlines():
            if m := re.fullmatch(r"(\w+) \(\d+\)", line):
                severity = m.group(1)
            elif severity and (m := re.fullmatch(r"\s+\d+\s+\S+\s+(\S+)\s+(.+)", line)):
                found.append((severity, m.group(1), m.group(2)))
    return found


TSHARK = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark (Wireshark) is not installed"
)


@TSHARK
def test_wireshark_decodes_our_packets_cleanly(tmp_path: Path) -> None:
    """What an announcer sends, then its deletions, decode with no expert info."""
    clock = Clock()
    wire = Wire(clock)
    ann = announcer(clock, wire, min_interval=300.0, private_key=THEIR_KEY)
    v6 = replace(make_announcement(2, v6=True), offer=make_offer(2, v6=True, name='é "x" 5%'))
    ann.set_announcements([make_announcement(1), v6, make_announcement(3, ssm=False)])
    ann.start()
    run_until(clock, 10.0)
    ann.stop()
    packets = [decode_sap(d) for _, d in wire.sent]
    assert [p.delete for p in packets] == [False] * 3 + [True] * 3
    assert all(len(p.auth) == 68 for p in packets)  # signed: RFC 2974 authentication data
    groups = {4: V4("239.255.255.255"), 6: V6("ff15::2:7ffe")}
    frames = [
        _frame(p.origin, groups[p.origin.version], d)
        for p, (_, d) in zip(packets, wire.sent, strict=True)
    ]
    pcap = tmp_path / "sap.pcap"
    _write_pcap(pcap, frames)

    assert _expert_infos(pcap) == []
    out = _tshark(pcap, "-V")
    assert len(re.findall(r"^Session Announcement Protocol$", out, re.M)) == 6
    assert len(re.findall(r"^Session Description Protocol$", out, re.M)) == 6
    assert len(re.findall(r"Session Description Protocol Version \(v\): 0$", out, re.M)) == 6
    assert len(re.findall(r"Message Type: Deletion$", out, re.M)) == 3
    assert len(re.findall(r"Authentication Type: Unknown \(2\)$", out, re.M)) == 6
    # Each deletion's o= line, decoded, names its announcement's session.
    for a in (make_announcement(1), v6):
        origin = f"Owner/Creator, Session Id (o): - {a.offer.session_id} {a.version} IN"
        assert out.count(origin) == 2, origin
    assert "Connection Address: 232.1.0.1" in out
    assert "Connection Address: ff3e::8000:2" in out
    assert "source-filter: incl IN IP6 ff3e::8000:2 2001:db8::10" in out
    assert "Media Port: 7712" in out
    assert "x-mcp2p-content-id" in out
    for bad in ("Malformed", "Expert Info", "[Bad"):
        assert bad not in out, [line for line in out.splitlines() if bad in line]


@TSHARK
def test_wireshark_notes_a_payload_type_before_sdp(tmp_path: Path) -> None:
    """The control: the layout mcp2p used to send (and others send) gets a note."""
    data = encode_sap(SAPPacket(False, 9, ORIGIN, encode_sdp(make_announcement(1))))
    header, sdp = data[:8], data[8:]
    assert sdp.startswith(b"v=0")
    pcap = tmp_path / "typed.pcap"
    typed = header + b"application/sdp\x00" + sdp
    _write_pcap(pcap, [_frame(ORIGIN, V4("239.255.255.255"), typed)])
    assert _expert_infos(pcap) == [
        ("Notes", "SDP", "Invalid SDP line (no '=' delimiter)")  # in the pass without a tree
    ]
