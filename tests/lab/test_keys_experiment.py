"""Experiment 5, key servers by anycast: BIRD's config (no root needed), and the
whole experiment at smoke size on real daemons and real OSPF in namespaces (root
and bird2 only; from the suite's one smoke run of the lab, `tests.lab.smoke`):
the nearest server answers, the next one after it crashes, replication reaches
every server, a flood stores only what its rate allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp2p.lab import anycast
from mcp2p.lab.experiment import EXPERIMENTS, ReportOut, parse_params
from mcp2p.lab.experiments import keys

from .smoke import SmokeLab

_reason = anycast.missing()


def test_bird_config_announces_the_anycast_stub_over_ptp_ospf() -> None:
    text = anycast.bird_config(
        "10.77.0.1", ["eth0", "eth1"], ["eth2"], stubnets=("10.99.99.1/32",), dead=4
    )
    assert "router id 10.77.0.1;" in text
    assert 'interface "eth0", "eth1" { type ptp; hello 1; dead 4;' in text
    assert 'interface "eth2" { stub yes; };' in text
    assert "stubnet 10.99.99.1/32;" in text
    assert "export all" in text  # OSPF's routes go to the kernel: no static routes
    assert "keys" in EXPERIMENTS


@pytest.mark.netns
@pytest.mark.skipif(_reason is not None, reason=f"keys experiment: {_reason}")
def test_smoke_run_nearest_server_answers_and_failover(smoke_lab: SmokeLab, tmp_path: Path) -> None:
    params = parse_params(keys.PARAMS, "smoke")
    data = smoke_lab.data("keys")
    (point,) = data["points"]
    assert "failed" not in point, point.get("failed")
    n = point["servers"]
    # replication: the record is on every server, within a few rounds
    assert point["replication"]["posted"] == 200
    assert set(point["replication"]["seen"]) == {f"ks{i + 1}" for i in range(n)}
    assert keys.replication_time(point) < 5 * params["replication_interval"] + 2
    # look-ups at 1 and 3 hops go to the nearest server, ks1
    for hops in ("1", "3"):
        rows = point["lookups"][hops]
        assert len(rows) == params["lookups"]
        assert all(r[0] == "ks1" and r[2] is None for r in rows), rows
    # failover: after the crash, cn1 and cn3 are answered by the next one, ks2
    failover = point["failover"]
    assert failover["failover_s"] is not None
    assert failover["failover_s"] < params["dead"] + 5
    after = [r for r in failover["rows"] if r[0] > failover["failover_s"]]
    assert after and all(r[1] == "ks2" for r in after), after[:5]
    assert all(r[0] == "ks2" and r[2] is None for r in point["after_failover_3hops"])
    # the flood: stored no more than the burst and the rate allow; the honest
    # record reached every server; every server holds the same records
    flood = point["flood"]
    stored = flood["codes"].get("200", 0)
    assert sum(flood["codes"].values()) == params["flood"]
    assert stored <= 20 + params["add_rate"] * (flood["seconds"] + 1)
    assert flood["codes"].get("429", 0) == params["flood"] - stored
    assert flood["honest_posted"] == 200
    assert len(flood["honest_seen"]) == n
    assert flood["agree"]
    assert set(flood["records"].values()) == {str(stored + 2)}  # + alice and bob

    section = keys.report(data, ReportOut(tmp_path / "report", "keys"))
    assert len(section.tables) == 3 and section.setup and section.conclusion
    assert "ks1" in section.tables[1]
