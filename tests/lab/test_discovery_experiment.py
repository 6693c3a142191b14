"""Experiment 2 (query or announcement) at smoke size on real daemons: the
JSON has the shape report() needs, both methods found the file, and the
report renders from it. Root only; traffic stays in the lab's namespaces."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mcp2p.lab.experiment import Context, ReportOut, parse_params
from mcp2p.lab.experiments import discovery
from mcp2p.lab.net import missing_requirements

_reason = missing_requirements(("ip", "smcrouted"))
if _reason:
    pytest.skip(f"discovery experiment: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns


def test_smoke_run_finds_the_file_both_ways(tmp_path: Path) -> None:
    params = parse_params(discovery.PARAMS, "smoke")
    ctx = Context(tmp_path / "work", size="smoke", reps=1, label="discovery", stream=io.StringIO())
    data = discovery.run(ctx, **params)

    points = {p["method"]: p for p in data["points"]}
    assert set(points) == {"query", "sap"}, data["points"]
    for p in points.values():
        assert "failed" not in p, p
    q, s = points["query"], points["sap"]
    assert [r["found"] for r in q["runs"]] == [True]
    assert q["runs"][0]["distance"] == max(data["rings"])
    assert q["runs"][0]["hop_limits"][-1] == max(data["rings"])
    assert all(b > 0 for b in q["runs"][0]["link_bytes"].values())  # every link saw it
    assert q["idle_queries"] == 0  # nobody searched: no query datagram
    assert [r["found"] for r in s["runs"]] == [True]
    assert all(0 < t < data["sap_timeout"] for t in s["runs"][0]["times"])
    assert all(b > 0 for b in s["link_bytes"].values())
    assert s["announcer"]["sap"]["announcements"] == s["files"]
    assert data["sim"] and all(x["query"]["rare"]["found"] == 1.0 for x in data["sim"])

    section = discovery.report(data, ReportOut(tmp_path / "report", "discovery"))
    assert len(section.tables) == 3 and len(section.plots) == 2
    for plot in section.plots:
        assert (tmp_path / "report" / plot).stat().st_size > 1000
    assert "query found the file" in section.conclusion
