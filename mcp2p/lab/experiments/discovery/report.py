"""Experiment 2's report: the three tables (query, SAP, simulation), the two
plots, the setup and the conclusion of the REPORT.md section, from the
run's JSON via `analysis`."""

from __future__ import annotations

import math
from typing import Any

from mcp2p.core.sapinterval import DEFAULT_MIN_INTERVAL
from mcp2p.lab.experiment import ReportOut, Section, fmt_spread, md_table, median, spread
from mcp2p.lab.experiments.discovery.analysis import query_rows, sap_rows


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
