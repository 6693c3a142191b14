"""The lab's smoke run, shared by the suite: ``python -m mcp2p.lab all --size
smoke`` runs every experiment once (one topology, one point each, about a
minute of real daemons in namespaces). ``test_lab`` checks the run, its
report and that it left nothing behind; each experiment's own tests check
their part of the same JSON. Running each experiment again on its own, as
the suite once did, doubled its longest minute and checked nothing more.

Root only; all traffic stays in the namespaces the experiments make.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp2p.lab.net import NS_PREFIX

# What `lab all` needs: every experiment's tools (the keys experiment's BIRD too).
SMOKE_TOOLS = ("ip", "tc", "nft", "ethtool", "bridge", "smcrouted", "bird", "birdc")


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)}


@dataclass
class SmokeLab:
    """One finished ``lab all --size smoke``: its process, its report
    directory (``out``) and the lab's namespaces before and after it."""

    cp: subprocess.CompletedProcess[str]
    out: Path
    before: set[str]
    after: set[str]

    def entry(self, name: str) -> dict[str, Any]:
        """Experiment ``name``'s entry as the lab wrote it (``NAME.json``)."""
        path = self.out / f"{name}.json"
        assert path.exists(), f"no {path.name}: " + self.cp.stdout[-2000:] + self.cp.stderr[-4000:]
        entry: dict[str, Any] = json.loads(path.read_text())
        return entry

    def data(self, name: str) -> dict[str, Any]:
        """Experiment ``name``'s data; a test fails here, with the
        experiment's traceback, if it failed."""
        entry = self.entry(name)
        assert "error" not in entry, entry["error"][-4000:]
        data: dict[str, Any] = entry["data"]
        return data
