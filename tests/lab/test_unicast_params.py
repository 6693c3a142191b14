"""Experiment 1's parameters and its IPv6 precondition, without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp2p import config
from mcp2p.lab.experiment import Context, parse_params
from mcp2p.lab.experiments import unicast
from mcp2p.lab.net import LabError


def _params(**over: object) -> dict[str, object]:
    params = parse_params(unicast.PARAMS, "smoke")
    params.update(over)
    return params


def test_the_full_lab_headline_is_64_mib_at_8_cns_while_the_grid_stays_small() -> None:
    full = parse_params(unicast.PARAMS, "full")
    assert full["headline_mib"] >= 64 and max(full["cns"]) == 8 and full["size_mib"] < 64
    assert unicast._headline_point(full["losses"], full["cns"]) == (0.01, 8)
    assert parse_params(unicast.PARAMS, "smoke", [("family", "6")])["family"] == 6


@pytest.mark.parametrize(
    "over, message",
    [({"family": 5}, "family: 4 or 6"), ({"headline_mib": -1}, "headline_mib")],
)
def test_bad_family_or_headline_is_one_clear_error(
    tmp_path: Path, over: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        unicast.run(Context(tmp_path), **_params(**over))


def test_family_6_on_an_mcp2p_without_ipv6_sessions_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetching = {k: v for k, v in config.SCHEMA["fetching"].items() if k != "family"}
    monkeypatch.setitem(config.SCHEMA, "fetching", fetching)
    with pytest.raises(LabError) as e:
        unicast.run(Context(tmp_path), **_params(family=6))
    assert str(e.value).startswith("--family 6: this mcp2p has no IPv6 data sessions")
    assert "\n" not in str(e.value)
    # the peers alone still run over IPv6 (checked with root in test_unicast_experiment)
    assert unicast.ipv6_missing() is not None
