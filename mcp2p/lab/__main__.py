"""``python -m mcp2p.lab``: the lab's command line.

    python -m mcp2p.lab list                         experiments and parameters
    python -m mcp2p.lab run EXPERIMENT [--quick] [--reps N] [--PARAM VALUE ...]
    python -m mcp2p.lab all [--quick] [--out lab-report]   what `make lab` runs
    python -m mcp2p.lab report [--out lab-report]   re-render REPORT.md from JSON
    python -m mcp2p.lab topo FILE.ini|star:4|chain:3|tree up|down|status
    python -m mcp2p.lab bench NAME [ARGS ...]        one benchmark (``make bench``)

``run`` and ``all`` write ``OUT/results.json`` (machine, versions, date,
and every experiment's raw data), ``OUT/NAME.json`` per experiment, the
plots and ``OUT/REPORT.md``. An experiment that fails is recorded as
failed and the others still run; the network is torn down either way
(also on Ctrl-C or SIGTERM). Running experiments needs root (network
namespaces).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from mcp2p.lab.bench import BENCHES, bench_module
from mcp2p.lab.bench import main as bench_main
from mcp2p.lab.experiment import EXPERIMENTS, SIZES, Context, load, parse_params

DEFAULT_OUT = "lab-report"


def _overrides(rest: list[str]) -> list[tuple[str, str]]:
    out = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --PARAM VALUE, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ValueError(f"{arg} needs a value")
            key, value = arg[2:], rest[i + 1]
            i += 2
        out.append((key, value))
    return out


def _size(args: argparse.Namespace) -> str:
    if args.size:
        return str(args.size)
    if args.quick or os.environ.get("QUICK", "") not in ("", "0"):
        return "quick"
    return "full"


def run_experiments(
    names: list[str],
    size: str,
    out: Path,
    *,
    reps: int | None = None,
    overrides: dict[str, list[tuple[str, str]]] | None = None,
    workdir: Path | None = None,
    stream: Any = None,
) -> dict[str, Any]:
    """Run ``names`` at ``size``; save JSON and REPORT.md into ``out`` after
    each experiment (an interrupted run keeps what it measured)."""
    from mcp2p.lab.report import machine, save_results, write_report

    reps = reps or (1 if size == "smoke" else 3)
    modules = {name: load(name) for name in names}
    params = {
        name: parse_params(m.PARAMS, size, (overrides or {}).get(name, ()))
        for name, m in modules.items()
    }
    results: dict[str, Any] = {
        "machine": machine(),
        "size": size,
        "reps": reps,
        "seconds": 0.0,
        "experiments": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp2p-lab-", dir=workdir) as tmp:
        for i, (name, module) in enumerate(modules.items(), 1):
            ctx = Context(
                Path(tmp) / name,
                size=size,
                reps=reps,
                label=f"{i}/{len(modules)} {name}",
                stream=stream,
            )
            ctx.progress("starting")
            t0 = time.monotonic()
            entry: dict[str, Any] = {"params": params[name]}
            try:
                entry["data"] = module.run(ctx, **params[name])
            except KeyboardInterrupt:
                entry["error"] = "interrupted"
                results["experiments"][name] = entry
                raise
            except Exception:  # noqa: BLE001 - record it, go on with the next one
                entry["error"] = traceback.format_exc()
                ctx.progress("FAILED: " + entry["error"].strip().splitlines()[-1][:200])
            finally:
                entry["seconds"] = time.monotonic() - t0
                results["experiments"][name] = entry
                results["seconds"] = time.monotonic() - started
                save_results(results, out)
                write_report(results, out)
            ctx.progress(f"done in {entry['seconds']:.0f} s")
            ctx.done()
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "topo":
        from mcp2p.lab.net.cli import main as topo_main

        return topo_main(argv[1:])
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m mcp2p.lab", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the experiments and their parameters")
    for name in ("run", "all"):
        p = sub.add_parser(name, help="run one experiment" if name == "run" else "run all four")
        if name == "run":
            p.add_argument("experiment", choices=EXPERIMENTS)
        p.add_argument("--quick", action="store_true", help="the small version (QUICK=1)")
        p.add_argument("--size", choices=SIZES, help="full, quick or smoke")
        p.add_argument("--reps", type=int, help="repetitions per point (default 3; smoke 1)")
        p.add_argument("--out", default=DEFAULT_OUT, help="report directory")
        p.add_argument("--workdir", help="where to put files and daemon state (default: /tmp)")
    p = sub.add_parser("report", help="re-render REPORT.md from OUT/results.json")
    p.add_argument("--out", default=DEFAULT_OUT)
    sub.add_parser("topo", help="build a topology and leave it up (see topo --help)")
    sub.add_parser("bench", help="run one benchmark: bench NAME [ARGS ...] (see bench --help)")
    args, rest = parser.parse_known_args(argv)

    if args.command == "list":
        for name in EXPERIMENTS:
            m = load(name)
            print(f"{name}: {m.TITLE}\n  {m.QUESTION}")
            for key, p in m.PARAMS.items():
                print(f"  --{key.replace('_', '-')}  full={p.full} quick={p.quick}  {p.help}")
        print("benches (python -m mcp2p.lab bench NAME --help):")
        for name in BENCHES:
            doc = (bench_module(name).__doc__ or "").strip().splitlines()
            print(f"  {name}: {doc[0] if doc else ''}")
        return 0
    if args.command == "report":
        from mcp2p.lab.report import load_results, write_report

        path = write_report(load_results(Path(args.out)), Path(args.out))
        print(path)
        return 0
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    try:
        overrides = _overrides(rest)
    except ValueError as e:
        parser.error(str(e))
    names = [args.experiment] if args.command == "run" else list(EXPERIMENTS)
    if overrides and len(names) > 1:
        parser.error("--PARAM overrides go with `run EXPERIMENT`")
    size = _size(args)
    if os.geteuid() != 0:
        print("mcp2p lab: experiments need root (network namespaces)", file=sys.stderr)
        return 2
    try:
        for name in names:
            parse_params(load(name).PARAMS, size, overrides)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    try:
        results = run_experiments(
            names,
            size,
            out,
            reps=args.reps,
            overrides={names[0]: overrides},
            workdir=Path(args.workdir) if args.workdir else None,
        )
    except KeyboardInterrupt:
        print(f"\nmcp2p lab: interrupted; what was measured is in {out}", file=sys.stderr)
        return 130
    failed = [n for n, e in results["experiments"].items() if e.get("error")]
    print(f"report: {out / 'REPORT.md'} ({results['seconds'] / 60:.1f} min)")
    if failed:
        print(f"failed: {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
