"""The typed sections: one frozen dataclass per SCHEMA section, and ``Config``.

Fields are named and ordered as the section's keys and typed as its parsers
return (tests/test_config.py keeps the two in step), so mypy refuses
``config.discovery.ring_timout``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mcp2p.trust.endpoint import Endpoint


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NodeSection:
    state_dir: Path
    interface: ipaddress.IPv4Address
    interface6: str
    plugins_dir: Path
    log_level: str


@dataclass(frozen=True)
class ShareSection:
    paths: tuple[Path, ...]
    piece_length: int
    rescan_interval: float


@dataclass(frozen=True)
class DiscoverySection:
    methods: tuple[str, ...]
    query_groups: tuple[IPAddress, ...]
    query_port: int
    ring_schedule: tuple[int, ...]
    ring_timeout: float
    answers_wanted: int
    reply_mode: str
    reply_delay_min: float
    reply_delay_max: float
    answer_rate: float
    answer_burst: int
    query_padding: int
    source_rate: float
    source_burst: int


@dataclass(frozen=True)
class SAPSection:
    group: IPAddress
    group6: IPAddress
    port: int
    ttl: int
    bandwidth_limit: int
    min_interval: float
    cache_timeout: float
    max_per_source: int
    max_entries: int


@dataclass(frozen=True)
class ServingSection:
    group_mode: str
    ssm_pool: tuple[IPNetwork, ...]
    asm_pool: tuple[IPNetwork, ...]
    data_port: int
    control_port: int
    rate: int
    block_length: int
    dscp: int
    ttl: int
    min_rate: int
    max_rate: int
    grace: float
    gather: float
    scheduler: str
    encode_workers: int
    handshake_timeout: float
    idle_timeout: float
    connections_per_address: int
    max_connections: int
    max_box: int
    max_queued: int
    write_timeout: float
    report_timeout: float
    max_wanted_ranges: int
    subscriptions_per_node: int
    slow_loss: float
    slow_window: float
    subscribers: str | tuple[bytes, ...]  # "any", "trusted", or node ids


@dataclass(frozen=True)
class FetchingSection:
    download_dirs: tuple[Path, ...]
    sources: int
    mode: str
    code: str
    stall_timeout: float
    bad_pieces: int
    max_piece_length: int
    max_file_size: int
    max_in_flight: int
    max_unverified: int
    max_subscriptions: int
    max_sources_tried: int
    family: str


@dataclass(frozen=True)
class KeysSection:
    serve: bool
    listen: Endpoint | None
    peers: tuple[Endpoint, ...]
    servers: tuple[Endpoint, ...]
    replication_interval: float
    max_per_round: int
    max_records: int
    add_rate: float
    add_burst: int
    lookup_timeout: float


@dataclass(frozen=True)
class TrustSection:
    policy: str


@dataclass(frozen=True)
class APISection:
    port: int
    unix_socket: Path | None


SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "share": ShareSection,
    "discovery": DiscoverySection,
    "sap": SAPSection,
    "serving": ServingSection,
    "fetching": FetchingSection,
    "keys": KeysSection,
    "trust": TrustSection,
    "api": APISection,
}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    source: str
    base_dir: Path
    sections: Mapping[str, Any]  # section name -> its dataclass (SECTIONS)
    plugins: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def node(self) -> NodeSection:
        return cast(NodeSection, self.sections["node"])

    @property
    def share(self) -> ShareSection:
        return cast(ShareSection, self.sections["share"])

    @property
    def discovery(self) -> DiscoverySection:
        return cast(DiscoverySection, self.sections["discovery"])

    @property
    def sap(self) -> SAPSection:
        return cast(SAPSection, self.sections["sap"])

    @property
    def serving(self) -> ServingSection:
        return cast(ServingSection, self.sections["serving"])

    @property
    def fetching(self) -> FetchingSection:
        return cast(FetchingSection, self.sections["fetching"])

    @property
    def keys(self) -> KeysSection:
        return cast(KeysSection, self.sections["keys"])

    @property
    def trust(self) -> TrustSection:
        return cast(TrustSection, self.sections["trust"])

    @property
    def api(self) -> APISection:
        return cast(APISection, self.sections["api"])
