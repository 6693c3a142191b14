"""REPORT.md from the lab's results JSON (and nothing else).

`write_report(results, directory)` renders one section per experiment
that the results hold, each through that experiment's own ``report()``,
after a header that says when, where and on what the data was measured.
Re-render any time with ``python -m mcp2p.lab report --out DIR``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from mcp2p.lab.experiment import EXPERIMENTS, ReportOut, Section, load

__all__ = ["machine", "write_report", "RESULTS", "REPORT"]

RESULTS = "results.json"
REPORT = "REPORT.md"


def _run(cmd: list[str]) -> str:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return cp.stdout.strip() if cp.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def machine() -> dict[str, Any]:
    """The machine, software versions and date a run is measured on."""
    import mcp2p
    import twisted

    debs = {}
    for pkg in ("udpcast", "uftp", "smcroute", "iproute2", "nftables"):
        debs[pkg] = _run(["dpkg-query", "-W", "-f=${Version}", pkg]) or "not installed"
    root = Path(__file__).resolve().parents[2]
    commit = (
        _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
        if shutil.which("git")
        else ""
    )
    dirty = bool(_run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_mem_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "mcp2p": getattr(mcp2p, "__version__", "?"),
        "commit": commit + ("+changes" if dirty else ""),
        "debian": debs,
    }


def _header(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    debs = ", ".join(f"{k} {v}" for k, v in m.get("debian", {}).items())
    lines = [
        "# mcp2p lab report",
        "",
        "The position paper lists four things that must be tested in real life. "
        "Each section below answers one of them with measurements on real daemons "
        "(`twistd -n mcp2p` per host) in an emulated network of Linux network "
        "namespaces. Every figure here is computed from `results.json` of the same "
        "run; medians are given with their spread as median (min-max) over the "
        "repetitions.",
        "",
        f"- Date: {m.get('date', '?')}; size: {results.get('size', '?')}, "
        f"{results.get('reps', '?')} repetitions per point; "
        f"whole run {results.get('seconds', 0) / 60:.1f} minutes.",
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, Linux {m.get('kernel', '?')}. All hosts, "
        "routers and daemons share these cores, so per-host CPU is the limit "
        "long before a real network would be.",
        f"- Software: mcp2p {m.get('mcp2p', '?')} (commit {m.get('commit', '?')}), "
        f"Python {m.get('python', '?')}, Twisted {m.get('twisted', '?')}; {debs}.",
        "- Reproduce: `make lab` (or `make lab QUICK=1`); one experiment: "
        "`python -m mcp2p.lab run NAME`; re-render: `python -m mcp2p.lab report`.",
        "",
    ]
    return "\n".join(lines)


def _section(n: int, name: str, entry: dict[str, Any], directory: Path) -> str:
    try:
        module = load(name)
        title, question = module.TITLE, module.QUESTION
    except Exception:  # noqa: BLE001 - an unknown experiment still gets a section
        module, title, question = None, name, ""
    out = [f"## {n}. {title}", ""]
    if question:
        out += [f"*{question}*", ""]
    params = entry.get("params", {})
    if params:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        out += [f"Parameters: {shown}; {entry.get('seconds', 0):.0f} s.", ""]
    if entry.get("error"):
        out += ["**This experiment failed:**", "", "```", entry["error"][-3000:], "```", ""]
        return "\n".join(out)
    try:
        assert module is not None
        section: Section = module.report(entry["data"], ReportOut(directory, name))
    except Exception:  # noqa: BLE001 - one broken section must not lose the others
        out += ["**The report of this experiment failed:**", "", "```"]
        out += [traceback.format_exc()[-3000:], "```", ""]
        return "\n".join(out)
    out += ["### Setup", "", section.setup.strip(), "", "### Results", ""]
    for table in section.tables:
        out += [table.strip(), ""]
    for plot in section.plots:
        out += [f"![{plot}]({plot})", ""]
    for note in section.notes:
        out += [f"- {note.strip()}"]
    if section.notes:
        out.append("")
    out += ["### Conclusion", "", section.conclusion.strip(), ""]
    return "\n".join(out)


def write_report(results: dict[str, Any], directory: Path) -> Path:
    """Write REPORT.md (and the plots) for ``results`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = [_header(results)]
    experiments = results.get("experiments", {})
    order = [n for n in EXPERIMENTS if n in experiments] + [
        n for n in experiments if n not in EXPERIMENTS
    ]
    for i, name in enumerate(order, 1):
        parts.append(_section(i, name, experiments[name], directory))
    path = directory / REPORT
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def save_results(results: dict[str, Any], directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    for name, entry in results.get("experiments", {}).items():
        (directory / f"{name}.json").write_text(json.dumps(entry, indent=1, default=str))
    return path


def load_results(directory: Path) -> dict[str, Any]:
    path = Path(directory) / RESULTS
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except OSError as e:
        sys.exit(f"mcp2p lab: no results in {path}: {e.strerror}")
    except ValueError as e:
        sys.exit(f"mcp2p lab: {path} is not JSON: {e}")
    return data
