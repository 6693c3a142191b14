"""Experiment 3, SSM or ASM: group collisions among many concurrent sessions.

Topology: one switch with IGMP snooping, a querier and IGMPv3 (so the bridge
forwards a group, and in SSM a (source, group) channel, only to the ports
that joined it), ``sns`` SN hosts and ``cns`` CN hosts, real daemons on all.
Each SN shares many small files; each run makes ``S`` fetches at once, one
distinct file each, spread over the CNs and SNs, so ``S`` multicast
sessions run at the same time, each at a modest fixed rate.

Modes: ``ssm`` (random groups of 232.0.0.0/8, the SN as source) and ``asm/N``
(random groups of the ASM pool 239.192.0.0/N; an ASM session listens on its
group and moves when it hears another session's SSRC). For each run it
records, per fetch, the group it started on, the groups it was moved to,
its lifetime and its receiver counters (``foreign``: right group, other
session); per host the data packets (UDP to the data port) that arrived on
its interface (an nftables counter on ingress) and its link counters; per
SN the session moves and the packets sent (from its log); per daemon its
CPU time. ``report`` computes the collisions, the packets delivered to
hosts that did not want them and the cost of moving, and compares with the
birthday-problem model for the pool size.

The package, one module per job: `model` (modes, pools, the birthday
problem; pure), `record` (one run's logs, driver outputs and counters made
into a point), `runner` (the namespaces, daemons and fetches: `run`),
`analysis` (recorded points to figures: `summary`) and `report` (the
REPORT.md section: `report`). The experiment framework (`mcp2p.lab.experiment`)
uses what this module exports: NAME, TITLE, QUESTION, PARAMS, run, report.
"""

from __future__ import annotations

from mcp2p.lab.experiment import Param
from mcp2p.lab.experiments.groups.analysis import (
    collisions,
    completion,
    concurrency,
    fetch_rows,
    model_overlap,
    summary,
    unwanted,
)
from mcp2p.lab.experiments.groups.model import (
    BLOCK,
    FETCH_FIELDS,
    birthday,
    model_collisions,
    parse_mode,
    usable_groups,
)
from mcp2p.lab.experiments.groups.report import report
from mcp2p.lab.experiments.groups.runner import run

__all__ = [
    "BLOCK",
    "FETCH_FIELDS",
    "NAME",
    "PARAMS",
    "QUESTION",
    "TITLE",
    "birthday",
    "collisions",
    "completion",
    "concurrency",
    "fetch_rows",
    "model_collisions",
    "model_overlap",
    "parse_mode",
    "report",
    "run",
    "summary",
    "unwanted",
    "usable_groups",
]

NAME = "groups"
TITLE = "SSM or ASM"
QUESTION = (
    "With many concurrent sessions drawn from an ASM pool vs random SSM groups: "
    "collisions, packets delivered to hosts that did not want them, and what the "
    "ASM collision handling costs."
)
PARAMS = {
    "sessions": Param([10, 100, 300], [10, 100], [10], "sessions per run (one file each)"),
    "modes": Param(
        ["ssm", "asm/14", "asm/24", "asm/28"],
        ["ssm", "asm/24", "asm/28"],
        ["ssm", "asm/28"],
        "ssm (232.0.0.0/8) or asm/N (ASM pool 239.192.0.0/N)",
    ),
    "oversubscribe": Param(
        8.0, 2.0, 2.0, "skip a point with more sessions than this many times the pool's groups"
    ),
    "sns": Param(4, 4, 2, "SN hosts"),
    "cns": Param(4, 4, 2, "CN hosts"),
    "file_kib": Param(32, 32, 32, "size of each file, KiB"),
    "rate": Param(256_000, 256_000, 256_000, "session rate and its ceiling, bit/s"),
    "timeout": Param(12.0, 12.0, 12.0, "seconds one run may take before it is cut"),
}
