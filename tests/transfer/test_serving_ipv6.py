"""ServingService on both families: a Subscribe's family picks the session's
group, source and data port; each family has a plan and a shared session
per content; what a node without interface6 refuses (Twisted Clock, fake ports)."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import Refused
from mcp2p.transfer.serving import ServingService
from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import load_or_create
from mcp2p.wire.layout import Layout
from tests.nodes import node_config
from tests.transfer.fakes import Channel, DataPort

SIZE = 1 << 20
PIECE = 1 << 18
BLOCK = 1400
ADDRESS6 = "fd77:0:0:9::2"
net = ipaddress.ip_network


class Catalog:
    def __init__(self, entry: Any) -> None:
        self.entry = entry

    def get(self, content_id: bytes) -> Any:
        return self.entry if content_id == self.entry.content_id else None


def make(tmp_path: Path, mode: str = "ssm", v6: bool = True) -> tuple[ServingService, Clock, Any]:
    from mcp2p.catalog import CatalogEntry

    clock = Clock()
    node = {"interface": "10.0.0.1", "interface6": "eth0" if v6 else ""}
    config = node_config(tmp_path, 1, 1, node=node, serving={"group_mode": mode})
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(SIZE))
    entry = CatalogEntry(b"\x07" * 32, str(path), "data.bin", SIZE, 0, 0, 0, PIECE, ())
    identity, trust = load_or_create(tmp_path / "sn"), TrustGate.from_config(config, clock)
    service = ServingService(
        clock, config.serving, config.node, identity, trust, Catalog(entry), random.Random(6)
    )
    service.data_port = DataPort()
    if v6:  # what startService sets up from interface6
        service.data_port6 = DataPort()
        service.address6 = ADDRESS6
    return service, clock, entry


def subscribe(
    service: ServingService, entry: Any, family: int | None, mode: str = "multicast", **kw: Any
) -> dict[str, Any]:
    units = Layout(SIZE, PIECE, BLOCK).blocks
    return service._subscribe(
        kw.get("client") or Channel(),  # type: ignore[arg-type]
        entry.content_id,
        mode,
        4000 if mode == "unicast" else 0,
        0,
        "plain",
        RangeSet.full(units).encode(),
        False,
        family=family,
    )


def end_all(service: ServingService) -> None:
    for session in service.live_sessions():
        session.end("test over")


def test_an_ipv6_subscribe_gets_an_ipv6_ssm_session_from_the_nodes_ipv6_address(
    tmp_path: Path,
) -> None:
    service, clock, entry = make(tmp_path)
    try:
        reply = subscribe(service, entry, 6)
        assert ipaddress.ip_address(reply["group"]) in net("ff3e::/32")
        assert reply["source"] == ADDRESS6
        clock.advance(0.2)  # the lists of the first packets
        clock.advance(0.01)  # the packets
        assert service.data_port6.addresses and not service.data_port.addresses
        assert set(service.data_port6.addresses) == {(reply["group"], reply["port"])}
        # The same plan as the IPv6 offer (SAP on group6 announces it).
        offer = service.offer_for(entry, 6)
        assert str(offer.group) == reply["group"] and str(offer.source) == ADDRESS6
        assert offer.session_id == reply["session_id"]
    finally:
        end_all(service)


def test_each_family_has_its_own_shared_session(tmp_path: Path) -> None:
    service, clock, entry = make(tmp_path)
    try:
        four = subscribe(service, entry, None)  # an older CN: no family, IPv4
        six = subscribe(service, entry, 6)
        again = subscribe(service, entry, 4, client=Channel("10.0.0.3"))
        assert ipaddress.ip_address(four["group"]) in net("232.0.0.0/8")
        assert four["source"] == "10.0.0.1"
        assert again["session_id"] == four["session_id"] != six["session_id"]
        assert len(service.live_sessions()) == 2
        clock.advance(0.2)  # the lists of the first packets
        clock.advance(0.01)  # the packets
        assert {a[0] for a in service.data_port.addresses} == {four["group"]}
        assert {a[0] for a in service.data_port6.addresses} == {six["group"]}
        assert str(service.offer_for(entry).group) == four["group"]  # queries: IPv4 plan
    finally:
        end_all(service)


def test_asm_over_ipv6_uses_the_ff15_pool_without_a_source(tmp_path: Path) -> None:
    service, clock, entry = make(tmp_path, mode="asm")
    service._monitor = lambda session: None  # type: ignore[method-assign]  # no real socket
    try:
        reply = subscribe(service, entry, 6)
        assert ipaddress.ip_address(reply["group"]) in net("ff15::/16")
        assert reply["source"] == ""
        assert service.offer_for(entry, 6).source is None
    finally:
        end_all(service)


def test_unicast_goes_back_in_the_control_channels_family(tmp_path: Path) -> None:
    service, clock, entry = make(tmp_path)
    try:
        subscribe(service, entry, None, mode="unicast", client=Channel("fd77::5"))
        clock.advance(0.2)  # the lists of the first packets
        clock.advance(0.01)  # the packets
        assert set(service.data_port6.addresses) == {("fd77::5", 4000)}
        assert not service.data_port.addresses
    finally:
        end_all(service)


@pytest.mark.parametrize(
    ("v6", "family", "mode", "host", "message"),
    [
        (False, 6, "multicast", "10.0.0.2", "serves IPv4 only"),
        (True, 5, "multicast", "10.0.0.2", "family must be 4 or 6"),
        (True, -1, "multicast", "10.0.0.2", "family must be 4 or 6"),
        (False, None, "unicast", "fd77::5", "needs \\[node\\] interface6"),
    ],
)
def test_what_a_node_cannot_serve_is_refused(
    tmp_path: Path, v6: bool, family: int | None, mode: str, host: str, message: str
) -> None:
    service, clock, entry = make(tmp_path, v6=v6)
    with pytest.raises(Refused, match=message):
        subscribe(service, entry, family, mode=mode, client=Channel(host))
    assert not service.live_sessions()
