"""Experiment 3's analysis of recorded points (from the JSON only, no
namespaces): fetch rows, collisions, the birthday model on the measured
lifetimes, unwanted packets, completion times, concurrency, and the summary
row per (mode, S) that the report tabulates."""

from __future__ import annotations

import math
from typing import Any

from mcp2p.lab.experiment import spread
from mcp2p.lab.experiments.groups.model import (
    FETCH_FIELDS,
    model_collisions,
    parse_mode,
    usable_groups,
)


def healthy(point: dict[str, Any]) -> bool:
    """Every fetch verified and every session ended by the end of the run."""
    if "failed" in point or point.get("leftover_sessions"):
        return False
    return all(row[2] for row in point.get("fetches", []))


def fetch_rows(point: dict[str, Any]) -> list[dict[str, Any]]:
    fields = point.get("fetch_fields", FETCH_FIELDS)
    return [dict(zip(fields, row, strict=False)) for row in point.get("fetches", [])]


def collisions(point: dict[str, Any]) -> int:
    """Sessions that started on a group another session of the run used at an
    overlapping time (lifetimes: post to delivery). In SSM a channel is
    (SN, group), so two SNs on one group do not collide."""
    rows = [r for r in fetch_rows(point) if r["groups"]]
    ssm = point.get("group_mode") == "ssm"
    spans = []
    for r in rows:
        end = r["start"] + (r["elapsed"] if r["elapsed"] is not None else 1e9)
        key = (r["sn"], r["groups"][0]) if ssm else r["groups"][0]
        spans.append((key, r["start"], end))
    hit: set[int] = set()
    by_key: dict[Any, list[int]] = {}
    for i, (key, _, _) in enumerate(spans):
        by_key.setdefault(key, []).append(i)
    for idx in by_key.values():
        for a in idx:
            for b in idx:
                if a < b and spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]:
                    hit.update((a, b))
    return len(hit)


def model_overlap(point: dict[str, Any]) -> float:
    """The birthday model on the measured lifetimes: each session collides with
    probability 1 - (1 - 1/N)^k, k the sessions alive with it at some time (in
    SSM only those of its own SN)."""
    n = point["groups_in_pool"]
    ssm = point.get("group_mode") == "ssm"
    spans = []
    for r in fetch_rows(point):
        if r["groups"]:
            end = r["start"] + (r["elapsed"] if r["elapsed"] is not None else 1e9)
            spans.append((r["sn"], r["start"], end))
    total = 0.0
    for i, (sn, a0, a1) in enumerate(spans):
        k = sum(
            1
            for j, (sn2, b0, b1) in enumerate(spans)
            if j != i and a0 < b1 and b0 < a1 and (not ssm or sn2 == sn)
        )
        total += 1.0 - (1.0 - 1.0 / n) ** k
    return total


def _cn_names(point: dict[str, Any]) -> list[str]:
    return [n for n in point["hosts"] if n.startswith("cn")]


def unwanted(point: dict[str, Any]) -> dict[str, float]:
    """Data packets that reached hosts which wanted none of them: on a CN, all
    arrivals minus those of its own sessions; on an SN, every data arrival
    (an SN wants no data; in ASM its monitor's joins pull other sessions in)."""
    hosts = point["hosts"]
    cns = _cn_names(point)
    cn_pk = [max(0, hosts[n]["data_rx_packets"] - hosts[n]["own_packets"]) for n in cns]
    cn_by = []
    for n, pk in zip(cns, cn_pk, strict=True):
        size = hosts[n]["data_rx_bytes"] / hosts[n]["data_rx_packets"] if pk else 0
        cn_by.append(pk * size)
    sn_pk = [v["data_rx_packets"] for n, v in hosts.items() if n.startswith("sn")]
    foreign = [
        sum(r["foreign"] for r in fetch_rows(point) if r["cn"] == j) for j in range(len(cns))
    ]
    return {
        "cn_packets": sum(cn_pk) / max(1, len(cns)),
        "cn_bytes": sum(cn_by) / max(1, len(cns)),
        "cn_foreign": sum(foreign) / max(1, len(cns)),
        "sn_packets": sum(sn_pk) / max(1, len(sn_pk)),
        "all_packets": float(sum(cn_pk) + sum(sn_pk)),
    }


def completion(point: dict[str, Any]) -> list[float]:
    return [r["elapsed"] for r in fetch_rows(point) if r["ok"] and r["elapsed"] is not None]


def concurrency(point: dict[str, Any]) -> int:
    """The most fetches alive at one time (post to delivery)."""
    marks = []
    for r in fetch_rows(point):
        if r["elapsed"] is not None:
            marks += [(r["start"], 1), (r["start"] + r["elapsed"], -1)]
    level = peak = 0
    for _, d in sorted(marks):
        level += d
        peak = max(peak, level)
    return peak


def good(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points that ran (neither failed nor skipped)."""
    return [p for p in points if "failed" not in p and "skipped" not in p]


def _cell(data: dict[str, Any], mode: str, s: int) -> list[dict[str, Any]]:
    return [p for p in good(data["points"]) if p["mode"] == mode and p["sessions"] == s]


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (mode, S): lists over the repetitions."""
    out = []
    for mode in data["modes"]:
        for s in data["sessions"]:
            pts = _cell(data, mode, s)
            failed = [
                p
                for p in data["points"]
                if p["mode"] == mode and p["sessions"] == s and "failed" in p
            ]
            if not pts and not failed:
                continue
            gm, pool = parse_mode(mode)
            rows = [fetch_rows(p) for p in pts]
            needed = [sum(h.get("needed_packets", 0) for h in p["hosts"].values()) for p in pts]
            sn_cpu = [
                sum(v["cpu"] for n, v in p["hosts"].items() if n.startswith("sn")) for p in pts
            ]
            out.append({
                "mode": mode,
                "pool": pool,
                "groups": usable_groups(pool),
                "sessions": s,
                "reps": len(pts),
                "failed_runs": len(failed),
                "model": model_collisions(gm, pool, s, data["sns"]),
                "model_overlap": [model_overlap(p) for p in pts],
                "collisions": [collisions(p) for p in pts],
                "moves": [p["moves"] for p in pts],
                "moved_events": [sum(h.get("moved_events", 0) for h in p["hosts"].values())
                                 for p in pts],
                "foreign_cn": [unwanted(p)["cn_foreign"] for p in pts],
                "unwanted_cn": [unwanted(p)["cn_packets"] for p in pts],
                "unwanted_cn_kb": [unwanted(p)["cn_bytes"] / 1000 for p in pts],
                "unwanted_sn": [unwanted(p)["sn_packets"] for p in pts],
                "unwanted_all": [unwanted(p)["all_packets"] for p in pts],
                "completion": [x for p in pts for x in completion(p)],
                "completion_median": [spread(completion(p))[0] for p in pts],
                # (sessions that never ended never logged what they sent)
                "sent_per_needed": [p["sent_packets"] / n
                                    if n and not p.get("leftover_sessions") else math.nan
                                    for p, n in zip(pts, needed, strict=True)],
                "sn_cpu_per_session": [c / s for c in sn_cpu],
                "peak": [concurrency(p) for p in pts],
                "verified": sum(1 for r in rows for f in r if f["ok"]),
                "fetches": sum(len(r) for r in rows),
            })  # fmt: skip
    return out
