"""SCHEMA: every option, once, with its parser, default and one-line help.

One module, in the order of ``etc/mcp2p.ini``, so that the whole option set
reads top to bottom in one place (a test keeps the shipped file in step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp2p.config.parsers import (
    _api_port,
    _bool,
    _choice,
    _download_dirs,
    _dscp,
    _endpoint,
    _endpoints,
    _float_range,
    _group,
    _groups,
    _int_range,
    _interface6,
    _ipv4_address,
    _path,
    _paths,
    _plugin_name,
    _plugin_names,
    _pools,
    _ring_schedule,
    _size,
    _subscribers,
    _unix_socket,
    parse_rate,
)

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
            _float_range(0, 10),
            "0.02",
            "shortest random delay before an offer to the group, seconds",
        ),
        "reply_delay_max": Option(
            _float_range(0, 10),
            "0.12",
            "longest random delay before an offer to the group, seconds",
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
        "gather": Option(
            _float_range(0, 10),
            "1",
            "seconds a new multicast session waits at most for the CNs just offered its file",
        ),
        "scheduler": Option(
            _choice("demand", "uniform", "sequential", "mostwanted"),
            "mostwanted",
            "how a session chooses the next block",
        ),
        "encode_workers": Option(
            _int_range(0, 64),
            "1",
            "processes that make RaptorQ repair symbols (0: the daemon, pausing its sends)",
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


# Keys that were renamed: (section, old key) -> what to write instead. Refused
# with that line rather than read silently (see the [fetching] download_dirs notes).
RENAMED = {
    ("fetching", "download_dir"): (
        "download_dirs (a list of the directories fetched files may go to; the first is "
        "the default output directory): rename the key, and list there every directory "
        "a fetch through the daemon may write to"
    ),
}
