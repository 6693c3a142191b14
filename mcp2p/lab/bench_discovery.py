"""Discovery figures, measured on real daemons.

``python -m mcp2p.lab.bench_discovery latency`` (root): for a node 1 and 3
hops away (a chain of namespaces with 0 and 2 smcroute routers), the
median search latency over ``--repeat`` searches and the query bytes each
search sent. ``python -m mcp2p.lab.bench_discovery rss --files 10000``: the
resident memory of a ``twistd mcp2p`` daemon sharing that many files, on
loopback. Prints a table and writes JSON (``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.api.client import ApiClient
from mcp2p.commands import twistd_node
from mcp2p.lab.bench import median, spread, wait_api, write_json
from mcp2p.lab.procstat import memory_kib


def node_ini(root: Path, interface: str, **discovery: str) -> str:
    lines = [
        "[node]",
        f"state_dir = {root / 'state'}",
        f"interface = {interface}",
        "[share]",
        f"paths = {root / 'share'}",
        "[discovery]",
        *(f"{k} = {v}" for k, v in discovery.items()),
        "[fetching]",
        f"download_dirs = {root / 'downloads'}",
        "[api]",
        "port = 0",
    ]
    return "\n".join(lines) + "\n"


def latency(args: argparse.Namespace) -> dict[str, Any]:
    from mcp2p.lab.net import Network

    out: dict[str, Any] = {}
    for routers in (0, 2):
        with tempfile.TemporaryDirectory() as tmp, Network() as net:
            root = Path(tmp)
            a, b = net.chain(routers)
            sn = root / "sn"
            (sn / "share").mkdir(parents=True)
            (sn / "share" / "bench.iso").write_bytes(os.urandom(4096))
            (sn / "node.ini").write_text(node_ini(sn, b.addr(), methods="query"))
            proc = b.popen(
                twistd_node(str(sn / "node.ini")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_api(sn / "state", proc)
            cn = root / "cn"
            cn.mkdir()
            (cn / "cn.ini").write_text(node_ini(cn, a.addr(), answers_wanted="1"))
            for mode in ("unicast", "multicast"):
                res = a.run(
                    [
                        sys.executable,
                        "-m",
                        "mcp2p.lab.probe",
                        "--config",
                        str(cn / "cn.ini"),
                        "--set",
                        f"discovery.reply_mode={mode}",
                        "*.iso",
                        "--repeat",
                        str(args.repeat),
                    ],
                    timeout=600,
                )
                if res.returncode != 0:
                    raise RuntimeError(res.stderr)
                data = json.loads(res.stdout.strip().splitlines()[-1])
                lat = [r["latency"] for r in data["runs"]]
                med, lo, hi = spread(lat)
                found = sum(1 for r in data["runs"] if r["servers"])
                out[f"{routers + 1} hops, {mode} replies"] = {
                    "median_ms": 1000 * med,
                    "min_ms": 1000 * lo,
                    "max_ms": 1000 * hi,
                    "query_bytes": data["query_bytes"],
                    "rings": median(len(r["hop_limits"]) for r in data["runs"]),
                    "found": f"{found}/{len(lat)}",
                }
            b.kill(proc)
    return out


def rss(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        share = root / "share"
        share.mkdir()
        for i in range(args.files):
            (share / f"file-{i:06d}.bin").write_bytes(i.to_bytes(8, "big") * 16)
        (root / "node.ini").write_text(node_ini(root, "127.0.0.1", query_port="27711"))
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                *twistd_node(str(root / "node.ini")),
                "--set",
                "sap.port=29875",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = wait_api(root / "state", proc)
            while True:
                status = ApiClient(root / "state", port=port).call("GET", "/api/status")
                if status["shared_files"] == args.files:
                    break
                if time.monotonic() - started > 300:
                    raise RuntimeError("catalog scan did not finish in 300 s")
                time.sleep(0.2)
            indexed = time.monotonic() - started
            time.sleep(2)
            memory = memory_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        f"{args.files} files": {
            "rss_mib": memory["VmRSS"] / 1024,
            "hwm_mib": memory["VmHWM"] / 1024,
            "indexed_s": indexed,
        }
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcp2p.lab.bench_discovery")
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="search latency 1 and 3 hops away (root)")
    lat.add_argument("--repeat", type=int, default=20)
    r = sub.add_parser("rss", help="daemon memory with many shared files")
    r.add_argument("--files", type=int, default=10000)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    result = latency(args) if args.what == "latency" else rss(args)
    for name, row in result.items():
        print(
            f"{name:<28} "
            + "  ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
