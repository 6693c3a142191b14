"""Experiment 1 at smoke size on real daemons and tools (root only): the
headline point with its own larger file and the CPU fields of every run (from
the suite's one smoke run of the lab), and the same over IPv6 (``--family 6``,
a run of its own).

Performance is measured by the lab, never asserted here: these check that
every field is there, every copy verified and the IPv6 runs used IPv6.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.experiments import unicast
from mcp2p.lab.net import missing_requirements

from .smoke import SmokeLab, lab_namespaces

_reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
if _reason:
    pytest.skip(f"unicast experiment: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

SCRIPT_FIELDS = ("tool", "ok", "slowest", "elapsed", "sn_ratio")  # scripts rely on these
CPU_FIELDS = ("sn_cpu_s", "cn_cpu_s", "cpu_cores")


def _namespaces() -> set[str]:
    """The star's namespaces (``mcp2p-ID-sn``, ``-sw``, ``-cnN``): other
    engineers' tests may make and remove namespaces of other names meanwhile."""
    return {n for n in lab_namespaces() if re.fullmatch(r".*-(sn|sw|cn\d+)", n)}


def _run(tmp_path: Path, *params: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "report"
    cp = subprocess.run(
        [sys.executable, "-m", "mcp2p.lab", "run", "unicast", "--size", "smoke"]
        + ["--out", str(out), "--workdir", str(tmp_path), *params],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return cp, out


def _check_run(run: dict[str, Any]) -> None:
    """Every run has the fields; a run that verified has its CPU figures.
    (A peer may lose its handshake to the 1% loss on a busy machine: that run
    is reported failed, which is the lab's business, not this test's.)"""
    for key in (*SCRIPT_FIELDS, *CPU_FIELDS):
        assert key in run, key
    if run["tool"] == "mcp2p-multicast":
        assert run["ok"], run.get("failures")
    if not run["ok"]:
        return
    assert len(run["cn_cpu_s"]) == run["cns_n"] == len(run["elapsed"])
    assert all(c is not None and c >= 0 for c in [run["sn_cpu_s"], *run["cn_cpu_s"]]), run
    assert 0 < run["cpu_cores"] <= (os.cpu_count() or 1) + 0.5
    if run["tool"].startswith("mcp2p-"):
        # a CN daemon fetching and verifying a file uses measurable CPU
        assert all(c > 0 for c in run["cn_cpu_s"]) and run["sn_cpu_s"] > 0
    assert [c["cpu_s"] for c in run["cns"]] == run["cn_cpu_s"]


def test_the_headline_runs_its_own_larger_file_and_every_run_has_its_cpu(
    smoke_lab: SmokeLab,
) -> None:
    """From the suite's one smoke run of the lab (`tests.lab.smoke`), whose
    unicast experiment has a 3 MiB headline beside its 2 MiB grid."""
    data = smoke_lab.data("unicast")
    tools = set(data["params"]["tools"]) - set(data["skipped"])
    assert data["params"]["headline_size"] == 3 << 20 and data["params"]["family"] == 4
    assert {r["tool"] for r in data["runs"]} == tools
    assert {r["tool"] for r in data["headline_runs"]} == tools
    for run in data["runs"]:
        _check_run(run)
        assert run["size"] == 2 << 20
    for run in data["headline_runs"]:
        _check_run(run)
        assert run["size"] == 3 << 20 and run["cns_n"] == max(data["params"]["cns"])
    report = (smoke_lab.out / "REPORT.md").read_text()
    assert "Headline: 2 CNs at 1% loss, 3 MiB" in report
    assert "| CPU s per CN | CPU s SN | cores busy |" in report
    assert "CPU-bound at the headline" in report or "No tool was CPU-bound" in report
    assert unicast.floor_sentence(3 << 20, 2, 0.01, 95, 100) in report


def test_family_6_runs_mcp2p_uftp_and_tcp_over_ipv6_and_skips_udpcast(tmp_path: Path) -> None:
    missing = unicast.ipv6_missing()
    if missing:
        pytest.skip(missing)
    before = _namespaces()
    cp, out = _run(tmp_path, "--family", "6", "--headline-mib", "0")
    assert _namespaces() <= before, "the experiment left namespaces behind"
    entry = json.loads((out / "unicast.json").read_text())
    error = entry.get("error") or ""
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr[-4000:] + error[-3000:]
    data = entry["data"]
    assert data["params"]["family"] == 6
    assert "IPv4 only" in data["skipped"]["udpcast"]
    assert {r["tool"] for r in data["runs"]} == {"mcp2p-multicast", "mcp2p-unicast", "uftp", "tcp"}
    for run in data["runs"]:
        _check_run(run)
        if run["tool"] == "mcp2p-multicast":
            groups = [g for c in run["cns"] for g in c["groups"]]
            assert groups and all(ipaddress.ip_address(g).version == 6 for g in groups)
            assert all(g.startswith("ff3e:") for g in groups)  # SSM, source = the SN
    report = (out / "REPORT.md").read_text()
    assert "Over IPv6" in report and "udpcast was not run: udpcast has no IPv6" in report
