"""Experiment 2's runner: each method measured on the emulated network (the
query through the searcher's API, SAP by a cold searcher polling its
directory), the simulation on generated topologies, and `run`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.lab import sim
from mcp2p.lab.daemons import Daemon
from mcp2p.lab.experiment import Context
from mcp2p.lab.experiments.discovery.model import (
    QUERY_DISCOVERY,
    check,
    sap_point,
    sap_sections,
)
from mcp2p.lab.experiments.discovery.network import DiscoveryLab
from mcp2p.lab.net import LabError, Network
from mcp2p.lab.progs import command


def _query_point(ctx: Context, lab: DiscoveryLab, files: int, p: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"method": "query", "files": files, "nodes": len(lab.sharers)}
    ctx.progress(f"query F={files}: {len(lab.sharers) * files} files, starting daemons")
    lab.share(files)
    searcher = lab.start({"discovery": QUERY_DISCOVERY}, files)
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


def _sap_point(ctx: Context, lab: DiscoveryLab, files: int, p: dict[str, Any]) -> dict[str, Any]:
    k = float(p["sap_speedup"])
    sections = sap_sections(k)
    point = sap_point(files, len(lab.sharers), sim.sap_ad_size(lab.target()), k)
    ctx.progress(f"sap F={files}: {point['ads']} announcements, starting daemons")
    lab.share(files)
    lab.start_sharers(sections, files)
    searcher: Daemon | None = None
    try:
        # Each announcer sends its first batch at the whole limit, one slot per ad.
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


def run(ctx: Context, **p: Any) -> dict[str, Any]:
    check(p)
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
            lab = DiscoveryLab(net, base, rings)
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
