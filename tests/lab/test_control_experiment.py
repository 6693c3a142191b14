"""Experiment 4 (the control channel) at smoke size, on real daemons in namespaces
(the suite's one smoke run of the lab, `tests.lab.smoke`).

One run: the notices' overhead for 1 CN, one forged burst, two block-choice
policies with 2 staggered CNs. The assertions are on counts, byte ratios
with generous slack and correctness (files verified), never on speed.
Root only; all traffic stays in the namespaces the experiment makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.experiment import ReportOut
from mcp2p.lab.experiments import control
from mcp2p.lab.net import missing_requirements

from .smoke import SmokeLab

_reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
if _reason:
    pytest.skip(f"control experiment: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns


@pytest.fixture
def data(smoke_lab: SmokeLab) -> dict[str, Any]:
    """The experiment's data from the suite's one smoke run of the lab."""
    return smoke_lab.data("control")


def test_overhead_is_measured_per_data_byte(data: dict[str, Any]) -> None:
    assert [(p["mode"], p["cns"]) for p in data["overhead"]] == [("multicast", 1)]
    (run,) = data["overhead"][0]["runs"]
    (cn,) = run["cns"]
    assert cn["ok"] and cn["verified"]
    size = 4 << 20
    assert size <= cn["bytes"]["data"] < 2 * size  # the file, with headers, once or so
    # One 8-byte digest per ~1.4 kB packet in the digest lists: about 6 per mille
    # of the data; the control channel carries only their hashes (16 bytes a
    # list of up to 175), the manifest and TLS: less than the lists themselves.
    notices = cn["notice_bytes"] / cn["bytes"]["data"]
    assert 0.005 < notices < 0.012
    assert 0 < cn["bytes"]["ctl_in"] / cn["bytes"]["data"] < notices
    assert 0 < cn["bytes"]["ctl_out"]


def test_forged_packets_are_dropped_and_the_file_verifies(data: dict[str, Any]) -> None:
    (burst,) = data["forged"]
    assert "error" not in burst, burst
    assert burst["forger"]["sent"] == 200
    cn = burst["cn"]
    assert cn["verified"] and cn["ok"]
    recv = cn["receiver"]
    assert recv["forged"] > 0
    assert 0 <= recv["forged_hold_sum"] / recv["forged"] <= recv["forged_hold_max"] < 1.0


def test_every_policy_delivers_to_every_staggered_cn(data: dict[str, Any]) -> None:
    assert [p["policy"] for p in data["late"]] == ["demand", "mostwanted"]
    for point in data["late"]:
        (run,) = point["runs"]
        cns = run["cns"]
        assert [c["start"] for c in cns] == [0.0, 0.3]
        assert all(c["ok"] and c["verified"] for c in cns), cns
        for c in cns:
            assert c["elapsed"] > 0 and c["duplicates"] >= 0
            assert c["receiver"]["accepted"] >= (8 << 20) // 1400


def test_report_comes_from_the_json(data: dict[str, Any], tmp_path: Path) -> None:
    section = control.report(data, ReportOut(tmp_path, "control"))
    assert len(section.tables) == 3 and section.plots
    for plot in section.plots:
        assert (tmp_path / plot).stat().st_size > 0
    assert "forged packets" in section.conclusion
    assert section.setup and section.conclusion.count(". ") >= 1
