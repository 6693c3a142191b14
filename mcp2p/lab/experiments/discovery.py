"""Experiment 2, query or announcement: time to find a file and discovery bytes.

Emulation (real ``twistd mcp2p`` daemons in namespaces): a searcher ``s``
and sharing nodes at hop distances ``rings`` (1: on the searcher's LAN, a
switch; k >= 2: behind k - 1 smcroute routers in a chain), each sharing F
tiny files. Method ``query``: the searcher asks its daemon's API
(``POST /api/search``, answers 1) for one file of the farthest node; per
search the daemon's own ``elapsed`` and the bytes on every link (veth
counters before and after), plus the idle bytes per minute on every link
when nobody searches. Method ``sap``: every node announces each of its
files (one SAP/SDP packet per file, `mcp2p.discovery.sap.SAPAnnouncer`) at
RFC 2974's rate, run ``sap_speedup`` = k times faster than the RFC (limit
4000 k bit/s, minimum interval 300/k s) so that the lab's minutes stand
for k times as many real ones; once the announcers are past their first
batch, a searcher daemon is started cold and polls its SAP directory
until the farthest node's file is there (time to find, from its API being
up); the bytes on every link are counted over the whole measured window.
Times and bytes are reported as measured and scaled back to the RFC (time
times k, bytes divided by k).

Simulation (`mcp2p.lab.sim`): the same ring search and interval rule on
generated topologies of ``sim_peers`` nodes, ``sim_files`` files per node.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.core.sapinterval import (
    DEFAULT_BANDWIDTH_LIMIT_BPS,
    DEFAULT_MIN_INTERVAL,
    announcement_interval,
    equilibrium_phase,
)
from mcp2p.lab import sim
from mcp2p.lab.daemons import Daemon, start_all
from mcp2p.lab.experiment import (
    Context,
    Param,
    ReportOut,
    Section,
    fmt_spread,
    md_table,
    median,
    spread,
)
from mcp2p.lab.net import Host, LabError, Network, Router, counter_delta
from mcp2p.lab.progs import command

NAME = "discovery"
TITLE = "Query or announcement"
QUESTION = (
    "Time to find a file and discovery bytes per minute on every link, against the number "
    "of shared files and nodes, for the hop-limited query and for SAP/SDP."
)
PARAMS = {
    "rings": Param([1, 2, 3], [1, 2, 3], [2], "hop distance of each sharing node (1: same LAN)"),
    "files": Param([10, 100, 1000, 10000], [10, 1000], [10], "files per node, query method"),
    "sap_files": Param([10, 100, 300, 1000], [10, 100], [10], "files per node, SAP method"),
    "sap_speedup": Param(
        100, 100, 100, "SAP at k x RFC 2974: limit 4000k bit/s, min interval 300/k"
    ),
    "sap_timeout": Param(90.0, 30.0, 12.0, "seconds a cold searcher may wait for the files"),
    "sap_targets": Param(5, 3, 1, "files of the farthest node a cold searcher waits for"),
    "idle": Param(10.0, 3.0, 2.0, "seconds of idle query-method traffic measured"),
    "sim_peers": Param(
        [1000, 10_000, 100_000, 1_000_000], [1000, 10_000, 100_000], [1000], "simulated nodes"
    ),
    "sim_files": Param([10, 1000, 100_000], [10, 1000, 100_000], [10, 1000], "files per node"),
    "sim_kinds": Param(["ba", "tree"], ["ba"], ["ba"], "router graphs: ba, tree"),
    "sim_samples": Param(20, 10, 5, "sampled searches per simulated point"),
    "lan_size": Param(10, 10, 10, "simulated nodes per LAN"),
    "searches_per_node_hour": Param(1.0, 1.0, 1.0, "simulated searches per node per hour"),
}

READY_TIMEOUT = 120.0


# --------------------------------------------------------------------------
# the emulated network


class _Lab:
    """Searcher ``s``, sharers ``n1..`` at the given ring distances."""

    def __init__(self, net: Network, root: Path, rings: list[int]) -> None:
        self.net = net
        self.root = root
        self.rings = rings
        self.s = net.add_host("s")
        routers = [net.add_router(f"r{i + 1}") for i in range(max(rings) - 1)]
        self.sharers: list[Host] = []
        ring1 = [i for i, r in enumerate(rings) if r == 1]
        hosts = {i: net.add_host(f"n{i + 1}") for i in range(len(rings))}
        if ring1:
            sw = net.add_switch("sw")
            net.link(self.s, sw)
            for i in ring1:
                net.link(hosts[i], sw)
            if routers:
                net.link(routers[0], sw)
        else:
            net.link(self.s, routers[0])
        for left, right in zip(routers, routers[1:], strict=False):
            net.link(left, right)
        for i, r in enumerate(rings):
            if r >= 2:
                net.link(hosts[i], routers[r - 2])
        net.route()
        for node in net.nodes.values():
            node.wait_ready()
        for router in routers:
            router.forward_multicast_all(["239.0.0.0/8"])
        self.sharers = [hosts[i] for i in range(len(rings))]
        self.routers: list[Router] = routers
        self.made: dict[str, int] = {}
        self.daemons: list[Daemon] = []
        far = max(range(len(rings)), key=lambda i: rings[i])
        self.far = self.sharers[far]

    def target(self, index: int = 0) -> str:
        return f"{self.far.name}-{index:06d}.dat"

    def share(self, files: int) -> None:
        """Make every sharer's share hold exactly ``files`` tiny files."""
        for h in self.sharers:
            d = self.root / h.name / "share"
            d.mkdir(parents=True, exist_ok=True)
            have = self.made.get(h.name, 0)
            for i in range(have, files):
                (d / f"{h.name}-{i:06d}.dat").write_bytes(f"{h.name} {i}\n".encode())
            for i in range(files, have):
                (d / f"{h.name}-{i:06d}.dat").unlink(missing_ok=True)
            self.made[h.name] = files

    def links(self) -> list[tuple[str, str, str]]:
        """(name, end a, end b) of every link, ends as in `Network.link_counters`."""
        out = []
        for link in self.net.links:
            a, b = link.ends
            name = f"{a.node.name}-{b.node.name}"
            out.append((name, f"{a.node.name}:{a.name}", f"{b.node.name}:{b.name}"))
        return out

    def link_bytes(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
        delta = counter_delta(before, after)
        return {
            name: delta.get(a, {}).get("tx_bytes", 0) + delta.get(b, {}).get("tx_bytes", 0)
            for name, a, b in self.links()
        }

    def start(self, sections: dict[str, dict[str, str]], files: int) -> Daemon:
        """Start every sharer (waits for its scan) and the searcher; returns the searcher."""
        self.stop()
        pairs: list[tuple[Daemon, str | None]] = []
        for h in self.sharers:
            pairs.append((Daemon(h, self.root / h.name, **sections), f"sharing {files} files"))
        searcher = Daemon(self.s, self.root / "s", **sections)
        pairs.append((searcher, "sharing 0 files"))
        start_all(pairs, timeout=READY_TIMEOUT)
        self.daemons = [d for d, _ in pairs]
        return searcher

    def start_sharers(self, sections: dict[str, dict[str, str]], files: int) -> None:
        self.stop()
        pairs: list[tuple[Daemon, str | None]] = [
            (Daemon(h, self.root / h.name, **sections), f"sharing {files} files")
            for h in self.sharers
        ]
        start_all(pairs, timeout=READY_TIMEOUT)
        self.daemons = [d for d, _ in pairs]

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        self.daemons = []


# --------------------------------------------------------------------------
# the two methods on the emulated network


_QUERY = {"methods": "query", "answers_wanted": "1"}


def _query_point(ctx: Context, lab: _Lab, files: int, p: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"method": "query", "files": files, "nodes": len(lab.sharers)}
    ctx.progress(f"query F={files}: {len(lab.sharers) * files} files, starting daemons")
    lab.share(files)
    searcher = lab.start({"discovery": _QUERY}, files)
    try:
        net = lab.net
        far = lab.daemons[lab.sharers.index(lab.far)]
        q0 = _queries_heard(far)
        c0, t0 = net.link_counters(), time.monotonic()
        time.sleep(p["idle"])
        c1, t1 = net.link_counters(), time.monotonic()
        point["idle_seconds"] = t1 - t0
        point["idle_bytes"] = lab.link_bytes(c0, c1)
        # the query datagrams the farthest node heard meanwhile (the rest is IGMP/MLD)
        point["idle_queries"] = _queries_heard(far) - q0
        target = lab.target()
        runs = []
        for rep in range(1, ctx.reps + 1):
            ctx.progress(f"query F={files}", rep, ctx.reps)
            before = net.link_counters()
            wall = time.monotonic()
            try:
                res = searcher.api(
                    "POST", "/api/search", {"method": "query", "pattern": target, "answers": 1}
                )
                err = None
            except LabError as e:
                res, err = None, str(e)[:300]
            wall = time.monotonic() - wall
            after = net.link_counters()
            found = None
            if res:
                for s in res.get("servers", []):
                    if any(f["name"] == target for f in s.get("files", [])):
                        found = s.get("distance")
            runs.append({
                "elapsed": res.get("elapsed") if res else None,
                "wall": wall,
                "found": found is not None,
                "distance": found,
                "hop_limits": res.get("hop_limits") if res else None,
                "query_bytes": res.get("query_bytes") if res else None,
                "link_bytes": lab.link_bytes(before, after),
                "error": err,
            })  # fmt: skip
        point["runs"] = runs
    finally:
        lab.stop()
    return point


def _queries_heard(d: Daemon) -> int:
    try:
        stats = d.status().get("discovery", {}).get("query", {})
    except LabError:
        return -1
    return int(stats.get("received", 0))


def _sap_sections(k: float) -> dict[str, dict[str, str]]:
    return {
        "discovery": {"methods": "sap"},
        "sap": {
            "bandwidth_limit": str(int(DEFAULT_BANDWIDTH_LIMIT_BPS * k)),
            "min_interval": f"{max(0.1, DEFAULT_MIN_INTERVAL / k):g}",
        },
    }


def _sap_point(ctx: Context, lab: _Lab, files: int, p: dict[str, Any]) -> dict[str, Any]:
    k = float(p["sap_speedup"])
    sections = _sap_sections(k)
    limit = DEFAULT_BANDWIDTH_LIMIT_BPS * k
    ads = len(lab.sharers) * files
    ad = sim.sap_ad_size(lab.target())
    point: dict[str, Any] = {
        "method": "sap",
        "files": files,
        "nodes": len(lab.sharers),
        "ads": ads,
        "ad_size": ad,
        "speedup": k,
        "limit": limit,
        "min_interval": DEFAULT_MIN_INTERVAL / k,
        "interval": announcement_interval(ad, ads, limit, DEFAULT_MIN_INTERVAL / k),
    }
    ctx.progress(f"sap F={files}: {ads} announcements, starting daemons")
    lab.share(files)
    lab.start_sharers(sections, files)
    searcher: Daemon | None = None
    try:
        # Each announcer sends its first batch at the whole limit, one slot per ad.
        batch = files * 8.0 * ad / limit
        point["batch_wait"] = batch * 1.2 + 1.0
        time.sleep(point["batch_wait"])
        net = lab.net
        c0, t0 = net.link_counters(), time.monotonic()
        runs = []
        # Different files each rep: an announcer sends its batch in catalog order and
        # places the first repeats by position, so one fixed file would have a phase
        # locked to the moment the measurement starts. Several files per cold start
        # give several samples of the time to hear one.
        rng = random.Random(files)
        for rep in range(1, ctx.reps + 1):
            ctx.progress(f"sap F={files}", rep, ctx.reps)
            picks = rng.sample(range(files), min(files, int(p["sap_targets"])))
            targets = [lab.target(i) for i in picks]
            searcher = Daemon(lab.s, lab.root / "s", **sections)
            launched = time.time()
            searcher.start(ready="sharing 0 files")
            ready = time.time()
            assert searcher.port is not None
            cp = lab.s.run(
                command("sap_poller", str(searcher.root / "state"), str(searcher.port),
                        json.dumps(targets), str(ready + p["sap_timeout"])),
                timeout=p["sap_timeout"] + 30,
            )  # fmt: skip
            try:
                polled = json.loads(cp.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                polled = {"seen": {}, "polls": 0, "error": (cp.stderr or "")[-300:]}
            seen = polled.get("seen", {})
            times = [seen[t] - ready if t in seen else None for t in targets]
            runs.append({
                "targets": targets,
                "times": times,
                "found": all(t is not None for t in times),
                "startup": ready - launched,
                "polls": polled.get("polls"),
            })  # fmt: skip
            searcher.stop()
            searcher = None
        c1, t1 = net.link_counters(), time.monotonic()
        point["window"] = t1 - t0
        point["link_bytes"] = lab.link_bytes(c0, c1)
        with contextlib.suppress(LabError):
            point["announcer"] = lab.daemons[0].status().get("discovery")
        point["runs"] = runs
    finally:
        if searcher is not None:
            searcher.stop()
        lab.stop()
    return point


# --------------------------------------------------------------------------
# run


def _check(p: dict[str, Any]) -> None:
    rings = [int(r) for r in p["rings"]]
    if not rings or any(not 1 <= r <= 8 for r in rings):
        raise ValueError("rings must list hop distances in 1..8")
    for key in ("files", "sap_files", "sim_files", "sim_peers"):
        if any(int(x) < 1 for x in p[key]):
            raise ValueError(f"{key} must be >= 1")
    if max(p["files"], default=0) > 100_000 or max(p["sap_files"], default=0) > 100_000:
        raise ValueError("at most 100000 files per emulated node")
    if not 1 <= float(p["sap_speedup"]) <= 3000:
        raise ValueError("sap_speedup must be in [1, 3000]")
    if p["sap_timeout"] <= 0 or p["idle"] <= 0 or p["sap_targets"] < 1:
        raise ValueError("sap_timeout, idle and sap_targets must be > 0")
    for kind in p["sim_kinds"]:
        if kind not in sim.KINDS:
            raise ValueError(f"sim_kinds: {kind!r} is not one of {sim.KINDS}")
    if any(int(n) > 2_000_000 for n in p["sim_peers"]):
        raise ValueError("at most 2,000,000 simulated nodes")


def run(ctx: Context, **p: Any) -> dict[str, Any]:
    _check(p)
    rings = [int(r) for r in p["rings"]]
    files = sorted({int(f) for f in p["files"]})
    sap_files = sorted({int(f) for f in p["sap_files"]})
    t0 = time.monotonic()
    points: list[dict[str, Any]] = []
    shm = Path("/dev/shm")
    base = (
        Path(tempfile.mkdtemp(prefix="mcp2p-discovery-", dir=shm))
        if shm.is_dir() and os.access(shm, os.W_OK)
        else Path(tempfile.mkdtemp(prefix="mcp2p-discovery-", dir=ctx.subdir("files")))
    )
    emulation_seconds = 0.0
    try:
        with Network() as net:
            ctx.progress(f"building the network (rings {rings})")
            lab = _Lab(net, base, rings)
            try:
                for method, sizes, fn in (
                    ("query", files, _query_point),
                    ("sap", sap_files, _sap_point),
                ):
                    for f in sizes:
                        try:
                            points.append(fn(ctx, lab, f, p))
                        except (LabError, OSError, ValueError) as e:
                            points.append({"method": method, "files": f, "failed": str(e)[:500]})
            finally:
                lab.stop()
        emulation_seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)

    simulated = []
    t1 = time.monotonic()
    for kind in p["sim_kinds"]:
        for n in sorted(int(x) for x in p["sim_peers"]):
            for f in sorted(int(x) for x in p["sim_files"]):
                ctx.progress(f"simulating {kind} n={n} F={f}")
                simulated.append(
                    sim.simulate(
                        sim.SimParams(
                            kind=kind,
                            peers=n,
                            files_per_node=f,
                            lan_size=int(p["lan_size"]),
                            samples=int(p["sim_samples"]),
                            searches_per_node_hour=float(p["searches_per_node_hour"]),
                            seed=n + f,
                        )
                    )
                )
    return {
        "rings": rings,
        "nodes": len(rings),
        "reps": ctx.reps,
        "sap_speedup": float(p["sap_speedup"]),
        "sap_timeout": p["sap_timeout"],
        "sap_targets": p["sap_targets"],
        "idle": p["idle"],
        "ring_schedule": list(sim.RING_SCHEDULE),
        "ring_timeout": sim.RING_TIMEOUT,
        "query_size": sim.query_sizes()[0],
        "points": points,
        "sim": simulated,
        "sim_params": {
            "lan_size": p["lan_size"],
            "samples": p["sim_samples"],
            "searches_per_node_hour": p["searches_per_node_hour"],
        },
        "emulation_seconds": round(emulation_seconds, 1),
        "sim_seconds": round(time.monotonic() - t1, 1),
    }


# --------------------------------------------------------------------------
# analysis (from the JSON only)


def _per_min(nbytes: float, seconds: float) -> float:
    return 60.0 * nbytes / seconds if seconds > 0 else math.nan


def _ok(points: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [q for q in points if q.get("method") == method and "failed" not in q]


def _fmt_bytes(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f} {unit}"
    return f"{x:.0f} B"


def _fmt_time(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    units = (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))
    for unit, div in units:
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{1000 * x:.0f} ms"


def query_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    schedule = tuple(data["ring_schedule"])
    far = max(data["rings"])
    predicted, _ = sim.search_time(
        [float(far)], random.Random(0), schedule=schedule, timeout=data["ring_timeout"]
    )
    for q in _ok(data["points"], "query"):
        runs = q["runs"]
        per_link = [max(r["link_bytes"].values(), default=0) for r in runs]
        total = [sum(r["link_bytes"].values()) for r in runs]
        idle = q["idle_bytes"]
        rows.append({
            "files": q["files"],
            "total": q["files"] * q["nodes"],
            "times": [r["elapsed"] for r in runs if r["found"]],
            "found": sum(r["found"] for r in runs),
            "reps": len(runs),
            "rings": [len(r["hop_limits"] or []) for r in runs],
            "total_bytes": total,
            "max_link": per_link,
            "idle_max": _per_min(max(idle.values(), default=0), q["idle_seconds"]),
            "idle_queries": q.get("idle_queries"),
            "predicted": predicted,
        })  # fmt: skip
    return rows


def sap_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for q in _ok(data["points"], "sap"):
        k = q["speedup"]
        per_link = {n: _per_min(b, q["window"]) for n, b in q["link_bytes"].items()}
        times = [t for r in q["runs"] for t in r["times"] if t is not None]
        rows.append({
            "files": q["files"],
            "total": q["ads"],
            "k": k,
            "times": times,
            "times_rfc": [t * k for t in times],
            "found": len(times),
            "reps": sum(len(r["times"]) for r in q["runs"]),
            "interval": q["interval"],
            "predicted": q["interval"] * equilibrium_phase(0.5),
            "link_bpm": list(per_link.values()),
            "limit_bpm": 60.0 * q["limit"] / 8.0,
        })  # fmt: skip
    return rows


def report(data: dict[str, Any], out: ReportOut) -> Section:
    qrows, srows = query_rows(data), sap_rows(data)
    sims = data.get("sim", [])
    k = data.get("sap_speedup", 1.0)
    tables = []
    tables.append(
        "Emulated, hop-limited query (file on the farthest node; one search per rep):\n\n"
        + md_table(
            [
                "files/node",
                "files in all",
                "time to find",
                "model",
                "found",
                "rings",
                "bytes/search, all links",
                "bytes/search, busiest link",
                "idle B/min, busiest link",
                "query datagrams heard while idle",
            ],
            [
                [
                    r["files"],
                    r["total"],
                    fmt_spread([1000 * t for t in r["times"]], 0, " ms"),
                    _fmt_time(r["predicted"] or math.nan),
                    f"{r['found']}/{r['reps']}",
                    fmt_spread(r["rings"], 0),
                    fmt_spread(r["total_bytes"], 0),
                    fmt_spread(r["max_link"], 0),
                    f"{r['idle_max']:.0f}",
                    "-" if r["idle_queries"] is None else r["idle_queries"],
                ]
                for r in qrows
            ],
        )  # fmt: skip
    )
    tables.append(
        f"Emulated SAP at {k:g}x RFC 2974 (limit {4000 * k:.0f} bit/s, min interval "
        f"{300 / k:g} s); 'RFC' columns scale back (time x {k:g}, bytes / {k:g}):\n\n"
        + md_table(
            [
                "files/node",
                "announcements",
                "interval (lab)",
                "time to find (lab)",
                "model (lab)",
                "found",
                "time to find (RFC)",
                "B/min per link (lab)",
                "B/min per link (RFC)",
            ],
            [
                [
                    r["files"],
                    r["total"],
                    f"{r['interval']:.1f} s",
                    fmt_spread(r["times"], 1, " s"),
                    f"{r['predicted']:.1f} s",
                    f"{r['found']}/{r['reps']}",
                    fmt_spread(r["times_rfc"], 0, " s"),
                    fmt_spread(r["link_bpm"], 0),
                    fmt_spread([b / r["k"] for b in r["link_bpm"]], 0),
                ]
                for r in srows
            ],
        )  # fmt: skip
    )
    if sims:
        rate = data["sim_params"]["searches_per_node_hour"]
        tables.append(
            f"Simulated (RFC 2974 SAP, global scope; query at {rate:g} searches per node per "
            "hour; time to find: median (min-max) of the sampled searches):\n\n"
            + md_table(
                [
                    "graph",
                    "nodes",
                    "files/node",
                    "query: rare file",
                    "found",
                    "query: popular file",
                    "query B/min/link (rare, popular)",
                    "SAP: time to find",
                    "SAP B/min/link",
                    "sim s",
                ],
                [
                    [
                        s["kind"],
                        s["peers"],
                        s["files_per_node"],
                        _fmt_spread_time(s["query"]["rare"]["times"]),
                        f"{100 * s['query']['rare']['found']:.0f}%",
                        _fmt_spread_time(s["query"]["popular"]["times"]),
                        f"{_fmt_bytes(s['query']['rare']['bytes_per_min_link'])}, "
                        f"{_fmt_bytes(s['query']['popular']['bytes_per_min_link'])}",
                        _fmt_spread_time(s["sap"]["times"]),
                        _fmt_bytes(s["sap"]["bytes_per_min_link"]),
                        s["seconds"],
                    ]
                    for s in sims
                ],
            )  # fmt: skip
        )
    plots = [_plot_time(data, qrows, srows, out), _plot_bytes(data, qrows, srows, out)]
    failed = [q for q in data["points"] if "failed" in q]
    notes = [f"{q['method']} F={q['files']} failed: {q['failed']}" for q in failed]
    notes.append(
        "Where the simulation differs from the emulation: no loss or queueing, no CPU "
        "(catalog look-ups, SAP directory size), uniform per-hop delay, perfect multicast "
        "trees, one global SAP scope (mcp2p's default [sap] ttl is 15), the RFC's 4000 bit/s "
        "and 300 s instead of the lab's speed-up, and announcers in steady state."
    )
    return Section(
        setup=_setup(data),
        tables=tables,
        plots=plots,
        conclusion=_conclusion(data, qrows, srows),
        notes=notes,
    )


def _range(xs: list[float], unit: str = "") -> str:
    lo, hi = min(xs), max(xs)
    return f"{lo:.0f}{unit}" if f"{lo:.0f}" == f"{hi:.0f}" else f"{lo:.0f}-{hi:.0f}{unit}"


def _fmt_spread_time(xs: list[float | None]) -> str:
    med, lo, hi = spread([x for x in xs if x is not None])
    if math.isnan(med):
        return "-"
    if _fmt_time(lo) == _fmt_time(hi):
        return _fmt_time(med)
    return f"{_fmt_time(med)} ({_fmt_time(lo)}-{_fmt_time(hi)})"


def _setup(data: dict[str, Any]) -> str:
    rings = data["rings"]
    files = sorted({q["files"] for q in data["points"] if q["method"] == "query"})
    sap = sorted({q["files"] for q in data["points"] if q["method"] == "sap"})
    sims = data.get("sim", [])
    kinds = sorted({s["kind"] for s in sims})
    peers = sorted({s["peers"] for s in sims})
    sfiles = sorted({s["files_per_node"] for s in sims})
    return (
        f"Emulated: a searcher and {len(rings)} sharing node(s) at hop distances {rings} "
        "(1: same switch; k: behind k-1 smcroute routers), real `twistd mcp2p` daemons, "
        "unshaped veth links, no loss. Query: `POST /api/search` for one file of the "
        f"farthest node, answers 1, rings {data['ring_schedule']} every "
        f"{data['ring_timeout']} s, with files/node {files}; idle traffic over "
        f"{data['idle']} s. SAP: one announcement per file, RFC 2974 sped up "
        f"{data['sap_speedup']:g}x, files/node {sap}; a cold searcher daemon polls its "
        f"directory every 0.1 s for {data.get('sap_targets', 1)} random files of the farthest "
        f"node, for up to {data['sap_timeout']} s (each file one sample). {data['reps']} reps per "
        "point; bytes are veth counters (Ethernet frames) summed over both directions of "
        f"each link. Simulated: {', '.join(kinds)} router graphs with LANs of "
        f"{data['sim_params']['lan_size']} nodes, {peers} nodes, {sfiles} files/node "
        f"(Zipf), {data['sim_params']['samples']} sampled searches per point, driving "
        "`mcp2p.core.ring.RingSearch` and `mcp2p.core.sapinterval`. Emulation "
        f"{data['emulation_seconds']} s, simulation {data['sim_seconds']} s."
    )


def _plot_time(
    data: dict[str, Any], qrows: list[dict[str, Any]], srows: list[dict[str, Any]], out: ReportOut
) -> str:
    fig, ax = out.figure()
    if qrows:
        ax.plot([r["total"] for r in qrows], [median(r["times"]) for r in qrows], "o-",
                label="query, emulated")  # fmt: skip
    if srows:
        ax.plot([r["total"] for r in srows], [median(r["times_rfc"]) for r in srows], "s-",
                label="SAP, emulated (RFC-scaled)")  # fmt: skip
    for kind in sorted({s["kind"] for s in data.get("sim", [])}):
        pts = sorted(
            ((s["peers"] * s["files_per_node"], s) for s in data["sim"] if s["kind"] == kind),
            key=lambda xs: xs[0],
        )
        xs = [x for x, _ in pts]
        ax.plot(xs, [median(s["query"]["rare"]["times"]) for _, s in pts], "^:",
                label=f"query rare, sim {kind}")  # fmt: skip
        ax.plot(xs, [median(s["sap"]["times"]) for _, s in pts], "v:",
                label=f"SAP, sim {kind}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("files shared in all (nodes x files/node)")
    ax.set_ylabel("time to find (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return out.save(fig, "time")


def _plot_bytes(
    data: dict[str, Any], qrows: list[dict[str, Any]], srows: list[dict[str, Any]], out: ReportOut
) -> str:
    fig, (ax, bx) = out.figure(1, 2, figsize=(11, 4))
    if srows:
        ax.plot([r["total"] for r in srows],
                [median([b / r["k"] for b in r["link_bpm"]]) for r in srows], "s-",
                label="SAP (RFC-scaled), median link")  # fmt: skip
    if qrows:
        ax.plot([r["total"] for r in qrows], [max(r["idle_max"], 1.0) for r in qrows], "o-",
                label="query method idle: all traffic, busiest link")  # fmt: skip
    ax.set_title(f"emulated, {data['nodes']} sharing node(s)", fontsize=9)
    ax.set_xlabel("files shared in all")
    sims = data.get("sim", [])
    for kind in sorted({s["kind"] for s in sims}):
        for f in sorted({s["files_per_node"] for s in sims}):
            pts = sorted(
                (s for s in sims if s["kind"] == kind and s["files_per_node"] == f),
                key=lambda s: s["peers"],
            )
            xs = [s["peers"] for s in pts]
            bx.plot(xs, [s["query"]["rare"]["bytes_per_min_link"] for s in pts], "^:",
                    label=f"query rare, {kind}, F={f}")  # fmt: skip
            bx.plot(xs, [max(1.0, s["query"]["popular"]["bytes_per_min_link"]) for s in pts],
                    "x:", label=f"query popular, {kind}, F={f}")  # fmt: skip
            bx.plot(xs, [s["sap"]["bytes_per_min_link"] for s in pts], "v-",
                    label=f"SAP, {kind}, F={f}")  # fmt: skip
    rate = data.get("sim_params", {}).get("searches_per_node_hour", 0)
    bx.set_title(f"simulated, {rate:g} search per node per hour", fontsize=9)
    bx.set_xlabel("nodes")
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_ylabel("discovery bytes per minute per link")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=6)
    return out.save(fig, "bytes")


def _conclusion(
    data: dict[str, Any], qrows: list[dict[str, Any]], srows: list[dict[str, Any]]
) -> str:
    parts = []
    qt = [median(r["times"]) for r in qrows if r["times"]]
    st = [(r, median(r["times_rfc"])) for r in srows if r["times"]]
    if qt:
        idle_q = [r["idle_queries"] for r in qrows if r["idle_queries"] is not None]
        parts.append(
            f"On the emulated network the query found the file {max(data['rings'])} hop(s) "
            f"away in {_range([1000 * t for t in qt], ' ms')} with "
            f"{_range([r['total'] for r in qrows], ' files')} shared"
            + (
                f", and no query datagram crossed while nobody searched (the idle links "
                f"carried at most {max(r['idle_max'] for r in qrows):.0f} B/min of other traffic)"
                if idle_q and max(idle_q) == 0
                else ""
            )
        )
    if st:
        first, last = st[0], st[-1]
        floor = DEFAULT_MIN_INTERVAL / first[0]["k"]
        grows = last[0]["interval"] > floor * 1.01
        parts.append(
            ("; " if parts else "On the emulated network ")
            + f"a cold SAP directory needed {_fmt_time(first[1])} (RFC-scaled) to hear the "
            f"file among {first[0]['total']} announcements and {_fmt_time(last[1])} among "
            f"{last[0]['total']}"
            + (
                f" (the RFC interval grows with the announcements past the 300 s floor, "
                f"to {_fmt_time(last[0]['interval'] * last[0]['k'])})"
                if grows
                else " (all within the 300 s minimum interval)"
            )
            + ", while the median link carried "
            + _range([median([b / r["k"] for b in r["link_bpm"]]) for r, _ in st], " B/min")
            + f" of SAP (RFC-scaled; the cap is {60 * 4000 / 8:.0f} B/min plus headers)"
        )
    head = ("".join(parts) if parts else "No emulated point succeeded") + "."
    parts = [head]
    sims = data.get("sim", [])
    if sims:
        big = max(sims, key=lambda s: (s["peers"], s["files_per_node"]))
        q = big["query"]["rare"]
        sap_t = median(big["sap"]["times"])
        qbpm = q["bytes_per_min_link"]
        cross = (
            big["sap"]["bytes_per_min_link"] / qbpm * data["sim_params"]["searches_per_node_hour"]
            if qbpm > 0
            else math.inf
        )
        slower = sum(
            1 for x in sims if median(x["sap"]["times"]) > median(x["query"]["rare"]["times"])
        )
        parts.append(
            f"In the simulation at {big['peers']:,} nodes x {big['files_per_node']:,} files "
            f"({big['kind']}), the query found even a single-copy file in "
            f"{_fmt_time(median(q['times']))} ({100 * q['found']:.0f}% found), and its bytes "
            f"per link pass SAP's {_fmt_bytes(big['sap']['bytes_per_min_link'])}/min once each "
            f"node searches for rare files more than {cross:.2g} times an hour, while SAP "
            f"needed {_fmt_time(sap_t)} to hear a given file; SAP was slower to find than the "
            f"query in {slower} of {len(sims)} simulated points, so any crossover is in "
            "bandwidth, not in time to find."
        )
    return " ".join(parts)
