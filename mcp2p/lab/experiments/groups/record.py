"""Experiment 3's record of one run: the SN logs, the fetch drivers' output
files and the counter snapshots before and after, made into the point that
the run's JSON keeps (text, files and dicts in, a dict out; no namespaces).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from mcp2p.lab.experiments.groups.model import BLOCK, FETCH_FIELDS, parse_mode, usable_groups
from mcp2p.lab.net import counter_delta

# What an SN logs of a session (mcp2p.transfer.serving and .session).
_SUB_RE = re.compile(r"subscription \d+ from \w*: (\S+) by multicast, session ([0-9a-f]{8})")
_MOVE_RE = re.compile(r"session ([0-9a-f]{8}) moved from (\S+) to (\S+):")
_END_RE = re.compile(r"session ([0-9a-f]{8}) ended \((.*?)\): (\d+) packets, (\d+) bytes")


def sn_sessions(logs: list[str]) -> tuple[dict[str, str], set[str]]:
    """From the SNs' log text of one run: the multicast sessions started
    (session id -> file name) and the ids of those that ended."""
    subscribed = {sid: name for text in logs for name, sid in _SUB_RE.findall(text)}
    ended = {sid for text in logs for sid, *_ in _END_RE.findall(text)}
    return subscribed, ended


def driver_output(out_file: Path, names: list[str]) -> list[dict[str, Any]]:
    """What a CN's fetch driver wrote (one dict per fetch), or a failed fetch
    per name when it wrote nothing readable."""
    try:
        fetches = json.loads(out_file.read_text())
    except (OSError, ValueError):
        return [
            {"name": n, "state": "failed", "events": [], "error": "no driver output"} for n in names
        ]
    return list(fetches)


def point(
    *,
    mode: str,
    sessions: int,
    rep: int,
    files: dict[str, tuple[int, Path]],
    file_kib: int,
    per_cn: list[list[str]],
    outs: list[tuple[Path, Path]],
    logs: list[str],
    subscribed: dict[str, str],
    sn_names: list[str],
    cn_names: list[str],
    before: dict[str, Any],
    after: dict[str, Any],
    go: float,
    wall: float,
    errors: list[str],
) -> dict[str, Any]:
    """The point of one run. ``files``: file name -> (SN index, source path);
    ``per_cn[j]``: the names CN j fetched into ``outs[j]`` = (its download
    directory, its driver's output file); ``logs``: each SN's log of the run;
    ``before``/``after``: snapshots ({"links", "data", "cpu"} per host name);
    ``go``: the wall-clock time the fetches were released."""
    group_mode, pool = parse_mode(mode)
    rows = []
    cn_needed = [0] * len(cn_names)
    cn_own = [0] * len(cn_names)
    cn_moved = [0] * len(cn_names)
    for j, (out_dir, out_file) in enumerate(outs):
        for f in driver_output(out_file, per_cn[j]):
            sn, src = files[f["name"]]
            events = f.get("events", [])
            done = next((e for e in events if e.get("event") == "done"), None)
            groups = [e["group"] for e in events if e.get("event") in ("subscribed", "moved")]
            cn_moved[j] += sum(1 for e in events if e.get("event") == "moved")
            recv = (done or {}).get("receivers") or []
            tot = {k: sum(int(r.get(k, 0)) for r in recv) for k in ("packets", "foreign",
                   "accepted", "lost", "malformed")}  # fmt: skip
            cn_own[j] += tot["packets"] - tot["foreign"] - tot["malformed"]
            cn_needed[j] += math.ceil(file_kib * 1024 / BLOCK)
            got = out_dir / f["name"]
            ok = bool(
                done is not None
                and got.is_file()
                and got.stat().st_size == src.stat().st_size
                and got.read_bytes() == src.read_bytes()
            )
            error = f.get("error", "")
            if not error and not ok:
                failed = next((e for e in events if e.get("event") == "failed"), None)
                error = (failed or {}).get("error") or f.get("result") or "not verified"
            drops = [e.get("reason", "") for e in events if e.get("event") == "source_dropped"]
            if drops:
                error += " (SN dropped: " + "; ".join(sorted(set(drops))) + ")"
            rows.append([
                j, sn, ok, round(f.get("t_post", go) - go, 3),
                round(float(done["elapsed"]), 3) if done else None, groups,
                tot["packets"], tot["foreign"], tot["accepted"], tot["lost"], error[:200],
            ])  # fmt: skip
    moves = sum(len(_MOVE_RE.findall(text)) for text in logs)
    ended = [m for text in logs for m in _END_RE.findall(text) if m[0] in subscribed]
    links = counter_delta(before["links"], after["links"])
    hosts = {}
    for name in sn_names + cn_names:
        link = links.get(name, {})
        b, a = before["data"][name], after["data"][name]
        hosts[name] = {
            "data_rx_packets": a[0] - b[0],
            "data_rx_bytes": a[1] - b[1],
            "looped_back": a[2] - b[2],
            "rx_packets": link.get("rx_packets", 0),
            "rx_bytes": link.get("rx_bytes", 0),
            "tx_packets": link.get("tx_packets", 0),
            "tx_bytes": link.get("tx_bytes", 0),
            "cpu": round(after["cpu"].get(name, 0.0) - before["cpu"].get(name, 0.0), 2),
        }
    for j, name in enumerate(cn_names):
        hosts[name]["own_packets"] = cn_own[j]
        hosts[name]["needed_packets"] = cn_needed[j]
        hosts[name]["moved_events"] = cn_moved[j]
    return {
        "mode": mode,
        "group_mode": group_mode,
        "pool": pool,
        "groups_in_pool": usable_groups(pool),
        "sessions": sessions,
        "rep": rep,
        "wall": round(wall, 2),
        "moves": moves,
        "sn_sessions": len(subscribed),
        "leftover_sessions": len(set(subscribed) - {m[0] for m in ended}),
        "sent_packets": sum(int(m[2]) for m in ended),
        "sent_bytes": sum(int(m[3]) for m in ended),
        "fetch_fields": FETCH_FIELDS,
        "fetches": rows,
        "hosts": hosts,
        "errors": errors,
    }
