"""Transfer figures, measured on real daemons in namespaces (root only).

``python -m mcp2p.lab.bench_transfer [--size 200M] [--cns 1,4,8] [--reps 1]
[--quick] [--json FILE]``: one SN and N CNs on a switch (see
`mcp2p.lab.transfer`), every CN fetching the same file at once, for the
matrix

- network: ``unshaped`` (veths at whatever the CPUs manage; SN session
  rate 2G) and ``100M+1%`` (tbf at 100 Mbit/s on every link, both ways,
  and 1% random UDP loss into every CN; SN session rate 95M, under the
  link rate because tbf drops what exceeds it);
- CNs: 1, 4, 8;
- mode: multicast, unicast;
- code: plain, raptorq.

Per cell: the median goodput per CN (file size / that CN's fetch time,
MB/s = 10^6 bytes/s), the slowest CN's time, the SN's transmitted bytes
(its veth's counter: data, notices, TLS, discovery) / file size, and on
the shaped network the slowest time / the ideal time (file size / link
rate). With ``--reps`` > 1 each figure is the median over repetitions.

Defaults: a 200 MiB file and one repetition per cell, not three: the whole
matrix takes about 40 minutes on 2 cores (unicast to 8 CNs over one 100 Mbit/s
link needs 8 x 17 s at best, and cells whose transfers collapse run into
their timeout, 60 s + 3x the expected time, at most 600 s; their CNs are
killed and the cell is marked failed). ``--quick``: a 20 MiB file, 1 and 4
CNs (about 2 minutes). Prints a table and writes JSON (``--json FILE``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.config import parse_rate
from mcp2p.lab.bench import median, parse_size, write_json

NETWORKS = {
    # name: (link rate bit/s or None, loss fraction or None, SN session rate)
    "unshaped": (None, None, "2G"),
    "100M+1%": (100_000_000, 0.01, "95M"),
}
MODES = ("multicast", "unicast")
CODES = ("plain", "raptorq")


def cell_timeout(size: int, n: int, mode: str, link_rate: int | None) -> float:
    """Seconds a cell's fetch may take before its CNs are killed."""
    share = n if mode == "unicast" else 1  # unicast: the SN's link is shared n ways
    if link_rate:
        expected = size * 8 / link_rate * share
    else:
        expected = size / 10e6 * share  # 10 MB/s: well under what we measured
    return min(600.0, 60 + 3 * expected)


def summarize(runs: list[Any], link_rate: int | None) -> dict[str, Any]:
    size = runs[0].size
    out: dict[str, Any] = {
        "ok": all(r.ok for r in runs),
        "failures": [r.failures() for r in runs if not r.ok],
        "goodput_mb_s": median([median(r.goodputs) for r in runs]),
        "min_goodput_mb_s": median([min(r.goodputs) for r in runs]),
        "slowest_s": median([r.slowest for r in runs]),
        "sn_ratio": median([r.sn_ratio for r in runs]),
    }
    if link_rate:
        ideal = size * 8 / link_rate
        out["ideal_s"] = ideal
        out["slowest_vs_ideal"] = out["slowest_s"] / ideal
    return out


def fetch_once(lab: Any, n: int, mode: str, code: str, size: int, link_rate: int | None) -> Any:
    timeout = cell_timeout(size, n, mode, link_rate)
    result = lab.fetch(n, mode=mode, code=code, timeout=timeout)
    if any(w != w for w in (c.wall for c in result.cns)):
        for c in result.cns:
            c.error = c.error or f"killed after {timeout:.0f} s"
    time.sleep(0.5)  # the session ends with its last subscriber; let it
    return result


def failed_cell(error: str) -> dict[str, Any]:
    nan = float("nan")
    return {
        "ok": False,
        "failures": [error],
        "goodput_mb_s": nan,
        "min_goodput_mb_s": nan,
        "slowest_s": nan,
        "sn_ratio": nan,
    }


