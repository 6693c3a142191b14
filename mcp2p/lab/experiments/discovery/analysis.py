"""Experiment 2's analysis of recorded points (from the JSON only): one row
per measured point of each method, with the figures the report tabulates
and the model's prediction beside them."""

from __future__ import annotations

import math
import random
from typing import Any

from mcp2p.core.sapinterval import equilibrium_phase
from mcp2p.lab import sim


def _per_min(nbytes: float, seconds: float) -> float:
    return 60.0 * nbytes / seconds if seconds > 0 else math.nan


def _ok(points: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [q for q in points if q.get("method") == method and "failed" not in q]


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
