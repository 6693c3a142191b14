"""What the benchmarks share (`mcp2p.lab.bench`): sizes, medians, JSON, memory."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.lab import bench
from mcp2p.lab.bench import BadSize, parse_size, wait_api, write_json
from mcp2p.lab.procstat import memory_kib, peak_rss


@pytest.mark.parametrize(
    "text, size",
    [
        # every spelling the Makefile, README and the benches' docstrings use
        ("4096", 4096),
        ("1GiB", 1 << 30),
        ("128MiB", 128 << 20),
        ("64MiB", 64 << 20),
        ("500MB", 500 * 10**6),
        ("1G", 1 << 30),
        ("4G", 4 << 30),
        ("256M", 256 << 20),
        ("200M", 200 << 20),
        ("20M", 20 << 20),
        ("8M", 8 << 20),
        ("1.5G", 3 << 29),
        (" 2 k ", 2048),
        ("1GB", 10**9),
        ("4096B", 4096),
    ],
)
def test_sizes_as_the_benches_are_given_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@given(st.integers(0, 1 << 20), st.sampled_from(["K", "M", "G", "T"]), st.booleans())
def test_binary_units_with_or_without_ib(n: int, unit: str, ib: bool) -> None:
    power = "KMGT".index(unit) + 1
    assert parse_size(f"{n}{unit}{'iB' if ib else ''}") == n * 1024**power


@pytest.mark.parametrize("text", ["", "G", "1X", "-1M", "1 2M", "1MM", "M1", "nan"])
def test_what_is_not_a_size_is_one_clear_error(text: str) -> None:
    with pytest.raises(BadSize, match="not a size"):
        parse_size(text)
    # a ValueError for code, one line for argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=parse_size)
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", text])
    assert issubclass(BadSize, ValueError)


def test_medians_leave_failed_runs_out() -> None:
    nan = math.nan
    assert bench.median([3.0, nan, 1.0, 2.0]) == 2.0
    assert math.isnan(bench.median([nan, nan]))
    assert bench.spread([0.2, 0.1, nan, 0.3]) == (0.2, 0.1, 0.3)


def test_write_json_writes_whole_files_with_a_newline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    write_json(out, {"a": 1})
    write_json(str(out), {"cells": [1, 2], "x": math.nan})
    text = out.read_text()
    assert text.endswith("}\n") and json.loads(text)["cells"] == [1, 2]
    assert "NaN" in text  # a failed cell stays visible, as before
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_memory_of_this_process_and_of_a_child(tmp_path: Path) -> None:
    mine = memory_kib()
    assert 0 < mine["VmRSS"] <= mine["VmHWM"]
    assert peak_rss(os.getpid()) >= mine["VmRSS"] * 1024
    assert peak_rss(2**22 + 12345) == 0  # gone: 0, not an error
    with pytest.raises(OSError):
        memory_kib(2**22 + 12345)


def test_wait_api_reads_the_port_or_says_the_daemon_did_not_start(tmp_path: Path) -> None:
    state = tmp_path / "node" / "state"
    state.mkdir(parents=True)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time, pathlib; time.sleep(0.2); "
            f"pathlib.Path({str(state / 'api.port')!r}).write_text('4321'); time.sleep(30)",
        ]
    )
    try:
        assert wait_api(state, writer, timeout=20) == 4321
    finally:
        writer.kill()
        writer.wait()
    (state / "api.port").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match=f"daemon in {tmp_path / 'node'} did not start"):
        wait_api(state, dead, timeout=20)


def test_every_bench_is_registered_with_a_main_and_a_first_line() -> None:
    for name in bench.BENCHES:
        module = bench.bench_module(name)
        assert callable(module.main) and (module.__doc__ or "").strip(), name
        assert bench.bench_module(f"bench_{name}") is module
    with pytest.raises(ValueError, match="unknown bench 'nope'"):
        bench.bench_module("nope")
