"""bench_cpu runs at a tiny size and prints and writes its fields (root only).

Performance itself is measured by the bench, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mcp2p.lab.net import missing_requirements
from mcp2p.lab.procstat import PerfCounts

_reason = missing_requirements(("ip",))
if _reason:
    pytest.skip(f"bench_cpu: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns


def test_quick_bench_prints_cpu_per_packet_and_the_stages(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    cp = subprocess.run(
        [sys.executable, "-m", "mcp2p.lab.bench_cpu", "--quick", "--tools", "mcp2p"]
        + ["--stage-pieces", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "µs/pkt" in cp.stdout and "receiver_to_store" in cp.stdout
    result = json.loads(out.read_text())
    rows = {r["role"]: r for r in result["rows"]}
    assert set(rows) == {"SN", "CN"} and all(r["ok"] for r in rows.values())
    assert rows["CN"]["packets"] >= result["size"] // result["block"]
    assert rows["CN"]["us_per_packet"] > 0 and rows["CN"]["peak_rss_mb"] > 0
    if PerfCounts.counting():  # counted where perf can count (None otherwise)
        assert rows["CN"]["k_instructions_per_packet"] > 1
        assert rows["SN"]["k_cycles_per_packet"] > 1
        assert "kinstr/pkt" in cp.stdout
    else:
        assert rows["CN"]["k_instructions_per_packet"] is None
    stages = result["stages_us_per_packet"]
    for key in ("recv_per_datagram", "recv_batch", "digest", "store_write_block"):
        assert stages[key] > 0
