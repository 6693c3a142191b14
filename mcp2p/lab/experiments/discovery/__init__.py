"""Experiment 2, query or announcement: time to find a file and discovery bytes.

Emulation (real ``twistd mcp2p`` daemons in namespaces): a searcher ``s``
and sharing nodes at hop distances ``rings`` (1: on the searcher's LAN, a
switch; k >= 2: behind k - 1 smcroute routers in a chain), each sharing F
tiny files. Method ``query``: the searcher asks its daemon's API
(``POST /api/search``, answers 1) for one file of the farthest node; per
search the daemon's own ``elapsed`` and the bytes on every link (veth
counters before and after), plus the idle bytes per minute on every link
when nobody searches. Method ``sap``: every node announces each of its
files (one SAP/SDP packet per file, `mcp2p.discovery.sap.SAPAnnouncer`) at
RFC 2974's rate, run ``sap_speedup`` = k times faster than the RFC (limit
4000 k bit/s, minimum interval 300/k s) so that the lab's minutes stand
for k times as many real ones; once the announcers are past their first
batch, a searcher daemon is started cold and polls its SAP directory
until the farthest node's file is there (time to find, from its API being
up); the bytes on every link are counted over the whole measured window.
Times and bytes are reported as measured and scaled back to the RFC (time
times k, bytes divided by k).

Simulation (`mcp2p.lab.sim`): the same ring search and interval rule on
generated topologies of ``sim_peers`` nodes, ``sim_files`` files per node.

The package, one module per job: `model` (parameter checks, the daemons'
config sections, the SAP timing of a point; pure), `network` (the emulated
network and its daemons), `runner` (the two methods measured there, and the
simulation: `run`), `analysis` (recorded points to table rows) and `report`
(the REPORT.md section: `report`). The experiment framework
(`mcp2p.lab.experiment`) uses what this module exports: NAME, TITLE,
QUESTION, PARAMS, run, report.
"""

from __future__ import annotations

from mcp2p.lab.experiment import Param
from mcp2p.lab.experiments.discovery.analysis import query_rows, sap_rows
from mcp2p.lab.experiments.discovery.report import report
from mcp2p.lab.experiments.discovery.runner import run

__all__ = ["NAME", "PARAMS", "QUESTION", "TITLE", "query_rows", "report", "run", "sap_rows"]

NAME = "discovery"
TITLE = "Query or announcement"
QUESTION = (
    "Time to find a file and discovery bytes per minute on every link, against the number "
    "of shared files and nodes, for the hop-limited query and for SAP/SDP."
)
PARAMS = {
    "rings": Param([1, 2, 3], [1, 2, 3], [2], "hop distance of each sharing node (1: same LAN)"),
    "files": Param([10, 100, 1000, 10000], [10, 1000], [10], "files per node, query method"),
    "sap_files": Param([10, 100, 300, 1000], [10, 100], [10], "files per node, SAP method"),
    "sap_speedup": Param(
        100, 100, 100, "SAP at k x RFC 2974: limit 4000k bit/s, min interval 300/k"
    ),
    "sap_timeout": Param(90.0, 30.0, 12.0, "seconds a cold searcher may wait for the files"),
    "sap_targets": Param(5, 3, 1, "files of the farthest node a cold searcher waits for"),
    "idle": Param(10.0, 3.0, 2.0, "seconds of idle query-method traffic measured"),
    "sim_peers": Param(
        [1000, 10_000, 100_000, 1_000_000], [1000, 10_000, 100_000], [1000], "simulated nodes"
    ),
    "sim_files": Param([10, 1000, 100_000], [10, 1000, 100_000], [10, 1000], "files per node"),
    "sim_kinds": Param(["ba", "tree"], ["ba"], ["ba"], "router graphs: ba, tree"),
    "sim_samples": Param(20, 10, 5, "sampled searches per simulated point"),
    "lan_size": Param(10, 10, 10, "simulated nodes per LAN"),
    "searches_per_node_hour": Param(1.0, 1.0, 1.0, "simulated searches per node per hour"),
}
