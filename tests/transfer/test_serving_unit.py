"""ServingService as the control channel's ServingSide, called directly on a
Clock: which session a subscriber gets, what the OFFER promises, who may
subscribe, and what is left when sessions, channels and the service end.

(The AMP commands themselves: test_control_channel.py; per-peer budgets:
test_control_budgets.py; rates: test_session_rate.py.)
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from mcp2p.catalog import CatalogEntry
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import NotShared, Refused, UnknownSubscription, joined_token
from mcp2p.transfer.serving import ServingService
from mcp2p.transfer.session import JOIN_DELAY, JOIN_MARGIN
from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import load_or_create
from mcp2p.wire.merkle import hash_pieces, merkle_root
from tests.nodes import node_config
from tests.transfer.fakes import Channel, DataPort, subscribe_args

PIECE = 16 << 10
BLOCK = 1024


class Catalog:
    def __init__(self, entry: CatalogEntry) -> None:
        self.entry = entry
        self.stopped = False

    def get(self, content_id: bytes) -> CatalogEntry | None:
        return self.entry if content_id == self.entry.content_id else None

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def made(tmp_path: Path) -> Any:
    services: list[ServingService] = []

    def make(**serving: str) -> tuple[ServingService, Clock, CatalogEntry]:
        clock = Clock()
        clock.advance(500.0)
        options = {"block_length": str(BLOCK), "rate": "10M", "ssm_pool": "232.7.0.0/16"}
        options.update(serving)
        config = node_config(tmp_path, 1, 1, serving=options)
        data = os.urandom(3 * PIECE + 10)
        path = tmp_path / "shared.bin"
        path.write_bytes(data)
        hashes = tuple(hash_pieces(data[i : i + PIECE] for i in range(0, len(data), PIECE)))
        entry = CatalogEntry(
            merkle_root(hashes), str(path), "shared.bin", len(data), 0, 0, 0, PIECE, hashes
        )
        service = ServingService(
            clock,
            config.serving,
            config.node,
            load_or_create(tmp_path / "sn"),
            TrustGate.from_config(config, clock),
            Catalog(entry),
            random.Random(9),
        )
        service.data_port = DataPort()
        services.append(service)
        return service, clock, entry

    yield make
    for service in services:
        for session in service.live_sessions():
            session.end("test over")
        if service.checker is not None and service.checker.running:
            service.checker.stop()


def subscribe(
    service: ServingService, client: Channel, entry: CatalogEntry, **kw: Any
) -> dict[str, Any]:
    args = subscribe_args(entry, BLOCK, **kw)
    reply = service.subscribe(client, **args)  # type: ignore[arg-type]
    assert isinstance(reply, dict)  # [serving] subscribers = any: admitted at once
    return reply


def test_the_offer_promises_the_session_a_multicast_subscriber_gets(made: Any) -> None:
    service, _, entry = made()
    offer = service.offer_for(entry)
    reply = subscribe(service, Channel(), entry)
    assert reply["session_id"] == offer.session_id
    assert reply["group"] == str(offer.group) and reply["port"] == offer.port
    assert reply["source"] == str(offer.source)
    assert service.offer_for(entry) == offer  # the plan holds for the daemon's lifetime


def test_multicast_subscribers_share_a_session_per_code_unicast_ones_do_not(made: Any) -> None:
    service, _, entry = made()
    one = subscribe(service, Channel(), entry)
    two = subscribe(service, Channel(), entry)
    coded = subscribe(service, Channel(), entry, code="raptorq", wanted=RangeSet([(0, 1)]).encode())
    solo = subscribe(service, Channel(host="127.0.0.9"), entry, mode="unicast", port=4321)
    assert one["session_id"] == two["session_id"]
    assert len({one["session_id"], coded["session_id"], solo["session_id"]}) == 3
    assert coded["code"] == "raptorq" and coded["group"] != ""
    assert solo["group"] == "" and solo["source"] == ""
    unicast = service.subscriptions[solo["subscription"]].session
    assert unicast.destination == ("127.0.0.9", 4321)  # back to the channel's address
    assert len(service.live_sessions()) == 3 and service.counters["sessions"] == 3


def test_content_not_shared_is_refused_as_such(made: Any) -> None:
    service, _, entry = made()
    with pytest.raises(NotShared):
        subscribe(service, Channel(), entry, content_id=b"\x00" * 32)
    with pytest.raises(NotShared):
        service.manifest_bytes(b"\x00" * 32)


def test_a_node_not_listed_in_subscribers_is_refused_and_counted(made: Any) -> None:
    allowed = Channel()
    service, _, entry = made(subscribers=allowed.peer_node_id.hex())
    with pytest.raises(Refused, match="may not subscribe"):
        subscribe(service, Channel(), entry)
    assert service.counters["refused_subscriber"] == 1 and not service.subscriptions
    assert subscribe(service, allowed, entry)["subscription"] == 1


def test_a_subscription_is_only_its_channels(made: Any) -> None:
    service, _, entry = made()
    owner, other = Channel(), Channel()
    sub = subscribe(service, owner, entry)["subscription"]
    with pytest.raises(UnknownSubscription):
        service.unsubscribe(other, sub)  # type: ignore[arg-type]
    with pytest.raises(UnknownSubscription):
        service.update_wanted(other, sub, b"", True)  # type: ignore[arg-type]
    assert sub in service.subscriptions


def test_an_ended_session_is_forgotten_and_its_counters_kept(made: Any) -> None:
    service, clock, entry = made(grace="1")
    client = Channel()
    sub = subscribe(service, client, entry, wanted=RangeSet([(0, 3)]).encode())["subscription"]
    for _ in range(1000):
        clock.advance(0.002)
    assert client.ended == [(sub, "nothing wanted")]
    assert not service.subscriptions and not service.live_sessions() and not service.sessions
    assert not service.heard and not service.wanted_ranges
    assert service.session_totals()["packets"] == 3 == len(service.data_port.sent)
    # The next subscriber starts a new session on the same plan.
    again = subscribe(service, client, entry)
    assert again["session_id"] == service.offer_for(entry).session_id


def test_a_disconnected_channel_takes_only_its_own_subscriptions(made: Any) -> None:
    service, _, entry = made()
    gone, stays = Channel(), Channel()
    subscribe(service, gone, entry)
    subscribe(service, gone, entry, mode="unicast", port=5000)
    kept = subscribe(service, stays, entry)["subscription"]
    service.disconnected(gone)  # type: ignore[arg-type]
    assert list(service.subscriptions) == [kept]
    assert len(service.live_sessions()) == 1  # its unicast session ended with it
    assert gone.ended == []  # nobody left to tell


def test_stopping_the_service_ends_every_session_and_says_why(made: Any) -> None:
    service, _, entry = made()
    one, two = Channel(), Channel()
    a = subscribe(service, one, entry)["subscription"]
    b = subscribe(service, two, entry, mode="unicast", port=5000)["subscription"]
    service.startService = lambda: None  # type: ignore[method-assign]  # no sockets here
    service.running = True
    results: list[Any] = []
    service.stopService().addBoth(results.append)
    assert results and service.catalog.stopped
    assert one.ended == [(a, "node stopping")] and two.ended == [(b, "node stopping")]
    assert not service.live_sessions() and not service.subscriptions
    assert service.checker is None or not service.checker.running


# -- gathering the CNs a new multicast session was just offered to


def _first_packet_at(service: ServingService, clock: Clock, until: float) -> float | None:
    """Advance in ticks until the first data packet, at most ``until`` seconds."""
    port = service.data_port
    start = clock.seconds()
    while clock.seconds() - start < until:
        clock.advance(0.002)
        if port.sent:
            return clock.seconds() - start
    return None


def test_a_new_session_waits_for_the_cns_it_just_offered_its_file(made: Any) -> None:
    service, clock, entry = made(gather="1")
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    for host in hosts:
        service.offered(host, [entry.content_id, b"\x01" * 32])
    first = subscribe(service, Channel(host=hosts[0]), entry)
    session = service.subscriptions[first["subscription"]].session
    assert set(session.waiting) == {"127.0.0.3", "127.0.0.4"}
    clock.advance(0.3)
    assert _first_packet_at(service, clock, 0.3) is None  # still waiting
    subscribe(service, Channel(host="127.0.0.3"), entry)
    assert set(session.waiting) == {"127.0.0.4"}
    assert _first_packet_at(service, clock, 0.1) is None
    subscribe(service, Channel(host="127.0.0.4"), entry)  # the last: the session starts
    took = _first_packet_at(service, clock, 0.5)
    assert took is not None and took < 0.1
    assert not service.expected or all(cid != entry.content_id for cid, _ in service.expected)


def test_a_session_waits_no_longer_than_gather_for_a_cn_that_never_comes(made: Any) -> None:
    service, clock, entry = made(gather="0.5")
    service.offered("127.0.0.2", [entry.content_id])
    service.offered("127.0.0.3", [entry.content_id])  # it found another SN, say
    subscribe(service, Channel(host="127.0.0.2"), entry)
    took = _first_packet_at(service, clock, 2.0)
    assert took is not None and 0.5 <= took < 0.6


def test_a_lone_cn_or_an_old_offer_is_not_waited_for(made: Any) -> None:
    service, clock, entry = made(gather="1")
    service.offered("127.0.0.3", [entry.content_id])
    service.offered("127.0.0.2", [entry.content_id])  # the subscriber's own offer
    clock.advance(2.5)  # older than EXPECT_FOR
    subscribe(service, Channel(host="127.0.0.2"), entry)
    took = _first_packet_at(service, clock, 1.0)
    assert took is not None and took < 0.1  # JOIN_DELAY and a tick of lists
    assert not service.expected


def test_unicast_and_gather_zero_never_wait(made: Any) -> None:
    service, clock, entry = made(gather="0")
    service.offered("127.0.0.3", [entry.content_id])
    subscribe(service, Channel(host="127.0.0.2"), entry)
    took = _first_packet_at(service, clock, 1.0)
    assert took is not None and took < 0.1
    service, clock, entry = made(gather="1")
    service.offered("127.0.0.3", [entry.content_id])
    subscribe(service, Channel(host="127.0.0.2"), entry, mode="unicast", port=4321)
    took = _first_packet_at(service, clock, 1.0)
    assert took is not None and took < 0.1


def test_offers_remembered_are_bounded(made: Any, monkeypatch: Any) -> None:
    from mcp2p.transfer import serving

    monkeypatch.setattr(serving, "MAX_EXPECTED", 8)
    service, _, entry = made()
    for i in range(100):
        service.offered(f"10.0.0.{i}", [bytes([i]) * 32, entry.content_id])
    assert len(service.expected) == 8
    assert ((entry.content_id, "10.0.0.99")) in service.expected


def test_a_cn_offered_the_file_while_the_session_gathers_is_waited_for_too(made: Any) -> None:
    service, clock, entry = made(gather="1")
    service.offered("127.0.0.2", [entry.content_id])
    service.offered("127.0.0.3", [entry.content_id])
    first = subscribe(service, Channel(host="127.0.0.2"), entry)
    session = service.subscriptions[first["subscription"]].session
    clock.advance(0.1)
    service.offered("127.0.0.4", [entry.content_id])  # its query came later
    service.offered("127.0.0.2", [entry.content_id])  # a subscriber already: not waited for
    assert set(session.waiting) == {"127.0.0.3", "127.0.0.4"}
    subscribe(service, Channel(host="127.0.0.3"), entry)
    assert _first_packet_at(service, clock, 0.2) is None
    subscribe(service, Channel(host="127.0.0.4"), entry)
    took = _first_packet_at(service, clock, 0.5)
    assert took is not None and took < 0.1
    # Once sending, a new offer no longer holds anything back.
    service.offered("127.0.0.5", [entry.content_id])
    assert not session.waiting


def test_a_query_heard_just_after_the_first_subscription_is_waited_for(made: Any) -> None:
    service, clock, entry = made(gather="1")
    first = subscribe(service, Channel(host="127.0.0.2"), entry)  # nobody else asked yet
    session = service.subscriptions[first["subscription"]].session
    assert not session.waiting
    clock.advance(0.02)  # within JOIN_DELAY: nothing sent yet
    service.offered("127.0.0.3", [entry.content_id])
    assert set(session.waiting) == {"127.0.0.3"}
    assert _first_packet_at(service, clock, 0.5) is None
    subscribe(service, Channel(host="127.0.0.3"), entry)
    took = _first_packet_at(service, clock, 0.5)
    assert took is not None and took < 0.1


def test_cns_that_say_joined_get_the_first_packet_without_the_join_delay(made: Any) -> None:
    """The session waits for its CNs to join their group: JOIN_DELAY after the
    last subscription, unless every one of them says Joined sooner."""
    service, clock, entry = made(gather="1")
    service.offered("127.0.0.2", [entry.content_id])
    service.offered("127.0.0.3", [entry.content_id])
    one, two = Channel(host="127.0.0.2"), Channel(host="127.0.0.3")
    first = subscribe(service, one, entry)["subscription"]
    service.joined(one, first)  # ... while the other CN is still waited for
    assert _first_packet_at(service, clock, 0.2) is None
    second = subscribe(service, two, entry)["subscription"]
    assert _first_packet_at(service, clock, JOIN_DELAY / 2) is None  # not joined yet
    service.joined(two, second)
    took = _first_packet_at(service, clock, JOIN_DELAY)
    assert took is not None and took <= JOIN_MARGIN + 0.005  # and a tick or two
    service.joined(two, second)  # again, or once sending: nothing changes
    assert service.counters["subscriptions"] == 2


def test_a_cn_that_never_says_joined_keeps_the_join_delay(made: Any) -> None:
    service, clock, entry = made()
    one, two = Channel(host="127.0.0.2"), Channel(host="127.0.0.3")
    first = subscribe(service, one, entry)["subscription"]
    subscribe(service, two, entry)  # an older CN: no Joined
    service.joined(one, first)
    took = _first_packet_at(service, clock, 0.2)
    assert took is not None and JOIN_DELAY - 0.002 <= took <= JOIN_DELAY + 0.01


def test_a_cn_in_the_offered_group_counts_as_joined_at_its_subscribe(made: Any) -> None:
    """A CN that joined the group it was offered before subscribing says so
    in the Subscribe: the session needs no Joined from it. A ``joined`` that
    names any other group, source or port, or is not one at all, is a CN
    not yet joined: the session keeps waiting for its Joined."""
    service, clock, entry = made(gather="1")
    offer = service.offer_for(entry)
    token = joined_token(str(offer.group), str(offer.source), offer.port)
    for host in ("127.0.0.2", "127.0.0.3"):
        service.offered(host, [entry.content_id])
    one, two = Channel(host="127.0.0.2"), Channel(host="127.0.0.3")
    first = subscribe(service, one, entry, joined=token)
    assert service.subscriptions[first["subscription"]].joined
    for wrong in (
        joined_token(str(offer.group), "", offer.port),  # ASM, not this SSM session
        joined_token(str(offer.group), str(offer.source), offer.port + 1),
        joined_token("232.1.2.3", str(offer.source), offer.port),
        token + " ",
        "x" * 5000,
        "",
    ):
        sub = subscribe(service, two, entry, joined=wrong)
        assert not service.subscriptions[sub["subscription"]].joined
        service.unsubscribe(two, sub["subscription"])
    second = subscribe(service, two, entry, joined=token)["subscription"]
    took = _first_packet_at(service, clock, JOIN_DELAY)
    assert took is not None and took <= JOIN_MARGIN + 0.005  # no Joined came
    service.joined(two, second)  # an older SN's round trip: changes nothing now


def test_joined_names_a_subscription_of_the_same_channel(made: Any) -> None:
    service, clock, entry = made()
    one, other = Channel(host="127.0.0.2"), Channel(host="127.0.0.3")
    first = subscribe(service, one, entry)["subscription"]
    for client, sub in ((other, first), (one, first + 1), (one, -1)):
        with pytest.raises(UnknownSubscription):
            service.joined(client, sub)
    took = _first_packet_at(service, clock, 0.2)  # the CN never said Joined
    assert took is not None and took >= JOIN_DELAY - 0.002
    unicast = subscribe(service, one, entry, mode="unicast", port=7712)
    service.joined(one, unicast["subscription"])  # nothing to join: no effect, no error


def test_a_cn_that_asks_from_one_address_and_subscribes_from_another_counts(made: Any) -> None:
    """So many offers, so many subscriptions: a CN may query from one address
    (an IPv6 link-local one, say) and subscribe from another."""
    service, clock, entry = made(gather="1")
    service.offered("127.0.0.2", [entry.content_id])
    service.offered("127.0.0.30", [entry.content_id])  # the second CN, as its query came
    first = subscribe(service, Channel(host="127.0.0.2"), entry)
    session = service.subscriptions[first["subscription"]].session
    assert list(session.waiting) == ["127.0.0.30"]
    assert _first_packet_at(service, clock, 0.2) is None
    subscribe(service, Channel(host="127.0.0.3"), entry)  # ... and its control channel
    took = _first_packet_at(service, clock, 0.5)
    assert took is not None and took < 0.1
