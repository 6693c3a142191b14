"""The lab's tests share one smoke run of the whole lab (`tests.lab.smoke`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mcp2p.lab.net import missing_requirements

from .smoke import SMOKE_TOOLS, SmokeLab, lab_namespaces


@pytest.fixture(scope="session")
def smoke_lab(tmp_path_factory: pytest.TempPathFactory) -> SmokeLab:
    reason = missing_requirements(SMOKE_TOOLS)
    if reason:
        pytest.skip(f"the lab's smoke run: {reason}")
    work = tmp_path_factory.mktemp("smoke-lab")
    out = work / "report"
    before = lab_namespaces()
    cp = subprocess.run(
        [sys.executable, "-m", "mcp2p.lab", "all", "--size", "smoke"]
        + ["--out", str(out), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=420,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return SmokeLab(cp, out, before, lab_namespaces())
