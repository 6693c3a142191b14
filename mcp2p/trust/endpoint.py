"""Where a key server is reached: ``ADDRESS[:PORT]`` as an `Endpoint`.

Pure, with nothing from Twisted: the config parser checks ``[keys]`` with
it, and every ``mcp2p`` command parses the config before it does anything
(importing the HTTP client for that cost each command about 0.3 s).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

HKP_PORT = 11371


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def url(self, path: str) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}".encode("ascii")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(
    text: str, default_port: int | None = HKP_PORT, *, any_address: bool = False
) -> Endpoint:
    """``ADDRESS[:PORT]`` (IPv6 as ``[ADDR]:PORT``) as an Endpoint, or ValueError.

    ``any_address`` allows 0.0.0.0 and :: (a server listening on every address)."""
    allowed = "ADDRESS:PORT (an IPv4 address, or [IPv6]:PORT)"
    if default_port is not None:
        allowed = f"ADDRESS[:PORT] (an IP address; port {default_port} if none is given)"
    raw = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([0-9.]+)(?::(\d{1,5}))?", raw)
    if not m:
        if default_port is not None and ":" in raw:
            m = re.fullmatch(r"()()([0-9A-Fa-f:]+)()", raw)  # a bare IPv6 address
        if not m:
            raise ValueError(allowed)
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(allowed) from None
    if addr.is_multicast or (addr.is_unspecified and not any_address):
        raise ValueError(allowed)
    if port_text is None:
        if default_port is None:
            raise ValueError(allowed)
        port = default_port
    else:
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(allowed)
    return Endpoint(str(addr), port)
