"""``python -m mcp2p.demo``: two real nodes, a search and a fetch, as a newcomer runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp2p.demo import SAMPLE


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp2p.demo", "--once", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_demo_once_fetches_the_sample_and_stops_both_nodes(tmp_path: Path) -> None:
    out = demo("--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    root = tmp_path / "demo"
    original = (root / "A" / "share" / SAMPLE).read_bytes()
    assert len(original) == 4 << 20
    assert (root / "B" / "downloads" / SAMPLE).read_bytes() == original
    # The commands it ran, as the user can type them.
    assert f"--config demo/B.ini search {SAMPLE}" in out.stdout
    assert f"--config demo/B.ini get {SAMPLE} -o demo/B/downloads" in out.stdout
    for name in ("A", "B"):
        assert not (root / name / "node.pid").exists()  # stopped, by pid
        assert not (root / name / "state" / "api.port").exists()  # cleanly
        assert "Traceback" not in (root / name / "twistd.log").read_text()


def test_a_node_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    (root / "B").mkdir(parents=True)
    (root / "B" / "state").write_text("a file where the state directory goes")
    out = demo("--dir", str(root), cwd=tmp_path)
    assert out.returncode == 1
    assert "node B exited with status" in out.stderr, out.stderr
    assert "the end of" in out.stderr and "twistd.log" in out.stderr
    assert "state" in out.stderr.split("twistd.log", 1)[1]  # the log's own words
    assert not (root / "A" / "node.pid").exists()  # A was stopped too


def test_demo_runs_until_interrupted_then_stops_the_nodes(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp2p.demo", "--dir", str(root)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends if the demo exits early
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        assert lines and lines[-1].startswith("Press Ctrl-C"), "".join(lines)
        assert any("--config demo/B.ini status" in x for x in lines)
        pids = [int(p) for p in lines[-1].split("pids ")[1].rstrip(").\n").split()]
        assert len(pids) == 2
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopping the nodes" in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (root / "A" / "state" / "api.port").exists()
