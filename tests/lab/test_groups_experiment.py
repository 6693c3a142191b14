"""Experiment 3, SSM or ASM: the model, the record of a run (made-up logs,
driver outputs and counters), the analysis and the report on made-up points
(no root needed), and the whole experiment at smoke size on real daemons in
namespaces (root only; the suite's one smoke run of the lab, `tests.lab.smoke`):
its JSON, SSM's zero foreign packets, every file verified, and a report
computed from that JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.experiment import ReportOut, load, parse_params
from mcp2p.lab.experiments import groups
from mcp2p.lab.experiments.groups import analysis, record
from mcp2p.lab.net import missing_requirements

from .smoke import SmokeLab

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


def test_the_framework_sees_the_package_as_one_experiment() -> None:
    module = load("groups")
    assert module is groups
    assert (module.NAME, module.TITLE) == ("groups", "SSM or ASM")
    assert callable(module.run) and callable(module.report)
    assert set(parse_params(module.PARAMS, "smoke")) == set(module.PARAMS)


def test_model_overlap_unwanted_and_completion_on_a_made_up_point() -> None:
    p = _point(
        "asm/28",
        [(0, 0, 0.0, 1.0, ["239.192.0.1"]), (1, 1, 0.5, 1.0, ["239.192.0.2"])],
    )
    # two sessions alive together, 14 groups: each collides with probability 1/14
    assert math.isclose(groups.model_overlap(p), 2 / 14)
    assert groups.completion(p) == [1.0, 1.0]
    p["hosts"] = {
        "sn1": {"data_rx_packets": 4, "data_rx_bytes": 400},
        "cn1": {"data_rx_packets": 15, "data_rx_bytes": 1500, "own_packets": 10},
        "cn2": {"data_rx_packets": 10, "data_rx_bytes": 1000, "own_packets": 10},
    }
    got = groups.unwanted(p)
    assert got == {
        "cn_packets": 2.5,  # cn1 got 5 it did not want, cn2 none
        "cn_bytes": 250.0,
        "cn_foreign": 0.0,
        "sn_packets": 4.0,
        "all_packets": 9.0,
    }


def test_a_point_is_healthy_only_when_every_fetch_verified_and_every_session_ended() -> None:
    p = _point("ssm", [(0, 0, 0.0, 1.0, ["232.1.1.1"])])
    assert analysis.healthy(p)
    assert not analysis.healthy({**p, "leftover_sessions": 1})
    assert not analysis.healthy({"failed": "boom"})
    p["fetches"][0][2] = False
    assert not analysis.healthy(p)


_SN_LOG = """\
2026-01-01 subscription 1 from ab12: r0s2f0000.bin by multicast, session 0000beef, 256000 bit/s
2026-01-01 session 0000beef moved from 239.192.0.1 to 239.192.0.9: another session uses it
2026-01-01 subscription 2 from ab12: r0s2f0001.bin by multicast, session 0000cafe, 256000 bit/s
2026-01-01 session 0000beef ended (unsubscribed): 30 packets, 33000 bytes
"""


def test_sn_sessions_reads_starts_and_ends_from_the_log() -> None:
    subscribed, ended = record.sn_sessions([_SN_LOG, "nothing here\n"])
    assert subscribed == {"0000beef": "r0s2f0000.bin", "0000cafe": "r0s2f0001.bin"}
    assert ended == {"0000beef"}


def _snapshot(data: dict[str, tuple[int, int, int]], cpu: float) -> dict[str, Any]:
    return {
        "links": {n: {"rx_packets": 100 * v[0], "tx_packets": 1} for n, v in data.items()},
        "data": data,
        "cpu": {n: cpu for n in data},
    }


def test_record_point_verifies_files_and_counts_what_the_logs_and_counters_say(
    tmp_path: Path,
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    files = {}
    for i in range(2):
        src = share / f"r0s2f000{i}.bin"
        src.write_bytes(bytes([i]) * 3000)
        files[src.name] = (0, src)
    out_dir = tmp_path / "cn1"
    out_dir.mkdir()
    (out_dir / "r0s2f0000.bin").write_bytes(b"\0" * 3000)  # byte-identical
    (out_dir / "r0s2f0001.bin").write_bytes(b"\2" * 3000)  # corrupt
    recv = [{"packets": 5, "foreign": 1, "accepted": 3, "lost": 1, "malformed": 1}]
    driver = [
        {"name": "r0s2f0000.bin", "t_post": 100.25, "events": [
            {"event": "subscribed", "group": "239.192.0.1"},
            {"event": "moved", "group": "239.192.0.9"},
            {"event": "done", "elapsed": 0.5, "receivers": recv},
        ]},
        {"name": "r0s2f0001.bin", "t_post": 100.5, "events": [
            {"event": "subscribed", "group": "239.192.0.2"},
            {"event": "source_dropped", "reason": "stalled"},
            {"event": "done", "elapsed": 0.7, "receivers": recv},
        ]},
    ]  # fmt: skip
    out_file = tmp_path / "cn1.result.json"
    out_file.write_text(json.dumps(driver))
    names = ["sn1"], ["cn1", "cn2"]
    before = _snapshot({"sn1": (0, 0, 0), "cn1": (0, 0, 0), "cn2": (0, 0, 0)}, 1.0)
    after = _snapshot({"sn1": (2, 200, 7), "cn1": (12, 1200, 0), "cn2": (3, 300, 0)}, 1.5)
    subscribed, _ = record.sn_sessions([_SN_LOG])
    p = record.point(
        mode="asm/28", sessions=2, rep=0, files=files, file_kib=3, per_cn=[list(files), []],
        outs=[(out_dir, out_file), (tmp_path / "cn2", tmp_path / "missing.json")],
        logs=[_SN_LOG], subscribed=subscribed, sn_names=names[0], cn_names=names[1],
        before=before, after=after, go=100.0, wall=1.25, errors=[],
    )  # fmt: skip
    assert json.loads(json.dumps(p)) == p  # what the lab writes
    assert (p["group_mode"], p["pool"], p["groups_in_pool"]) == ("asm", "239.192.0.0/28", 14)
    assert (p["moves"], p["sn_sessions"], p["leftover_sessions"]) == (1, 2, 1)
    assert (p["sent_packets"], p["sent_bytes"]) == (30, 33000)
    rows = groups.fetch_rows(p)
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[0]["groups"] == ["239.192.0.1", "239.192.0.9"]
    assert (rows[0]["start"], rows[0]["elapsed"], rows[0]["packets"]) == (0.25, 0.5, 5)
    assert rows[1]["error"] == "not verified (SN dropped: stalled)"
    cn1 = p["hosts"]["cn1"]
    assert (cn1["data_rx_packets"], cn1["own_packets"], cn1["moved_events"]) == (12, 6, 1)
    assert cn1["needed_packets"] == 2 * math.ceil(3 * 1024 / groups.BLOCK)
    assert (cn1["rx_packets"], cn1["cpu"]) == (1200, 0.5)
    assert p["hosts"]["sn1"]["looped_back"] == 7
    assert p["hosts"]["cn2"]["needed_packets"] == 0  # its driver wrote nothing: no fetch


def test_report_renders_from_made_up_points(tmp_path: Path) -> None:
    hosts = {
        "sn1": {"data_rx_packets": 0, "data_rx_bytes": 0, "cpu": 0.1, "looped_back": 3},
        "cn1": {"data_rx_packets": 10, "data_rx_bytes": 1000, "own_packets": 10,
                "needed_packets": 10, "moved_events": 0, "cpu": 0.1},
    }  # fmt: skip
    points = []
    for mode, gs in (("ssm", "232.1.1.1"), ("asm/28", "239.192.0.1")):
        p = _point(mode, [(0, 0, 0.0, 1.0, [gs]), (0, 0, 0.5, 1.0, [gs])])
        p.update(sessions=2, rep=0, moves=1 if mode != "ssm" else 0, hosts=hosts,
                 sent_packets=20, leftover_sessions=0)  # fmt: skip
        points.append(p)
    points.append({"mode": "asm/28", "sessions": 100, "skipped": "100 sessions > 2 x 14 groups"})
    data = {
        "sns": 1, "cns": 1, "file_kib": 32, "rate": 256000, "timeout": 12.0, "block": 1400,
        "modes": ["ssm", "asm/28"], "sessions": [2, 100], "reps": 1, "points": points,
    }  # fmt: skip
    rows = groups.summary(data)
    assert [(r["mode"], r["sessions"], r["collisions"]) for r in rows] == [
        ("ssm", 2, [2]),
        ("asm/28", 2, [2]),
    ]
    section = groups.report(data, ReportOut(tmp_path, "groups"))
    assert len(section.tables) == 2 and "ssm (232.0.0.0/8, 16777214 groups)" in section.tables[0]
    assert (tmp_path / section.plots[0]).stat().st_size > 1000
    assert section.conclusion.startswith("With random SSM groups up to S=2, at most 2 sessions")
    assert any(n.startswith("Not run: asm/28 S=100") for n in section.notes)


@pytest.mark.netns
@pytest.mark.skipif(_reason is not None, reason=f"groups experiment: {_reason}")
def test_smoke_run_ssm_has_no_foreign_packets_and_every_file_verifies(
    smoke_lab: SmokeLab, tmp_path: Path
) -> None:
    params = parse_params(groups.PARAMS, "smoke")
    data = smoke_lab.data("groups")

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
