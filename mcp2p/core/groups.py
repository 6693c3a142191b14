"""Choosing a random multicast group for a session from a pool of networks."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

from mcp2p.wire.types import IPAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def random_group(pools: Sequence[Network], version: int, rng: random.Random) -> IPAddress:
    """A random address of the pools of IP ``version``, never the network's first
    address (in 232.0.0.0/8, 232.0.0.0 is reserved, RFC 4607) nor an IPv4 pool's last.

    Raises ValueError when no pool of that version (with a usable address) is configured.
    """
    reserved = 2 if version == 4 else 1  # first (and IPv4 last) address
    # A pool too small to have a usable address (a /31 or /32) is skipped.
    candidates = [n for n in pools if n.version == version and n.num_addresses > reserved]
    if not candidates:
        raise ValueError(f"no IPv{version} multicast pool with a usable address configured")
    weights = [n.num_addresses - reserved for n in candidates]
    net = rng.choices(candidates, weights=weights)[0]
    offset = rng.randint(1, net.num_addresses - reserved)
    return net.network_address + offset
