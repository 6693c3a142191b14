"""The ini file, read into a typed, frozen, validated configuration.

Every option is declared once in ``SCHEMA`` with its parser, default and a
one-line description; ``etc/mcp2p.ini`` documents the same options (a test
keeps the two in step). An unknown section or key, or a bad value, raises
``ConfigError`` whose message is one line naming file, section, key, value
and what is allowed (Tahoe-LAFS ``validate_config`` is the model).

Plugin settings live in ``[plugin:NAME]`` sections and are passed through
as strings for the plugin to validate.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mcp2p.errors import ConfigError

if TYPE_CHECKING:
    from mcp2p.trust.keyclient import Endpoint

# Where a config is looked for when none is named, in order (see find_config).
CONFIG_ENV = "MCP2P_CONFIG"
DEFAULT_LOCATIONS = ("./mcp2p.ini", "./etc/mcp2p.ini", "/etc/mcp2p/mcp2p.ini")


# -- value parsers: each takes the raw string (and the config's directory) and
# -- returns the value or raises ValueError with "what is allowed".


def _int_range(low: int, high: int) -> Callable[[str, Path], int]:
    def parse(raw: str, base: Path) -> int:
        try:
            value = int(raw.strip(), 0)
        except ValueError:
            raise ValueError(f"an integer in [{low}, {high}]") from None
        if not low <= value <= high:
            raise ValueError(f"an integer in [{low}, {high}]")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str, Path], float]:
    def parse(raw: str, base: Path) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"a number in [{low:g}, {high:g}]") from None
        if not low <= value <= high or value != value:
            raise ValueError(f"a number in [{low:g}, {high:g}]")
        return value

    return parse


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def _size(low: int, high: int, power_of_two: bool = False) -> Callable[[str, Path], int]:
    allowed = f"a size in bytes in [{low}, {high}] (suffix K, M, G or T allowed)"
    if power_of_two:
        allowed = "a power of two " + allowed[2:]

    def parse(raw: str, base: Path) -> int:
        m = re.fullmatch(r"\s*(\d+)\s*([kmgtKMGT]?)(i?[bB])?\s*", raw)
        if not m:
            raise ValueError(allowed)
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if not low <= value <= high or (power_of_two and value & (value - 1)):
            raise ValueError(allowed)
        return value

    return parse


def parse_rate(raw: str, base: Path | None = None) -> int:
    """A rate in bit/s: ``100M`` is 100 Mbit/s (decimal units, as links are sold)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)(bit/s|bps|b)?\s*", raw)
    allowed = "a rate in bit/s, at least 8000 (suffix k, M or G allowed, e.g. 100M)"
    if not m:
        raise ValueError(allowed)
    value = float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    if not 8000 <= value <= 10**12:  # checked before int(): a 400-digit rate is inf
        raise ValueError(allowed)
    return int(value)


def _bool(raw: str, base: Path) -> bool:
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("one of yes, no, true, false, on, off, 1, 0")


def _choice(*choices: str) -> Callable[[str, Path], str]:
    def parse(raw: str, base: Path) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    return parse


def _list(raw: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", raw.strip()) if item]


# Plugin names: only their spelling is checked here; _check_plugins checks that a
# plugin of that name exists once [node] plugins_dir is known.
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def _plugin_name(raw: str, base: Path) -> str:
    value = raw.strip().lower()
    if not _PLUGIN_NAME.fullmatch(value):
        raise ValueError("a plugin name (a letter, then letters, digits, - or _)")
    return value


def _plugin_names(raw: str, base: Path) -> tuple[str, ...]:
    items = tuple(item.lower() for item in _list(raw))
    if not items or len(set(items)) != len(items):
        raise ValueError("a non-empty list of distinct plugin names")
    for item in items:
        _plugin_name(item, base)
    return items


def _path(raw: str, base: Path) -> Path:
    value = raw.strip()
    if not value:
        raise ValueError("a path (relative paths are relative to the config file's directory)")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def _paths(raw: str, base: Path) -> tuple[Path, ...]:
    items = [line.strip() for line in raw.splitlines() for line in line.split(",")]
    return tuple(_path(item, base) for item in items if item.strip())


def _download_dirs(raw: str, base: Path) -> tuple[Path, ...]:
    dirs = _paths(raw, base)
    if not dirs:
        raise ValueError(
            "a list of directories (comma or newline separated; the first is the default "
            "output directory, relative paths are relative to the config file's directory)"
        )
    return tuple(dict.fromkeys(dirs))


# Keys that were renamed: (section, old key) -> what to write instead. Refused
# with that line rather than read silently (see the [fetching] download_dirs notes).
RENAMED = {
    ("fetching", "download_dir"): (
        "download_dirs (a list of the directories fetched files may go to; the first is "
        "the default output directory): rename the key, and list there every directory "
        "a fetch through the daemon may write to"
    ),
}


def _ipv4_address(raw: str, base: Path) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(raw.strip())
    except ValueError:
        raise ValueError("an IPv4 unicast address of a local interface, e.g. 127.0.0.1") from None
    if addr.is_multicast or addr.is_unspecified:
        raise ValueError("an IPv4 unicast address of a local interface, e.g. 127.0.0.1")
    return addr


def _interface6(raw: str, base: Path) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value):
        raise ValueError("an interface name such as eth0, or empty to disable IPv6")
    return value


