"""Experiment 3, SSM or ASM: the model and the collision count on made-up
points (no root needed), and the whole experiment at smoke size on real
daemons in namespaces (root only): its JSON, SSM's zero foreign packets,
every file verified, and a report computed from that JSON.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.experiment import Context, ReportOut, parse_params
from mcp2p.lab.experiments import groups
from mcp2p.lab.net import missing_requirements

_reason = missing_requirements(("ip", "nft", "bridge"))


def test_modes_parse_to_a_group_mode_and_a_pool() -> None:
    assert groups.parse_mode("ssm") == ("ssm", "232.0.0.0/8")
    assert groups.parse_mode("asm/28") == ("asm", "239.192.0.0/28")
    assert groups.parse_mode("asm:239.255.1.0/24") == ("asm", "239.255.1.0/24")
    assert groups.usable_groups("239.192.0.0/28") == 14
    for bad in ("asm", "asm/33", "asm:10.0.0.0/24", "asm/31", "igmp"):
        with pytest.raises(ValueError):
            groups.parse_mode(bad)


def test_birthday_model() -> None:
    assert groups.birthday(1, 14) == 0.0
    assert groups.birthday(2, 1) == 2.0  # one group: both collide
    assert math.isclose(groups.birthday(10, 14), 10 * (1 - (13 / 14) ** 9))
    # SSM: only sessions of one SN share a channel space
    assert groups.model_collisions("ssm", "232.0.0.0/8", 100, 4) < 1e-3
    assert groups.model_collisions("asm", "239.192.0.0/28", 100, 4) > 99


def _point(mode: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    gm, pool = groups.parse_mode(mode)
    full = [
        [cn, sn, True, start, elapsed, gs, 10, 0, 10, 0, ""] for cn, sn, start, elapsed, gs in rows
    ]
    return {
        "mode": mode,
        "group_mode": gm,
        "pool": pool,
        "groups_in_pool": groups.usable_groups(pool),
        "fetch_fields": groups.FETCH_FIELDS,
        "fetches": full,
    }


def test_collisions_need_the_same_group_at_an_overlapping_time() -> None:
    asm = _point(
        "asm/28",
        [
            (0, 0, 0.0, 1.0, ["239.192.0.1"]),
            (1, 1, 0.5, 1.0, ["239.192.0.1", "239.192.0.5"]),  # overlaps the first
            (0, 2, 2.0, 1.0, ["239.192.0.1"]),  # same group, later
            (1, 3, 0.0, 3.0, ["239.192.0.2"]),
        ],
    )
    assert groups.collisions(asm) == 2
    assert groups.concurrency(asm) == 3
    # in SSM the channel is (SN, group): two SNs on one group do not collide
    ssm = _point("ssm", [(0, 0, 0.0, 1.0, ["232.1.1.1"]), (1, 1, 0.5, 1.0, ["232.1.1.1"])])
    assert groups.collisions(ssm) == 0
    same_sn = _point("ssm", [(0, 0, 0.0, 1.0, ["232.1.1.1"]), (1, 0, 0.5, 1.0, ["232.1.1.1"])])
    assert groups.collisions(same_sn) == 2


@pytest.mark.netns
@pytest.mark.skipif(_reason is not None, reason=f"groups experiment: {_reason}")
def test_smoke_run_ssm_has_no_foreign_packets_and_every_file_verifies(tmp_path: Path) -> None:
    params = parse_params(groups.PARAMS, "smoke")
    ctx = Context(tmp_path / "work", size="smoke", reps=1, label="groups", stream=io.StringIO())
    data = groups.run(ctx, **params)
    data = json.loads(json.dumps(data))  # what the lab writes and reads back

    assert data["modes"] == params["modes"] and "ssm" in data["modes"]
    assert data["sessions"] == params["sessions"]
    points = data["points"]
    assert {p["mode"] for p in points} == set(params["modes"])
    hosts = {f"sn{i + 1}" for i in range(params["sns"])} | {
        f"cn{i + 1}" for i in range(params["cns"])
    }
    for p in points:
        assert "failed" not in p, p.get("failed")
        assert "skipped" not in p
        assert set(p["hosts"]) == hosts
        assert p["fetch_fields"] == groups.FETCH_FIELDS
        rows = groups.fetch_rows(p)
        assert len(rows) == p["sessions"]
        assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
        assert all(r["groups"] for r in rows)
        assert p["sn_sessions"] == p["sessions"]
        assert p["leftover_sessions"] == 0
        for r in rows:
            assert r["accepted"] >= 1 and r["packets"] >= r["accepted"] + r["foreign"]
        for name, h in p["hosts"].items():
            if name.startswith("cn"):
                # what the receivers count never exceeds what arrived on the link
                assert h["data_rx_packets"] >= h["own_packets"] > 0
    ssm = [p for p in points if p["mode"] == "ssm"]
    assert ssm
    for p in ssm:
        assert all(g.startswith("232.") for r in groups.fetch_rows(p) for g in r["groups"])
        assert sum(r["foreign"] for r in groups.fetch_rows(p)) == 0
        assert p["moves"] == 0 and groups.collisions(p) == 0
        assert groups.unwanted(p)["all_packets"] == 0
    for p in points:
        if p["group_mode"] == "asm":
            pool = groups.parse_mode(p["mode"])[1]
            net = pool.rsplit(".", 1)[0]
            assert all(g.startswith(net) for r in groups.fetch_rows(p) for g in r["groups"])

    section = groups.report(data, ReportOut(tmp_path / "report", "groups"))
    assert section.tables and section.setup and section.conclusion
    assert all((tmp_path / "report" / plot).stat().st_size > 1000 for plot in section.plots)
    assert "ssm" in section.tables[0]
