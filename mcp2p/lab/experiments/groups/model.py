"""Experiment 3's pure model: the modes and their group pools, the birthday
problem for the pool size, and the layout of a recorded fetch row (no
namespaces, no I/O)."""

from __future__ import annotations

import ipaddress
import re

SSM_POOL = "232.0.0.0/8"
ASM_BASE = "239.192.0.0"
BLOCK = 1400  # bytes of file per data packet: what a fetch needs, ceil(size / BLOCK)
# A recorded fetch is a list in this order (the run's JSON names the fields
# once per point, in "fetch_fields").
FETCH_FIELDS = [
    "cn",  # index of the CN host
    "sn",  # index of the SN host that served it
    "ok",  # the fetch finished and the file is byte-identical to the source
    "start",  # seconds after the go signal the fetch was posted
    "elapsed",  # seconds the daemon reports from search to delivery
    "groups",  # the group it subscribed to, then each group it was moved to
    "packets",  # datagrams its receiver got (all, own and foreign)
    "foreign",  # ... of them: right group, another session
    "accepted",  # ... authenticated and delivered
    "lost",  # packets announced that never came (reported for resending)
    "error",
]


def parse_mode(mode: str) -> tuple[str, str]:
    """``ssm`` or ``asm/N`` (or ``asm:NET/N``) -> (group_mode, pool)."""
    mode = mode.strip()
    if mode == "ssm":
        return "ssm", SSM_POOL
    m = re.fullmatch(r"asm(?:/(\d+)|:(\S+))", mode)
    if not m:
        raise ValueError(f"mode must be ssm or asm/N (e.g. asm/24), not {mode!r}")
    try:
        net = ipaddress.IPv4Network(
            f"{ASM_BASE}/{m.group(1)}" if m.group(1) else m.group(2), strict=True
        )
    except ValueError as e:
        raise ValueError(f"mode {mode!r}: {e}") from None
    if not net.is_multicast or net.num_addresses < 4:
        raise ValueError(f"mode {mode!r}: the pool must be multicast with 2+ usable groups")
    return "asm", str(net)


def usable_groups(pool: str) -> int:
    """Groups `random_group` can draw from the pool (first and last excluded)."""
    return int(ipaddress.ip_network(pool).num_addresses) - 2


def birthday(sessions: int, groups: int) -> float:
    """Expected number of sessions whose random group another of ``sessions``
    also drew, ``groups`` equally likely groups (the model)."""
    if sessions < 2 or groups < 1:
        return 0.0
    return sessions * (1.0 - (1.0 - 1.0 / groups) ** (sessions - 1))


def model_collisions(mode: str, pool: str, sessions: int, sns: int) -> float:
    """The model's colliding sessions: in ASM every session shares the pool;
    in SSM a channel is (source, group), so only sessions of one SN can collide."""
    n = usable_groups(pool)
    if mode == "ssm":
        per = sessions / max(1, sns)
        return sns * birthday(round(per), n)
    return birthday(sessions, n)
