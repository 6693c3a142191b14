"""The lab cannot rot: ``python -m mcp2p.lab all --size smoke`` runs every
experiment (one topology, one point each) on real daemons in namespaces,
writes the report, and leaves no namespace or process behind.

Root only (network namespaces); all traffic stays in the namespaces the
experiments make.
"""

from __future__ import annotations

import json

import pytest

from mcp2p.lab.experiment import EXPERIMENTS

from .smoke import SmokeLab

pytestmark = pytest.mark.netns


def test_every_experiment_runs_at_smoke_size_and_the_report_comes_from_its_json(
    smoke_lab: SmokeLab,
) -> None:
    cp, out = smoke_lab.cp, smoke_lab.out
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-6000:]
    # the progress line named each experiment
    for i, name in enumerate(EXPERIMENTS, 1):
        assert f"[{i}/{len(EXPERIMENTS)} {name}]" in cp.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["experiments"]) == set(EXPERIMENTS)
    for name in EXPERIMENTS:
        entry = results["experiments"][name]
        assert "error" not in entry, entry.get("error")
        assert entry["data"], name
        assert json.loads((out / f"{name}.json").read_text())["data"] == entry["data"]
    # experiment 1 keeps the fields scripts read, and has the CPU of every run
    for run in results["experiments"]["unicast"]["data"]["runs"]:
        for key in ("tool", "ok", "slowest", "elapsed", "sn_ratio", "sn_cpu_s", "cn_cpu_s"):
            assert key in run, key
        if run["ok"]:
            assert run["sn_cpu_s"] is not None and len(run["cn_cpu_s"]) == run["cns_n"]
            assert all(c is not None for c in run["cn_cpu_s"]), run
    report = (out / "REPORT.md").read_text()
    assert "| CPU s per CN | CPU s SN | cores busy |" in report
    assert "This experiment failed" not in report
    assert "The report of this experiment failed" not in report
    assert report.count("### Conclusion") == len(EXPERIMENTS)
    for plot in (
        line[line.index("(") + 1 : -1] for line in report.splitlines() if line.startswith("![")
    ):
        assert (out / plot).stat().st_size > 1000, plot
    assert results["machine"]["cores"] and results["machine"]["date"]
    assert smoke_lab.after <= smoke_lab.before, "the lab left namespaces behind"
