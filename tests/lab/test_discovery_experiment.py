"""Experiment 2 (query or announcement): the parameter checks, the SAP
timing of a point, the rows and the report on made-up points and a real
small simulation (no root needed); and the whole experiment at smoke size
on real daemons (the suite's one smoke run of the lab, `tests.lab.smoke`):
the JSON has the shape report() needs, both methods found the file, and the
report renders from it (root only; traffic stays in the lab's namespaces)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from mcp2p.core.sapinterval import announcement_interval
from mcp2p.lab import sim
from mcp2p.lab.experiment import ReportOut, load, parse_params
from mcp2p.lab.experiments import discovery
from mcp2p.lab.experiments.discovery import model
from mcp2p.lab.net import missing_requirements

from .smoke import SmokeLab

_reason = missing_requirements(("ip", "smcrouted"))


def test_the_framework_sees_the_package_as_one_experiment() -> None:
    module = load("discovery")
    assert module is discovery
    assert (module.NAME, module.TITLE) == ("discovery", "Query or announcement")
    assert callable(module.run) and callable(module.report)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rings", [0], "rings must list hop distances in 1..8"),
        ("rings", [], "rings must list hop distances in 1..8"),
        ("files", [0], "files must be >= 1"),
        ("sap_files", [200_000], "at most 100000 files per emulated node"),
        ("sap_speedup", 5000, "sap_speedup must be in"),
        ("idle", 0.0, "must be > 0"),
        ("sim_kinds", ["mesh"], "is not one of"),
        ("sim_peers", [3_000_000], "at most 2,000,000 simulated nodes"),
    ],
)
def test_check_refuses_what_the_run_cannot_measure(key: str, value: Any, message: str) -> None:
    params = parse_params(discovery.PARAMS, "smoke")
    model.check(params)  # the defaults pass
    with pytest.raises(ValueError, match=message):
        model.check({**params, key: value})


def test_sap_at_k_times_the_rfc() -> None:
    assert model.sap_sections(100) == {
        "discovery": {"methods": "sap"},
        "sap": {"bandwidth_limit": "400000", "min_interval": "3"},
    }
    # never below 0.1 s, whatever the speed-up
    assert model.sap_sections(3000)["sap"]["min_interval"] == "0.1"
    head = model.sap_point(files=10, nodes=3, ad=665, k=100.0)
    assert (head["ads"], head["limit"], head["min_interval"]) == (30, 400_000.0, 3.0)
    assert head["interval"] == announcement_interval(665, 30, 400_000.0, 3.0)
    assert math.isclose(head["batch_wait"], 10 * 8 * 665 / 400_000 * 1.2 + 1.0)


def _data() -> dict[str, Any]:
    links = {"s-sw": 100, "n1-sw": 300}
    query = {
        "method": "query", "files": 10, "nodes": 2, "idle_seconds": 30.0,
        "idle_bytes": {"s-sw": 50, "n1-sw": 20}, "idle_queries": 0,
        "runs": [
            {"elapsed": 0.5, "found": True, "distance": 2, "hop_limits": [1, 2],
             "link_bytes": links},
            {"elapsed": None, "found": False, "distance": None, "hop_limits": None,
             "link_bytes": links},
        ],
    }  # fmt: skip
    sap = {
        **model.sap_point(files=10, nodes=2, ad=665, k=100.0),
        "window": 60.0,
        "link_bytes": {"s-sw": 6000, "n1-sw": 12000},
        "runs": [{"targets": ["n2-000001.dat", "n2-000002.dat"], "times": [1.5, None]}],
    }
    small = sim.SimParams(
        kind="ba", peers=200, files_per_node=10, lan_size=10, samples=3,
        searches_per_node_hour=1.0, seed=1,
    )  # fmt: skip
    return {
        "rings": [1, 2], "nodes": 2, "reps": 2, "sap_speedup": 100.0, "sap_timeout": 12.0,
        "sap_targets": 2, "idle": 30.0, "ring_schedule": list(sim.RING_SCHEDULE),
        "ring_timeout": sim.RING_TIMEOUT,
        "points": [query, sap, {"method": "sap", "files": 100, "failed": "no SAP"}],
        "sim": [sim.simulate(small)],
        "sim_params": {"lan_size": 10, "samples": 3, "searches_per_node_hour": 1.0},
        "emulation_seconds": 1.0, "sim_seconds": 0.1,
    }  # fmt: skip


def test_rows_per_method_from_made_up_points() -> None:
    data = _data()
    (q,) = discovery.query_rows(data)
    assert (q["files"], q["total"], q["times"], q["found"], q["reps"]) == (10, 20, [0.5], 1, 2)
    assert q["rings"] == [2, 0] and q["total_bytes"] == [400, 400] and q["max_link"] == [300, 300]
    assert q["idle_max"] == 100.0  # 50 bytes in 30 s on the busiest link
    assert q["predicted"] > 0
    (s,) = discovery.sap_rows(data)  # the failed point has no row
    assert (s["total"], s["times"], s["times_rfc"], s["found"], s["reps"]) == (
        20, [1.5], [150.0], 1, 2,
    )  # fmt: skip
    assert s["link_bpm"] == [6000.0, 12000.0] and s["limit_bpm"] == 60 * 400_000 / 8


def test_report_renders_from_made_up_points_and_a_small_simulation(tmp_path: Path) -> None:
    section = discovery.report(_data(), ReportOut(tmp_path, "discovery"))
    assert len(section.tables) == 3 and len(section.plots) == 2
    for plot in section.plots:
        assert (tmp_path / plot).stat().st_size > 1000
    assert "query found the file 2 hop(s) away in 500 ms" in section.conclusion
    assert "In the simulation at 200 nodes x 10 files (ba)" in section.conclusion
    assert section.notes[0] == "sap F=100 failed: no SAP"


@pytest.mark.netns
@pytest.mark.skipif(_reason is not None, reason=f"discovery experiment: {_reason}")
def test_smoke_run_finds_the_file_both_ways(smoke_lab: SmokeLab, tmp_path: Path) -> None:
    data = smoke_lab.data("discovery")

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