def _groups(raw: str, base: Path) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    allowed = "a list of multicast addresses (IPv4 and/or IPv6), e.g. 239.255.77.77, ff15::77"
    out = []
    for item in _list(raw):
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(allowed) from None
        if not addr.is_multicast:
            raise ValueError(allowed)
        out.append(addr)
    if not out:
        raise ValueError(allowed)
    return tuple(out)


def _subscribers(raw: str, base: Path) -> str | tuple[bytes, ...]:
    allowed = "any, trusted, or a list of node ids (32 hex digits each, comma separated)"
    items = _list(raw.lower())
    if items in (["any"], ["trusted"]):
        return items[0]
    if not items or not all(re.fullmatch(r"[0-9a-f]{32}", item) for item in items):
        raise ValueError(allowed)
    return tuple(dict.fromkeys(bytes.fromhex(item) for item in items))


def _group(raw: str, base: Path) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    groups = _groups(raw, base)
    if len(groups) != 1:
        raise ValueError("one multicast address")
    return groups[0]


def _pools(
    ssm: bool,
) -> Callable[[str, Path], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    kind = "SSM (232.0.0.0/8, ff3x::/32)" if ssm else "multicast"

    def parse(raw: str, base: Path) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        allowed = f"a list of {kind} networks with a prefix length, e.g. " + (
            "232.0.0.0/8, ff3e::/32" if ssm else "239.192.0.0/14, ff15::/16"
        )
        out = []
        for item in _list(raw):
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError:
                raise ValueError(allowed) from None
            if not net.is_multicast:
                raise ValueError(allowed)
            if ssm and not _is_ssm(net):
                raise ValueError(allowed)
            if net.num_addresses < 2:
                raise ValueError(allowed)
            out.append(net)
        if not out:
            raise ValueError(allowed)
        return tuple(out)

    return parse


def _is_ssm(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if net.version == 4:
        return net.subnet_of(ipaddress.IPv4Network("232.0.0.0/8"))
    first = int(net.network_address) >> 96
    # Inside ff3x::/32: zero prefix length and network prefix (RFC 4607); a
    # shorter prefix (ff3e::/16) would also cover non-SSM groups.
    return (
        net.prefixlen >= 32
        and (first >> 24) == 0xFF
        and ((first >> 20) & 0xF) == 3
        and (first & 0xFFFF) == 0
    )


def _ring_schedule(raw: str, base: Path) -> tuple[int, ...]:
    allowed = "a strictly increasing list of hop limits in [1, 255], e.g. 1, 2, 3, 4, 8, 16"
    try:
        rings = tuple(int(item) for item in _list(raw))
    except ValueError:
        raise ValueError(allowed) from None
    if not rings or any(not 1 <= r <= 255 for r in rings):
        raise ValueError(allowed)
    if any(b <= a for a, b in zip(rings, rings[1:], strict=False)):
        raise ValueError(allowed)
    return rings


_DSCP_NAMES = {f"cs{i}": i * 8 for i in range(8)} | {"le": 1, "ef": 46, "be": 0}


def _dscp(raw: str, base: Path) -> int:
    value = raw.strip().lower()
    if value in _DSCP_NAMES:
        return _DSCP_NAMES[value]
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= 63:
        raise ValueError("a DSCP name (cs0-cs7, le, ef, be) or a number in [0, 63]")
    return number


def _api_port(raw: str, base: Path) -> int:
    return _int_range(0, 65535)(raw, base)


UNIX_PATH_MAX = 107  # bytes of sockaddr_un.sun_path, less the terminating NUL


def _unix_socket(raw: str, base: Path) -> Path | None:
    if not raw.strip():
        return None
    path = _path(raw, base)
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"a Unix socket path of at most {UNIX_PATH_MAX} bytes (or empty: none)")
    return path


def _endpoint(default_port: int | None) -> Callable[[str, Path], Any]:
    """``ADDRESS[:PORT]`` (empty: None when there is no default port)."""

    def parse(raw: str, base: Path) -> Any:
        from mcp2p.trust.keyclient import parse_endpoint

        if not raw.strip() and default_port is None:
            return None
        return parse_endpoint(raw, default_port, any_address=True)

    return parse


def _endpoints(default_port: int | None) -> Callable[[str, Path], tuple[Any, ...]]:
    def parse(raw: str, base: Path) -> tuple[Any, ...]:
        from mcp2p.trust.keyclient import parse_endpoint

        items = [parse_endpoint(item, default_port) for item in _list(raw)]
        if len(set(items)) != len(items):
            raise ValueError("a list of distinct addresses")
        return tuple(items)

    return parse


# -- the schema: section -> key -> (parser, default, one-line help)

Parser = Callable[[str, Path], Any]


@dataclass(frozen=True)
class Option:
    parse: Parser
    default: str
    help: str


SCHEMA: dict[str, dict[str, Option]] = {
    "node": {
        "state_dir": Option(_path, "state", "keys, catalog index and transfer state"),
        "interface": Option(
            _ipv4_address, "127.0.0.1", "IPv4 address of the interface used for multicast"
        ),
        "interface6": Option(
            _interface6, "", "interface name for IPv6 multicast (empty: IPv6 disabled)"
        ),
        "plugins_dir": Option(
            _path, "plugins", "drop-in directory searched for extra Twisted plugins"
        ),
        "log_level": Option(
            _choice("debug", "info", "warn", "error", "critical"),
            "info",
            "lowest level of the events written to the log",
        ),
    },
    "share": {
        "paths": Option(_paths, "share", "directories shared (comma or newline separated)"),
        "piece_length": Option(
            _size(1 << 14, 1 << 28, power_of_two=True), "1M", "bytes per verified piece"
        ),
        "rescan_interval": Option(
            _float_range(1, 86400), "60", "seconds between rescans of the shared directories"
        ),
    },
    "discovery": {
        "methods": Option(_plugin_names, "query, sap", "discovery methods enabled"),
        "query_groups": Option(
            _groups, "239.255.77.77, ff15::77", "multicast groups queries are sent to"
        ),
        "query_port": Option(_int_range(1, 65535), "7711", "UDP port of the query groups"),
        "ring_schedule": Option(
            _ring_schedule, "1, 2, 3, 4, 6, 8, 16, 32", "hop limits of the expanding rings"
        ),
        "ring_timeout": Option(
            _float_range(0.05, 60), "0.3", "seconds to wait for answers before the next ring"
        ),
        "answers_wanted": Option(
            _int_range(1, 255), "3", "stop widening the rings once this many SNs answered"
        ),
        "reply_mode": Option(
            _choice("unicast", "multicast"), "unicast", "how SNs are asked to send offers"
        ),
        "reply_delay_min": Option(
            _float_range(0, 10), "0.02", "shortest random delay before an offer, seconds"
        ),
        "reply_delay_max": Option(
            _float_range(0, 10), "0.12", "longest random delay before an offer, seconds"
        ),
        "answer_rate": Option(
            _float_range(0.1, 10000), "20", "offers an SN sends per second at most, sustained"
        ),
        "answer_burst": Option(_int_range(1, 10000), "20", "offers an SN may send in a burst"),
        "query_padding": Option(
            _int_range(0, 1200), "400", "zero bytes a CN adds to pattern queries"
        ),
        "source_rate": Option(
            _float_range(0.1, 10000),
            "10",
            "queries per second an SN looks up for one source address, sustained",
        ),
        "source_burst": Option(
            _int_range(1, 10000), "30", "queries an SN looks up for one source in a burst"
        ),
    },
    "sap": {
        "group": Option(_group, "239.255.255.255", "IPv4 SAP group (RFC 2974)"),
        "group6": Option(_group, "ff15::2:7ffe", "IPv6 SAP group, used when interface6 is set"),
        "port": Option(_int_range(1, 65535), "9875", "SAP UDP port"),
        "ttl": Option(_int_range(1, 255), "15", "hop limit of announcements"),
        "bandwidth_limit": Option(
            _int_range(100, 10**9), "4000", "bit/s shared by all announcements in the scope"
        ),
        "min_interval": Option(
            _float_range(0.1, 86400), "300", "shortest interval between two announcements"
        ),
        "cache_timeout": Option(
            _float_range(1, 10**7), "3600", "shortest time an unrefreshed entry is kept"
        ),
        "max_per_source": Option(
            _int_range(1, 10**6), "256", "directory entries one source address may hold"
        ),
        "max_entries": Option(_int_range(1, 10**7), "16384", "directory entries in all"),
    },
    "serving": {
        "group_mode": Option(_choice("ssm", "asm"), "ssm", "SSM (source-specific) or ASM groups"),
        "ssm_pool": Option(_pools(ssm=True), "232.0.0.0/8, ff3e::/32", "SSM group pool"),
        "asm_pool": Option(_pools(ssm=False), "239.192.0.0/14, ff15::/16", "ASM group pool"),
        "data_port": Option(_int_range(1, 65535), "7712", "UDP port of data sessions"),
        "control_port": Option(_int_range(0, 65535), "7713", "TCP port of the control channel"),
        "rate": Option(parse_rate, "100M", "default session rate in bit/s"),
        "block_length": Option(
            _int_range(256, 65000), "1400", "bytes per data block (fit the path MTU)"
        ),
        "dscp": Option(_dscp, "cs1", "DSCP of data packets (cs1 or le: lower effort)"),
        "ttl": Option(_int_range(1, 255), "16", "hop limit of multicast data packets"),
        "min_rate": Option(parse_rate, "1M", "a session never slows below this, bit/s"),
        "max_rate": Option(parse_rate, "1G", "a session never goes faster than this, bit/s"),
        "grace": Option(
            _float_range(0, 3600), "5", "seconds a session lingers once nobody wants anything"
        ),
        "scheduler": Option(
            _choice("demand", "uniform", "sequential", "mostwanted"),
            "mostwanted",
            "how a session chooses the next block",
        ),
        "handshake_timeout": Option(
            _float_range(1, 600), "15", "seconds from TCP connect to a verified TLS peer"
        ),
        "idle_timeout": Option(
            _float_range(1, 86400), "120", "seconds a control channel may stay silent"
        ),
        "connections_per_address": Option(
            _int_range(1, 100000), "16", "control channels open at once from one address"
        ),
        "max_connections": Option(
            _int_range(0, 1000000),
            "0",
            "control channels open at once (0: half the open-file limit)",
        ),
        "max_box": Option(
            _size(1 << 16, 1 << 24), "128K", "largest AMP box a peer may send, bytes"
        ),
        "max_queued": Option(
            _size(1 << 16, 1 << 30),
            "8M",
            "reply bytes queued for a peer that does not read before it is disconnected",
        ),
        "write_timeout": Option(
            _float_range(0.1, 3600), "10", "seconds a peer may leave its replies unread"
        ),
        "report_timeout": Option(
            _float_range(0.1, 3600),
            "15",
            "seconds a subscriber may send neither loss reports nor wanted updates",
        ),
        "max_wanted_ranges": Option(
            _int_range(1, 10**7), "65536", "ranges a subscriber's wanted map may hold"
        ),
        "subscriptions_per_node": Option(
            _int_range(1, 100000), "8", "subscriptions one node id may hold at once"
        ),
        "slow_loss": Option(
            _float_range(0.01, 1), "0.25", "loss that marks a multicast subscriber as slow"
        ),
        "slow_window": Option(
            _float_range(0.5, 600), "5", "seconds of loss reports a slow subscriber is judged on"
        ),
        "subscribers": Option(
            _subscribers, "any", "who may subscribe: any, trusted, or a list of node ids"
        ),
    },
    "fetching": {
        "download_dirs": Option(
            _download_dirs,
            "downloads",
            "directories fetched files may go to (the first: the default)",
        ),
        "sources": Option(_int_range(1, 64), "2", "SNs a fetch uses at once"),
        "mode": Option(
            _choice("multicast", "unicast"), "multicast", "how data is asked for by default"
        ),
        "code": Option(_plugin_name, "auto", "block code asked for by default"),
        "stall_timeout": Option(
            _float_range(0.5, 600), "5", "seconds without progress before an SN is dropped"
        ),
        "bad_pieces": Option(
            _int_range(1, 1000), "3", "pieces failing verification before an SN is dropped"
        ),
        "max_piece_length": Option(
            _size(1 << 10, 1 << 30), "16M", "largest piece accepted from an SN's manifest"
        ),
        "max_file_size": Option(
            _size(0, 1 << 60), "1T", "largest file accepted from an SN's manifest"
        ),
        "max_in_flight": Option(
            _size(1 << 20, 1 << 40),
            "256M",
            "bytes of unfinished pieces a fetch holds in memory at most",
        ),
        "max_unverified": Option(
            _size(0, 1 << 60),
            "0",
            "bytes received without a piece verifying before a fetch gives up "
            "(0: twice what is missing, at least 64M)",
        ),
        "max_subscriptions": Option(
            _int_range(1, 10000), "32", "subscriptions a fetch makes before it gives up"
        ),
        "max_sources_tried": Option(
            _int_range(1, 10000), "16", "SNs a fetch tries before it gives up"
        ),
        "family": Option(
            _choice("auto", "4", "6"),
            "auto",
            "IP version of the multicast sessions a fetch joins",
        ),
    },
    "keys": {
        "serve": Option(_bool, "no", "be a key server (needs listen)"),
        "listen": Option(
            _endpoint(None),
            "",
            "ADDRESS:PORT the key server answers HKP on (0.0.0.0: all; empty: none)",
        ),
        "peers": Option(
            _endpoints(None), "", "other key servers replicated with (ADDRESS:PORT list)"
        ),
        "servers": Option(
            _endpoints(11371), "", "where key look-ups go: ADDRESS[:PORT] list (the anycast one)"
        ),
        "replication_interval": Option(
            _float_range(0.1, 86400), "30", "seconds between anti-entropy rounds with each peer"
        ),
        "max_per_round": Option(
            _int_range(1, 10**6), "1024", "records taken from one peer per round at most"
        ),
        "max_records": Option(_int_range(1, 10**7), "100000", "records a key server holds"),
        "add_rate": Option(
            _float_range(0.001, 10000), "1", "records per second one address may add, sustained"
        ),
        "add_burst": Option(_int_range(1, 10000), "10", "records one address may add in a burst"),
        "lookup_timeout": Option(
            _float_range(0.1, 600), "5", "seconds a look-up or replication request may take"
        ),
    },
    "trust": {
        "policy": Option(
            _choice("tofu", "pinned", "keyservers", "open"),
            "tofu",
            "whose offers are believed and who counts as trusted",
        ),
    },
    "api": {
        "port": Option(_api_port, "7780", "local HTTP API port on 127.0.0.1 (0: any free)"),
        "unix_socket": Option(
            _unix_socket,
            "",
            "path of a Unix socket serving the API too, without the token (empty: none)",
        ),
    },
}


# -- the typed sections: one frozen dataclass per SCHEMA section, fields named
# -- and ordered as its keys, typed as its parsers return (tests/test_config.py
# -- keeps the two in step), so mypy refuses ``config.discovery.ring_timout``.

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
    scheduler: str
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


def _error(source: str, section: str, key: str, value: str, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: [{section}] {key} = {value!r}: expected {allowed}")


def config_from_string(
    text: str,
    source: str = "<string>",
    base_dir: Path | None = None,
    overrides: Iterable[tuple[str, str, str]] = (),
) -> Config:
    """Parse and validate ``text``; ``overrides`` are (section, key, value) triples
    (the command line's), applied on top of the file and validated the same way."""
    base = (base_dir or Path.cwd()).resolve()
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: " + " ".join(str(e).split())) from None

    raw: dict[str, dict[str, str]] = {}
    origin: dict[tuple[str, str], str] = {}
    plugins: dict[str, dict[str, str]] = {}
    for name in parser.sections():
        if name.startswith("plugin:") and len(name) > len("plugin:"):
            plugins[name[len("plugin:") :]] = dict(parser[name])
            continue
        if name not in SCHEMA:
            allowed = ", ".join(f"[{s}]" for s in SCHEMA) + ", [plugin:NAME]"
            raise ConfigError(f"{source}: unknown section [{name}]: expected one of {allowed}")
        for key, value in parser[name].items():
            if (name, key) in RENAMED:
                raise ConfigError(
                    f"{source}: [{name}] {key} is no longer read: use {RENAMED[(name, key)]}"
                )
            if key not in SCHEMA[name]:
                raise ConfigError(
                    f"{source}: [{name}] unknown key {key!r} = {value!r}: expected one of "
                    + ", ".join(SCHEMA[name])
                )
            raw.setdefault(name, {})[key] = value
            origin[(name, key)] = source
    for section, key, value in overrides:
        if (section, key) in RENAMED:
            raise ConfigError(
                f"command line: {section}.{key} is no longer read: use {RENAMED[(section, key)]}"
            )
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"command line: unknown option {section}.{key}")
        raw.setdefault(section, {})[key] = value
        origin[(section, key)] = "command line"

    sections: dict[str, Any] = {}
    for section, options in SCHEMA.items():
        values: dict[str, Any] = {}
        for key, option in options.items():
            value = raw.get(section, {}).get(key, option.default)
            try:
                values[key] = option.parse(value, base)
            except ValueError as e:
                where = origin.get((section, key), f"{source} (default)")
                raise _error(where, section, key, value, str(e)) from None
        sections[section] = SECTIONS[section](**values)
    config = Config(source=source, base_dir=base, sections=sections, plugins=plugins)
    _check_together(config, origin)
    _check_plugins(config, raw, origin)
    return config


def _check_plugins(
    config: Config,
    raw: Mapping[str, Mapping[str, str]],
    origin: Mapping[tuple[str, str], str],
) -> None:
    """Every plugin the config names exists, built in or in ``[node] plugins_dir``."""
    from mcp2p import plugins

    plugins.add_dir(config.node.plugins_dir)
    named = [
        ("discovery", "methods", "discovery", "discovery", config.discovery.methods),
        ("fetching", "code", "code", "block code", (config.fetching.code,)),
    ]
    for section, key, kind, what, values in named:
        have = plugins.names(kind)
        for value in values:
            if value not in have:
                where = origin.get((section, key), f"{config.source} (default)")
                written = raw.get(section, {}).get(key, SCHEMA[section][key].default)
                allowed = f"one of {', '.join(have)} (or a {what} plugin in [node] plugins_dir)"
                raise _error(where, section, key, written, allowed)


def _check_together(config: Config, origin: Mapping[tuple[str, str], str]) -> None:
    """Rules that tie two options together; the error names the command line
    when it set either option."""

    def where(*keys: str) -> str:
        if any(origin.get(("discovery", k)) == "command line" for k in keys):
            return "command line"
        return config.source

    d = config.discovery
    if d.reply_delay_max < d.reply_delay_min:
        raise _error(
            where("reply_delay_max", "reply_delay_min"),
            "discovery",
            "reply_delay_max",
            str(d.reply_delay_max),
            f"a number >= reply_delay_min ({d.reply_delay_min:g})",
        )
    if d.ring_timeout <= d.reply_delay_max:
        raise _error(
            where("ring_timeout", "reply_delay_max"),
            "discovery",
            "ring_timeout",
            str(d.ring_timeout),
            f"a number > reply_delay_max ({d.reply_delay_max:g}), or answers miss their ring",
        )


def find_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the config is: ``--config``, ``$MCP2P_CONFIG``, then DEFAULT_LOCATIONS.

    Raises ConfigError naming every place looked at when none exists.
    """
    env = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{explicit}: config file not found (named by --config)")
        return path
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (named by ${CONFIG_ENV})")
        return path
    for candidate in DEFAULT_LOCATIONS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        "no config file: give --config FILE or set $MCP2P_CONFIG (looked in "
        + ", ".join(DEFAULT_LOCATIONS)
        + ")"
    )


def load_config(path: Path, overrides: Iterable[tuple[str, str, str]] = ()) -> Config:
    """Read the file at ``path``; relative paths in it are relative to its directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return config_from_string(
        text, source=str(path), base_dir=Path(path).resolve().parent, overrides=overrides
    )


def parse_override(text: str) -> tuple[str, str, str]:
    """``section.key=value`` from the command line, as a triple."""
    m = re.fullmatch(r"([a-z0-9_]+)\.([a-z0-9_]+)=(.*)", text, re.DOTALL)
    if not m:
        raise ConfigError(f"command line: {text!r}: expected SECTION.KEY=VALUE")
    return m.group(1), m.group(2), m.group(3)
