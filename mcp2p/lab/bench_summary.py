"""The headline figures of ``make bench`` as one short table, from its JSON.

``python -m mcp2p.lab.bench_summary DIR``: reads what the benches wrote in
DIR and prints, for each figure that is there (a bench that was skipped,
say without root, leaves its rows out and says so):

- CPU per data packet, µs (user+sys): the mcp2p SN and CN daemons beside
  uftpd and udp-receiver on the same file (``bench-cpu.json``, from
  `mcp2p.lab.bench_cpu`), with the peak RSS of each receiver;
- the SN's CPU per packet to one unicast subscriber (``bench-sn.json``,
  `mcp2p.lab.bench_sn`);
- goodput of one CN on unshaped links (2 Gbit/s), mcp2p multicast beside
  udpcast and UFTP in one run of the lab's experiment 1
  (``unshaped/unicast.json``, `mcp2p.lab.experiments.unicast`), with the CN's
  CPU seconds;
- the SN's RSS against file size and against unicast sessions
  (``bench-sn.json``).

Nothing is measured here; every figure is the benches' own.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from mcp2p.lab.bench import median

CPU = "bench-cpu.json"
SN = "bench-sn.json"
UNSHAPED = "unshaped/unicast.json"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: float, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}{unit}"


def cpu_rows(data: Any) -> list[tuple[str, str]]:
    rows = []
    size = data.get("size", 0) / (1 << 20)
    by_role = {(r["tool"], r["role"]): r for r in data.get("rows", [])}
    parts = []
    for (tool, role), r in by_role.items():
        name = f"{tool} {role}" if tool == "mcp2p" else role.split("(")[-1].rstrip(")")
        shown = _fmt(r.get("us_per_packet", math.nan), 1, " µs") if r.get("ok") else "failed"
        parts.append(f"{name} {shown}")
    rows.append((f"CPU per data packet ({size:.0f} MiB, side by side)", ", ".join(parts)))
    rss = [
        f"{'mcp2p ' + r['role'] if r['tool'] == 'mcp2p' else r['tool']} "
        f"{_fmt(r.get('peak_rss_mb', math.nan), 0, ' MB')}"
        for r in data.get("rows", [])
        if r.get("ok")
    ]
    if rss:
        rows.append((f"peak RSS in that run ({size:.0f} MiB file)", ", ".join(rss)))
    return rows


def unshaped_rows(entry: Any) -> list[tuple[str, str]]:
    data = entry.get("data") if isinstance(entry, dict) else None
    if not data:
        why = (entry or {}).get("error", "no data") if isinstance(entry, dict) else "no data"
        return [("unshaped 1-CN goodput", "failed: " + str(why).strip().splitlines()[-1][:120])]
    size = data["params"]["size"] / (1 << 20)
    parts, cpu = [], []
    for tool in data["params"]["tools"]:
        runs = [r for r in data["runs"] if r["tool"] == tool]
        if tool in data.get("skipped", {}):
            parts.append(f"{tool} not run")
            continue
        ok = [r for r in runs if r.get("ok")]
        if not ok:
            parts.append(f"{tool} failed")
            continue
        good = median([8 * g for r in ok for g in r.get("goodput_mb_s", [])])
        parts.append(f"{tool} {_fmt(good, 0)} Mbit/s")
        cn = median([c for r in ok for c in r.get("cn_cpu_s") or [] if c is not None])
        cpu.append(f"{tool} {_fmt(cn, 2, ' s')}")
    link = data["params"]["link_mbit"]
    shaped = "unshaped" if link >= 1000 else "shaped"
    rows = [(f"1 CN goodput, {shaped} ({link} Mbit/s links, {size:.0f} MiB)", ", ".join(parts))]
    if cpu:
        rows.append(("  CN CPU over that copy", ", ".join(cpu)))
    return rows


def sn_rows(data: Any) -> list[tuple[str, str]]:
    rows = []
    if "cpu" in data:
        c = data["cpu"]
        rows.append(
            (
                f"SN CPU per packet, 1 unicast subscriber at {c.get('rate')}",
                _fmt(c.get("us_per_packet", math.nan), 1, " µs"),
            )
        )
    rss = data.get("rss") or []
    if rss:
        fewest = min(r["sessions"] for r in rss)
        by_size = [
            f"{r['size'] / (1 << 30):g} GiB {r['rss_mb']:.0f} MB"
            for r in rss
            if r["sessions"] == fewest
        ]
        rows.append((f"SN RSS vs file size ({fewest} session)", ", ".join(by_size)))
        largest = max(r["size"] for r in rss)
        by_n = [f"{r['sessions']}: {r['rss_mb']:.0f} MB" for r in rss if r["size"] == largest]
        rows.append((f"SN RSS vs sessions ({largest / (1 << 30):g} GiB file)", ", ".join(by_n)))
    return rows


def summary(directory: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    missing = []
    cpu = _load(directory / CPU)
    if cpu:
        rows += cpu_rows(cpu)
    else:
        missing.append("bench_cpu")
    sn = _load(directory / SN)
    if sn:
        rows += sn_rows(sn)
    else:
        missing.append("bench_sn")
    unshaped = _load(directory / UNSHAPED)
    if unshaped:
        rows += unshaped_rows(unshaped)
    else:
        missing.append("the unshaped 1-CN run")
    if missing:
        rows.append(("not measured (needs root, or failed)", ", ".join(missing)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print("usage: python -m mcp2p.lab.bench_summary DIR\n\n" + (__doc__ or "").strip())
        return 0
    if len(args) != 1:
        print("usage: python -m mcp2p.lab.bench_summary DIR", file=sys.stderr)
        return 2
    rows = summary(Path(args[0]))
    width = max(len(k) for k, _ in rows)
    print(f"\nmake bench: headline figures (JSON in {args[0]})")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
