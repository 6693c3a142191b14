"""The ini form of a `Topology`: `parse` / `load` read it, `to_ini` writes it.

The ini form (``;`` and ``#`` start comments)::

    [topology]
    name = tree                     ; also the directory name for `topo up`
    groups = 239.0.0.0/8, 232.0.0.0/8, ff05::/16, ff15::/16, ff3e::/32
    [host sn]
    [router r1]
    [switch lan1]                   ; a bridge: one subnet for its segment
    snooping = no                   ; IGMP/MLD snooping (default no: flood)
    subnet = 10.99.0.0/24           ; optional; default the next 10.77.x.0/24
    subnet6 = fd99::/64             ; optional; default the next fd77:0:0:x::/64
    [link sn-r1]                    ; or any label with  a = sn  and  b = r1
    rate = 100M                     ; bit/s, both directions (tc tbf)
    loss = 1%                       ; UDP dropped arriving at the b end
    loss_a = 0.5%                   ; ... at the a end (loss_b = same as loss)

Errors (`TopologyError`) name the source, the section and the key.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp2p.config import parse_rate
from mcp2p.lab.net.topology import (
    DEFAULT_GROUPS,
    NAME_RE,
    LinkSpec,
    NodeSpec,
    Topology,
    TopologyError,
    group_prefix,
)

__all__ = ["format_loss", "format_rate", "load", "parse", "parse_loss", "to_ini"]


def parse_loss(raw: str) -> float:
    """``0.01`` or ``1%``: a fraction in [0, 1] (ValueError otherwise)."""
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError("a fraction (0.01) or a percentage (1%) in [0, 1]") from None
    if not 0 <= value <= 1:
        raise ValueError("a fraction (0.01) or a percentage (1%) in [0, 1]")
    return round(value, 6)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("one of yes, no")


def _net(cls: Callable[[str], Any]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        return str(cls(raw.strip()))

    return parse


_KEYS: dict[str, tuple[str, ...]] = {
    "topology": ("name", "groups"),
    "host": (),
    "router": (),
    "switch": ("snooping", "subnet", "subnet6"),
    "link": ("a", "b", "rate", "loss", "loss_a", "loss_b"),
}


def parse(text: str, source: str = "<string>") -> Topology:
    """A `Topology` from its ini text; errors name ``source``, section and key."""
    cp = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        default_section="\0",
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),
    )
    try:
        cp.read_string(text, source=source)
    except configparser.Error as e:
        raise TopologyError(f"{source}: " + " ".join(str(e).split())) from None

    def err(section: str, key: str | None, msg: str) -> TopologyError:
        where = f"[{section}] {key}: " if key else f"[{section}]: "
        return TopologyError(f"{source}: {where}{msg}")

    def value(section: str, key: str, conv: Callable[[str], Any]) -> Any:
        try:
            return conv(cp[section][key])
        except ValueError as e:
            raise err(section, key, f"{cp[section][key].strip()!r}: {e}") from None

    name: str | None = None
    groups = DEFAULT_GROUPS
    nodes: list[NodeSpec] = []
    link_sections: list[tuple[str, str]] = []
    for section in cp.sections():
        words = section.split()
        kind = words[0] if words else ""
        if kind not in _KEYS or (kind == "topology") != (len(words) == 1) or len(words) > 2:
            raise err(
                section, None,
                "unknown section: expected [topology], [host NAME], [router NAME], "
                "[switch NAME] or [link A-B]",
            )  # fmt: skip
        unknown = [k for k in cp[section] if k not in _KEYS[kind]]
        if unknown:
            allowed = ", ".join(_KEYS[kind]) or "none"
            raise err(section, unknown[0], f"unknown key (allowed in [{kind}]: {allowed})")
        if kind == "topology":
            if "name" not in cp[section]:
                raise err(section, "name", "missing")
            name = cp[section]["name"].strip()
            if not NAME_RE.match(name):
                raise err(section, "name", f"{name!r}: a letter, then letters, digits or _")
            if "groups" in cp[section]:
                items = [g for g in re.split(r"[,\s]+", cp[section]["groups"]) if g]
                try:
                    groups = tuple(str(group_prefix(g)) for g in items)
                except TopologyError as e:
                    raise err(section, "groups", str(e)) from None
        elif kind == "link":
            link_sections.append((section, words[1]))
        else:
            node_name = words[1]
            if not NAME_RE.match(node_name):
                msg = f"bad node name {node_name!r}: a letter, then letters, digits or _"
                raise err(section, None, msg)
            if any(n.name == node_name for n in nodes):
                raise err(section, None, f"duplicate node name {node_name!r}")
            opts: dict[str, Any] = {}
            if "snooping" in cp[section]:
                opts["snooping"] = value(section, "snooping", _bool)
            if "subnet" in cp[section]:
                opts["subnet"] = value(section, "subnet", _net(ipaddress.IPv4Network))
            if "subnet6" in cp[section]:
                opts["subnet6"] = value(section, "subnet6", _net(ipaddress.IPv6Network))
            nodes.append(NodeSpec(node_name, kind, **opts))
    if name is None:
        raise TopologyError(f"{source}: no [topology] section (with name = ...)")
    known = {n.name for n in nodes}
    links: list[LinkSpec] = []
    pairs: dict[frozenset[str], str] = {}
    for section, label in link_sections:
        s = cp[section]
        if "a" in s or "b" in s:
            if "a" not in s or "b" not in s:
                raise err(section, "b" if "a" in s else "a", "missing (give both a and b)")
            a, b = s["a"].strip(), s["b"].strip()
        else:
            ends = label.split("-")
            if len(ends) != 2 or not all(ends):
                raise err(section, None, "name the link A-B, or give a = A and b = B")
            a, b = ends
        for key, end in (("a", a), ("b", b)):
            if end not in known:
                known_list = ", ".join(sorted(known))
                raise err(
                    section,
                    key if key in s else None,
                    f"unknown node {end!r} (nodes: {known_list})",
                )
        if a == b:
            raise err(section, None, "a node cannot link to itself")
        pair = frozenset((a, b))
        if pair in pairs:
            raise err(section, None, f"duplicate link between {a} and {b} (also [{pairs[pair]}])")
        pairs[pair] = section
        if "loss" in s and "loss_b" in s:
            raise err(section, "loss_b", "give loss or loss_b (both mean the b end)")
        rate = value(section, "rate", parse_rate) if "rate" in s else None
        loss_b_key = "loss_b" if "loss_b" in s else "loss"
        links.append(
            LinkSpec(
                a, b, rate,
                value(section, "loss_a", parse_loss) if "loss_a" in s else 0.0,
                value(section, loss_b_key, parse_loss) if loss_b_key in s else 0.0,
            )
        )  # fmt: skip
    try:
        return Topology(name, tuple(nodes), tuple(links), groups)
    except TopologyError as e:
        raise TopologyError(f"{source}: {e}") from None


def load(path: str | os.PathLike[str]) -> Topology:
    """`parse` the file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TopologyError(f"{path}: cannot read: {e}") from None
    return parse(text, source=str(path))


def format_rate(rate: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if rate % div == 0:
            return f"{rate // div}{unit}"
    return str(rate)


def format_loss(loss: float) -> str:
    return f"{loss * 100:.6g}%"


def to_ini(t: Topology, comment: str = "") -> str:
    """The ini form of ``t``; `parse` gives ``t`` back."""
    lines = [f"# {line}".rstrip() for line in comment.strip().splitlines()] if comment else []
    if lines:
        lines.append("")
    lines += ["[topology]", f"name = {t.name}", f"groups = {', '.join(t.groups)}", ""]
    for n in t.nodes:
        lines.append(f"[{n.kind} {n.name}]")
        if n.snooping:
            lines.append("snooping = yes")
        if n.subnet:
            lines.append(f"subnet = {n.subnet}")
        if n.subnet6:
            lines.append(f"subnet6 = {n.subnet6}")
    lines.append("")
    for link in t.links:
        lines.append(f"[link {link.a}-{link.b}]")
        if link.rate is not None:
            lines.append(f"rate = {format_rate(link.rate)}")
        if link.loss_b:
            lines.append(f"loss = {format_loss(link.loss_b)}")
        if link.loss_a:
            lines.append(f"loss_a = {format_loss(link.loss_a)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
