"""The value parsers SCHEMA is built from.

Each takes the raw string (and the config's directory, against which relative
paths are resolved) and returns the value or raises ValueError whose message
says what is allowed; the loader turns that into a ``ConfigError`` naming file,
section, key and value. The underscored names are the config package's own
(``schema`` builds on them); ``parse_rate`` is public, the lab and CLI read
rates with it too.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
        from mcp2p.trust.endpoint import parse_endpoint

        if not raw.strip() and default_port is None:
            return None
        return parse_endpoint(raw, default_port, any_address=True)

    return parse


def _endpoints(default_port: int | None) -> Callable[[str, Path], tuple[Any, ...]]:
    def parse(raw: str, base: Path) -> tuple[Any, ...]:
        from mcp2p.trust.endpoint import parse_endpoint

        items = [parse_endpoint(item, default_port) for item in _list(raw)]
        if len(set(items)) != len(items):
            raise ValueError("a list of distinct addresses")
        return tuple(items)

    return parse