def report(args: argparse.Namespace, cells: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return {
        "config": {
            "size": args.size,
            "cns": args.cns,
            "reps": args.reps,
            "networks": {n: NETWORKS[n] for n in args.networks},
            "sn_rate": {n: args.sn_rate.get(n, NETWORKS[n][2]) for n in args.networks},
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "seconds": seconds,
        },
        "cells": cells,
        "goals": goals(cells),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mcp2p.lab.net import LabError, Network
    from mcp2p.lab.transfer import StarLab, make_file

    cells: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp2p-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        source = make_file(root / "source.bin", args.size)
        for network in args.networks:
            link_rate, loss, sn_rate = NETWORKS[network]
            with Network() as net:
                lab = StarLab(net, root / network, max(args.cns), rate=link_rate, loss=loss)
                lab.share(args.size, source=source)
                lab.start_sn(rate=args.sn_rate.get(network, sn_rate))
                try:
                    for n in args.cns:
                        for mode in MODES:
                            for code in args.codes:
                                cell = {"network": network, "cns": n, "mode": mode, "code": code}
                                try:
                                    runs = [
                                        fetch_once(lab, n, mode, code, args.size, link_rate)
                                        for _ in range(args.reps)
                                    ]
                                except LabError as e:  # the cell failed; the others may not
                                    cell.update(failed_cell(str(e)))
                                else:
                                    cell.update(summarize(runs, link_rate))
                                    cell["runs"] = [r.to_json() for r in runs]
                                cells.append(cell)
                                print(row(cell), flush=True)
                                if args.json:  # so far: a bench cut short keeps its cells
                                    write_json(
                                        args.json, report(args, cells, time.monotonic() - started)
                                    )
                finally:
                    lab.stop()  # the SN and the CN daemons
    return report(args, cells, time.monotonic() - started)


HEADER = (
    f"{'network':<9} {'CNs':>3} {'mode':<9} {'code':<7} {'MB/s/CN':>8} {'min':>6} "
    f"{'slowest s':>9} {'SN B/size':>9} {'vs ideal':>8}  ok"
)


def row(cell: dict[str, Any]) -> str:
    ideal = f"{cell['slowest_vs_ideal']:.2f}x" if "slowest_vs_ideal" in cell else "-"
    return (
        f"{cell['network']:<9} {cell['cns']:>3} {cell['mode']:<9} {cell['code']:<7} "
        f"{cell['goodput_mb_s']:>8.1f} {cell['min_goodput_mb_s']:>6.1f} "
        f"{cell['slowest_s']:>9.2f} {cell['sn_ratio']:>8.2f}x {ideal:>8}  "
        + ("yes" if cell["ok"] else "NO")
    )


def goals(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, checked against the multicast cells that exist."""
    out = []

    def cell(network: str, n: int, code: str) -> dict[str, Any] | None:
        for c in cells:
            if (c["network"], c["cns"], c["mode"], c["code"]) == (network, n, "multicast", code):
                return c
        return None

    for code in CODES:
        c = cell("unshaped", 1, code)
        if c:
            out.append(
                {
                    "goal": f"unshaped, 1 CN, {code}: >= 50 MB/s",
                    "measured": f"{c['goodput_mb_s']:.1f} MB/s",
                    "met": c["ok"] and c["goodput_mb_s"] >= 50,
                }
            )
        c = cell("unshaped", 8, code)
        if c:
            out.append(
                {
                    "goal": f"unshaped, 8 CNs, {code}: >= 22 MB/s each, SN bytes <= 1.10x",
                    "measured": f"min {c['min_goodput_mb_s']:.1f} MB/s, {c['sn_ratio']:.2f}x",
                    "met": c["ok"] and c["min_goodput_mb_s"] >= 22 and c["sn_ratio"] <= 1.10,
                }
            )
        c = cell("100M+1%", 8, code)
        if c:
            out.append(
                {
                    "goal": f"100M+1%, 8 CNs, {code}: all done within 1.10x the ideal time",
                    "measured": f"{c.get('slowest_vs_ideal', float('nan')):.2f}x",
                    "met": c["ok"] and c.get("slowest_vs_ideal", 99.0) <= 1.10,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcp2p.lab.bench_transfer", description=__doc__)
    p.add_argument("--size", default=None, help="file size (default 200M; --quick: 20M)")
    p.add_argument("--cns", default=None, help="CN counts, comma separated (default 1,4,8)")
    p.add_argument("--reps", type=int, default=1, help="repetitions per cell (default 1)")
    p.add_argument(
        "--networks",
        default=",".join(NETWORKS),
        help="networks: " + ", ".join(NETWORKS).replace("%", "%%"),
    )
    p.add_argument("--codes", default=",".join(CODES), help="block codes: plain, raptorq")
    p.add_argument(
        "--sn-rate",
        action="append",
        default=[],
        metavar="NETWORK=RATE",
        help="the SN's session rate on a network (default unshaped=2G, 100M+1%%=95M)",
    )
    p.add_argument("--quick", action="store_true", help="a small version: 20M, 1 and 4 CNs")
    p.add_argument("--dir", default=None, help="where to put files (default: the temp dir)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    args.size = parse_size(args.size or ("20M" if args.quick else "200M"))
    args.cns = [int(x) for x in (args.cns or ("1,4" if args.quick else "1,4,8")).split(",")]
    args.networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    args.codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    for n in args.networks:
        if n not in NETWORKS:
            p.error(f"unknown network {n!r}: expected one of {', '.join(NETWORKS)}")
    for c in args.codes:
        if c not in CODES:
            p.error(f"unknown code {c!r}: expected plain or raptorq")
    rates = {}
    for item in args.sn_rate:
        name, _, value = item.partition("=")
        if name not in NETWORKS:
            p.error(f"--sn-rate {item!r}: unknown network")
        parse_rate(value)
        rates[name] = value
    args.sn_rate = rates
    if args.reps < 1 or min(args.cns) < 1:
        p.error("--reps and every CN count must be at least 1")

    from mcp2p.lab.net import missing_requirements

    reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
    if reason:
        print(f"transfer benchmark skipped: {reason}", file=sys.stderr)
        return 0
    print(
        f"file {args.size / (1 << 20):.0f} MiB, CNs {args.cns}, {args.reps} repetition(s); "
        "MB = 10^6 bytes; ideal = file size / link rate",
        flush=True,
    )
    print(HEADER, flush=True)
    result = run(args)
    print()
    print(HEADER)
    for cell in result["cells"]:
        print(row(cell))
    print()
    for g in result["goals"]:
        print(f"{'met' if g['met'] else 'NOT met':<8} {g['goal']}: {g['measured']}")
    print(f"({result['config']['seconds']:.0f} s)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
