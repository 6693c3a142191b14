"""The lab's framework without a network: parameters, statistics, tables,
progress and the report writer (no root needed)."""

from __future__ import annotations

import io
import json
import math
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.lab import __main__ as lab_main
from mcp2p.lab import report as report_mod
from mcp2p.lab.experiment import (
    Context,
    Param,
    ReportOut,
    Section,
    fmt_spread,
    md_table,
    parse_params,
    spread,
)

PARAMS = {
    "cns": Param([1, 2, 4, 8], [1, 4], [2], "CNs"),
    "loss": Param([0.0, 0.01], [0.01], [0.01], "loss"),
    "size": Param(8 << 20, 4 << 20, 1 << 20, "bytes"),
    "tcp": Param(True, True, False),
}


def test_parameters_come_at_three_sizes_and_overrides_take_the_default_type() -> None:
    assert parse_params(PARAMS, "quick")["cns"] == [1, 4]
    assert parse_params(PARAMS, "smoke")["size"] == 1 << 20
    values = parse_params(
        PARAMS, "full", [("cns", "2,8"), ("loss", "5%"), ("size", "1e6"), ("tcp", "no")]
    )
    assert values == {"cns": [2, 8], "loss": [0.05], "size": 1_000_000, "tcp": False}


@pytest.mark.parametrize(
    "override, message",
    [
        (("nodes", "3"), "unknown parameter --nodes"),
        (("cns", "x"), "--cns x"),
        (("tcp", "maybe"), "yes or no"),
    ],
)
def test_bad_overrides_are_one_clear_error(override: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_params(PARAMS, "full", [override])


@given(st.lists(st.floats(allow_nan=True, allow_infinity=False, width=32), max_size=20))
def test_spread_ignores_nan_and_orders_min_median_max(values: list[float]) -> None:
    med, lo, hi = spread(values)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        assert math.isnan(med)
    else:
        assert lo <= med <= hi and lo == min(finite) and hi == max(finite)


def test_fmt_spread_and_md_table() -> None:
    assert fmt_spread([3.0, 1.0, 2.0]) == "2.0 (1.0-3.0)"
    assert fmt_spread([2.0, 2.0], unit=" s") == "2.0 s"
    assert fmt_spread([]) == "-"
    table = md_table(["tool", "time"], [["a|b", 1]])
    assert table.splitlines() == ["| tool | time |", "|---|---|", "| a\\|b | 1 |"]


def test_progress_says_what_runs_and_which_repetition(tmp_path: Path) -> None:
    out = io.StringIO()
    ctx = Context(tmp_path, label="1/4 unicast", stream=out, reps=3)
    seen = ctx.repeat("n=8 loss=1%", lambda rep: rep * 10)
    assert seen == [10, 20, 30]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/4 unicast] n=8 loss=1% rep 1/3")
    assert lines[-1].startswith("[1/4 unicast] n=8 loss=1% rep 3/3")


def _fake_experiment(fail_report: bool = False) -> types.ModuleType:
    m = types.ModuleType("fake")
    m.NAME = "fake"  # type: ignore[attr-defined]
    m.TITLE = "A fake experiment"  # type: ignore[attr-defined]
    m.QUESTION = "Does the report come from the JSON?"  # type: ignore[attr-defined]
    m.PARAMS = {"n": Param([1, 2], [1], [1])}  # type: ignore[attr-defined]

    def run(ctx: Context, n: list[int]) -> dict[str, Any]:
        return {"points": [{"n": k, "t": [k * 1.0, k * 2.0, k * 3.0]} for k in n]}

    def report(data: dict[str, Any], out: ReportOut) -> Section:
        if fail_report:
            raise RuntimeError("broken report")
        fig, ax = out.figure()
        ax.plot([p["n"] for p in data["points"]], [p["t"][1] for p in data["points"]])
        rows = [[p["n"], fmt_spread(p["t"])] for p in data["points"]]
        return Section(
            setup="Nothing real.",
            tables=[md_table(["n", "t"], rows)],
            plots=[out.save(fig, "t")],
            conclusion=f"The slowest point took {max(max(p['t']) for p in data['points'])} s.",
        )

    m.run = run  # type: ignore[attr-defined]
    m.report = report  # type: ignore[attr-defined]
    return m


def test_all_writes_json_report_and_plots_and_records_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _fake_experiment()
    bad = types.ModuleType("bad")
    bad.TITLE, bad.QUESTION = "Broken", "?"  # type: ignore[attr-defined]
    bad.PARAMS = {}  # type: ignore[attr-defined]

    def boom(ctx: Context) -> dict[str, Any]:
        raise OSError("no such tool")

    bad.run = boom  # type: ignore[attr-defined]
    modules = {"unicast": good, "discovery": bad}
    monkeypatch.setattr(lab_main, "load", modules.__getitem__)
    monkeypatch.setattr(report_mod, "load", modules.__getitem__)
    out = tmp_path / "report"
    results = lab_main.run_experiments(
        ["unicast", "discovery"], "full", out, workdir=tmp_path, stream=io.StringIO()
    )
    assert "OSError: no such tool" in results["experiments"]["discovery"]["error"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiments"]["unicast"]["data"]["points"][1]["t"] == [2.0, 4.0, 6.0]
    assert saved["machine"]["cores"] >= 1 and saved["reps"] == 3
    text = (out / "REPORT.md").read_text()
    assert "## 1. A fake experiment" in text and "| 2 | 4.0 (2.0-6.0) |" in text
    assert "The slowest point took 6.0 s." in text
    assert "![unicast-t.png](unicast-t.png)" in text and (out / "unicast-t.png").stat().st_size
    assert "## 2. Broken" in text and "This experiment failed" in text

    # Re-rendering from the JSON alone gives the same report.
    before = text
    (out / "REPORT.md").unlink()
    report_mod.write_report(report_mod.load_results(out), out)
    assert (out / "REPORT.md").read_text() == before

    # A report() that raises is shown as such; the other sections stay.
    modules["unicast"] = _fake_experiment(fail_report=True)
    report_mod.write_report(saved, out)
    assert "The report of this experiment failed" in (out / "REPORT.md").read_text()


def test_the_command_line_refuses_unknown_parameters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_main, "load", {"unicast": _fake_experiment()}.__getitem__)
    monkeypatch.setattr(lab_main.os, "geteuid", lambda: 0)
    with pytest.raises(SystemExit) as e:
        lab_main.main(["run", "unicast", "--nodes", "3"])
    assert e.value.code == 2
    assert "unknown parameter --nodes" in capsys.readouterr().err
