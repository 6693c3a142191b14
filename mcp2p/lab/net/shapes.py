"""The built-in topologies: star, chain and tree, sized and shaped by arguments.

Built-ins (the shipped ``etc/lab/{star,chain,tree}.ini`` are exactly the
defaults, see `BUILTINS`)::

    star(n=4, rate=100_000_000, loss=0.0)
        switch sw; hosts sn, cn1..cnN on it; rate on every link; loss
        into each CN (not into the SN)            (like transfer.StarLab)
    chain(k=3, rate=100_000_000, loss=0.0)
        segments (switches) s1..sk in a row joined by routers r1..r(k-1):
        h0 and h1 on s1, hi on si, so hi is i hops from h0 (behind i-1
        routers: a datagram from h0 needs TTL i); loss into h1..hk
    tree(per_subnet=2, rate=100_000_000, loss=0.01)
        root subnet: sn, cn1..cnP, routers r1 and r2;
        r1 -> lan1 (P CNs), r2 -> lan2 (P CNs, router r3), r3 -> lan3 (P CNs);
        loss on the links r1->lan1 and r3->lan3 (into the switch, so the
        whole subnet sees the same drops); lan3 is 2 routers from the SN

SPEC strings for the command line: `builtin` (``star``, ``star:8``,
``chain:3``, ``tree:1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp2p.lab.net.topology import LinkSpec, NodeSpec, Topology, TopologyError

__all__ = ["BUILTINS", "builtin", "chain", "star", "tree"]


def _shape(rate: int | None, loss: float) -> tuple[int | None, float]:
    if rate is not None and not 8000 <= rate <= 10**12:
        raise TopologyError(f"rate {rate} bit/s is not in [8000, 1e12]")
    if not 0 <= loss <= 1:
        raise TopologyError(f"loss {loss} is not a fraction in [0, 1]")
    return (int(rate) if rate is not None else None), round(float(loss), 6)


def _count(what: str, n: int, low: int = 1, high: int = 250) -> int:
    if not isinstance(n, int) or not low <= n <= high:
        raise TopologyError(f"{what} must be an integer in [{low}, {high}], not {n!r}")
    return n


def star(n: int = 4, rate: int | None = 100_000_000, loss: float = 0.0) -> Topology:
    """Switch ``sw`` with hosts ``sn`` and ``cn1``..``cnN``; ``rate`` on every
    link (both ways), ``loss`` of UDP into each CN."""
    n = _count("star: the number of CNs", n)
    rate, loss = _shape(rate, loss)
    cns = [f"cn{i}" for i in range(1, n + 1)]
    nodes = [NodeSpec("sn", "host"), *(NodeSpec(c, "host") for c in cns), NodeSpec("sw", "switch")]
    links = [LinkSpec("sw", "sn", rate), *(LinkSpec("sw", c, rate, 0.0, loss) for c in cns)]
    return Topology("star", tuple(nodes), tuple(links))


def chain(k: int = 3, rate: int | None = 100_000_000, loss: float = 0.0) -> Topology:
    """Hosts ``h0``..``hk`` where ``hi`` is i hops from ``h0``: switches
    ``s1``..``sk`` in a row, router ``ri`` between ``si`` and ``s(i+1)``;
    ``h0`` and ``h1`` on ``s1``, ``hi`` on ``si``. ``rate`` on every link,
    ``loss`` of UDP into ``h1``..``hk``."""
    k = _count("chain: the number of hops", k, 1, 64)
    rate, loss = _shape(rate, loss)
    nodes = [NodeSpec(f"h{i}", "host") for i in range(k + 1)]
    nodes += [NodeSpec(f"r{i}", "router") for i in range(1, k)]
    nodes += [NodeSpec(f"s{i}", "switch") for i in range(1, k + 1)]
    links = [LinkSpec("s1", "h0", rate), LinkSpec("s1", "h1", rate, 0.0, loss)]
    for i in range(1, k):
        links += [
            LinkSpec(f"s{i}", f"r{i}", rate),
            LinkSpec(f"r{i}", f"s{i + 1}", rate),
            LinkSpec(f"s{i + 1}", f"h{i + 1}", rate, 0.0, loss),
        ]
    return Topology("chain", tuple(nodes), tuple(links))


def tree(per_subnet: int = 2, rate: int | None = 100_000_000, loss: float = 0.01) -> Topology:
    """Four subnets: ``root`` (``sn``, P CNs, routers r1, r2), ``lan1``
    behind r1, ``lan2`` behind r2, ``lan3`` behind r3 which sits on lan2;
    P = ``per_subnet`` CNs on each (``cn1``.. in that order). ``rate`` on
    every link, ``loss`` of UDP into lan1 (from r1) and lan3 (from r3)."""
    p = _count("tree: CNs per subnet", per_subnet, 1, 60)
    rate, loss = _shape(rate, loss)
    subnets = ["root", "lan1", "lan2", "lan3"]
    cns = {s: [f"cn{i * p + j}" for j in range(1, p + 1)] for i, s in enumerate(subnets)}
    nodes = [NodeSpec("sn", "host")]
    nodes += [NodeSpec(c, "host") for s in subnets for c in cns[s]]
    nodes += [NodeSpec(r, "router") for r in ("r1", "r2", "r3")]
    nodes += [NodeSpec(s, "switch") for s in subnets]

    def hosts(sw: str) -> list[LinkSpec]:
        return [LinkSpec(sw, c, rate) for c in cns[sw]]

    links = [LinkSpec("root", "sn", rate), *hosts("root")]
    links += [LinkSpec("root", "r1", rate), LinkSpec("r1", "lan1", rate, 0.0, loss)]
    links += hosts("lan1")
    links += [LinkSpec("root", "r2", rate), LinkSpec("r2", "lan2", rate), *hosts("lan2")]
    links += [LinkSpec("lan2", "r3", rate), LinkSpec("r3", "lan3", rate, 0.0, loss)]
    links += hosts("lan3")
    return Topology("tree", tuple(nodes), tuple(links))


BUILTINS: dict[str, Callable[..., Topology]] = {"star": star, "chain": chain, "tree": tree}


def builtin(spec: str, rate: int | None = None, loss: float | None = None) -> Topology:
    """``star``, ``star:8``, ``chain:3``, ``tree:1``: a built-in with its size;
    ``rate``/``loss`` replace the built-in's defaults when given."""
    name, _, size = spec.partition(":")
    if name not in BUILTINS:
        raise TopologyError(f"{spec!r}: not an ini file nor a built-in ({', '.join(BUILTINS)})")
    args: list[int] = []
    if size:
        if not size.isdigit():
            raise TopologyError(f"{spec!r}: the size after ':' must be a number")
        args.append(int(size))
    kw: dict[str, Any] = {}
    if rate is not None:
        kw["rate"] = rate
    if loss is not None:
        kw["loss"] = loss
    return BUILTINS[name](*args, **kw)
