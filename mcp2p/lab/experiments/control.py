"""Experiment 4, what the control channel carries: its overhead, forgery, block choice.

Topology: `StarLab`, one switch (IGMP snooping off, so multicast is flooded)
with the SN and CN hosts ``cn1`` ... ``cnN``, every link shaped to ``rate``
Mbit/s, real daemons on every host (the SN's sessions at 95% of the link
rate), plus a ``forger`` host on the same switch for part 2.

1. Overhead. An nftables table in each CN's namespace (only there) counts,
   on the CN's veth: data (UDP from the SN but discovery answers: the data
   packets and the digest lists that authenticate them), SN->CN control (TCP
   from the SN's control port: the lists' hashes, manifest, TLS and TCP
   framing) and CN->SN control (TCP to the SN's control port: UpdateWanted
   and ReportLoss, TCP acks). The receiver counts the lists and the digests
   in them: 8 bytes a packet, and 50 bytes of headers a list, within data.
   Run for 1 and 4 CNs, multicast and unicast; everything is per data byte
   the same CN received.
2. Forgery. During a 1-CN multicast fetch, a forger process in the
   ``forger`` namespace sniffs the session's packets on its port of the
   switch (AF_PACKET) and sends ``forged_packets`` copies of the latest one
   at 1 ms spacing, each with flipped payload bytes and a sequence number a
   little ahead of the SN's (``lead``), with the SN's SSRC and, since an SSM
   receiver filters by source, the SN's source address (raw IP socket), to
   the session's group and port. The CN holds such a packet until the
   notice for its sequence number exposes it: its receiver counts
   ``forged`` and how long each was held (``forged_hold_max``/``_sum``).
   The file must still verify.
3. Block choice with late joiners. For each policy of ``[serving]
   scheduler`` (demand-weighted random, uniform random over the needed
   blocks, sequential carousel) the SN is restarted and ``late_cns`` CNs
   fetch one file in multicast, CN i starting ``i * stagger`` s after the
   first. Per CN: its completion time (from its own start), the blocks it
   received that it held already (store ``duplicates``) and the packets it
   accepted.

`run` returns every repetition of every point; `report` computes the tables,
plot and conclusion from that alone.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp2p.core.scheduler import SCHEDULERS
from mcp2p.lab.experiment import Context, Param, ReportOut, Section, fmt_spread, md_table, spread
from mcp2p.lab.net import Host, LabError, Network, missing_requirements
from mcp2p.lab.progs import command
from mcp2p.lab.transfer import FetchResult, StarLab

NAME = "control"
TITLE = "What the control channel carries"
QUESTION = (
    "What do the digest lists, their hashes and wanted-map updates cost per data byte, how fast "
    "does a CN drop a forged packet, and does demand-weighted block choice beat "
    "uniform random and a sequential carousel when CNs join late?"
)
PARAMS = {
    "rate": Param(100, 100, 100, "link rate, Mbit/s (every link, both ends)"),
    "overhead_cns": Param([1, 4], [4], [1], "CNs per overhead point"),
    "overhead_modes": Param(
        ["multicast", "unicast"], ["multicast", "unicast"], ["multicast"], "modes of part 1"
    ),
    "overhead_mb": Param(8, 4, 4, "file size of parts 1 and 2, MiB"),
    "forged_packets": Param(200, 200, 200, "forged packets per burst (1 ms apart)"),
    "lead": Param(64, 64, 64, "sequence numbers a forged packet is ahead of the SN's"),
    "policies": Param(
        ["demand", "uniform", "sequential", "mostwanted"],
        ["demand", "uniform", "sequential", "mostwanted"],
        ["demand", "mostwanted"],
        "[serving] scheduler policies of part 3",
    ),
    "late_cns": Param(4, 3, 2, "CNs of part 3"),
    "stagger": Param(0.75, 0.3, 0.3, "seconds between two CNs' starts in part 3"),
    "late_mb": Param(16, 8, 8, "file size of part 3, MiB"),
    "losses": Param([0.0, 0.01], [0.0], [0.0], "UDP loss into each CN in part 3"),
    "timeout": Param(120, 60, 30, "seconds a CN may take before it counts as failed"),
}

MB = 1 << 20
NFT_TABLE = "mcp2p_control"
PACKET_BITS = (1400 + 22 + 28) * 8  # a data packet on the wire: block, RTP header, IP+UDP
NOTICE_BYTES = 8  # wire.rtp.DIGEST_LEN: one 8-byte digest per packet, in a digest list
LIST_BYTES = 22 + 28  # a digest list's RTP and IP+UDP headers
DATA_PORT = 7712  # [serving] data_port, default: where multicast data goes
QUERY_PORT = 7711  # [discovery] query_port: the SN's answers are not data
SAP_PORT = 9875  # [sap] port
CONTROL_PORT = 7713  # [serving] control_port, default
FORGER_WAIT = 30.0  # seconds the forger waits for the session's first packet


# -- measuring -----------------------------------------------------------------


def _nft_install(host: Host, ifname: str, sn_ip: str) -> None:
    """Counters in ``host``'s namespace only: data in, control in, control out."""
    script = (
        f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        f"  chain pre {{\n"
        f"    type filter hook prerouting priority -300; policy accept;\n"
        f'    iifname "{ifname}" ip saddr {sn_ip} udp sport != {{ {QUERY_PORT}, {SAP_PORT} }}'
        " counter\n"
        f'    iifname "{ifname}" ip saddr {sn_ip} tcp sport {CONTROL_PORT} counter\n'
        f"  }}\n"
        f"  chain out {{\n"
        f"    type filter hook output priority -300; policy accept;\n"
        f'    oifname "{ifname}" ip daddr {sn_ip} tcp dport {CONTROL_PORT} counter\n'
        f"  }}\n"
        f"}}\n"
    )
    cp = host.run(["nft", "-f", "-"], input=script, timeout=15)
    if cp.returncode != 0:
        raise LabError(f"{host.name}: nft failed: {cp.stderr.strip()}")


def _nft_read(host: Host) -> dict[str, int]:
    """Bytes so far: ``data`` in, ``ctl_in`` (SN->CN), ``ctl_out`` (CN->SN)."""
    cp = host.run(["nft", "-j", "list", "table", "inet", NFT_TABLE], timeout=15)
    if cp.returncode != 0:
        raise LabError(f"{host.name}: cannot read the counters: {cp.stderr.strip()}")
    counters = [
        expr["counter"]
        for item in json.loads(cp.stdout).get("nftables", [])
        for expr in item.get("rule", {}).get("expr", [])
        if "counter" in expr
    ]
    if len(counters) != 3:
        raise LabError(f"{host.name}: expected three counters, found {len(counters)}")
    return {
        k: int(c["bytes"]) for k, c in zip(("data", "ctl_in", "ctl_out"), counters, strict=True)
    }


def _receiver(cn: Any) -> dict[str, float]:
    """The CN's receiver counters, summed over its sources."""
    total: dict[str, float] = {}
    for counters in cn.receivers:
        for key, value in counters.items():
            if isinstance(value, int | float):
                if key == "forged_hold_max":
                    total[key] = max(total.get(key, 0.0), float(value))
                else:
                    total[key] = total.get(key, 0) + value
    return total


def _cn_record(cn: Any) -> dict[str, Any]:
    recv = _receiver(cn)
    return {
        "name": cn.name,
        "ok": cn.ok,
        "verified": cn.verified,
        "error": cn.error[:300],
        "start": cn.start,
        "elapsed": cn.elapsed if cn.done else None,
        "wall": cn.wall if cn.wall == cn.wall else None,
        "duplicates": int(cn.store.get("duplicates", 0)),
        "receiver": recv,
    }


class _Lab:
    """One StarLab (plus the forger host) for the whole run."""

    def __init__(self, net: Network, root: Path, cns: int, rate_mbit: int) -> None:
        self.rate = rate_mbit * 1_000_000
        self.star = StarLab(net, root, cns, rate=self.rate)
        self.forger = net.add_host("forger")
        net.link(self.forger, self.star.switch, rate=self.rate)
        self.forger.wait_ready()
        self.sn_ip = self.star.sn.addr()
        for host in self.star.hosts:
            _nft_install(host, host.ifname(self.star.switch), self.sn_ip)
        self.policy: str | None = None

    def sn(self, policy: str) -> None:
        """The SN with this block-choice policy (restarted when it changes)."""
        if policy == self.policy and self.star.sn_proc and self.star.sn_proc.poll() is None:
            return
        self.star.stop_sn()
        self.policy = None
        rate = f"{int(self.rate * 0.95)}"
        self.star.start_sn(rate=rate, scheduler=policy)
        self.policy = policy

    def fetch(self, n: int, name: str, mode: str, timeout: float, **kw: Any) -> FetchResult:
        return self.star.fetch(n, name=name, mode=mode, timeout=timeout, **kw)


def _overhead(lab: _Lab, n: int, mode: str, name: str, timeout: float) -> dict[str, Any]:
    lab.sn("demand")
    hosts = lab.star.hosts[:n]
    before = {h.name: _nft_read(h) for h in hosts}
    t0 = time.monotonic()
    result = lab.fetch(n, name, mode, timeout)
    after = {h.name: _nft_read(h) for h in hosts}
    cns = []
    for cn in result.cns:
        rec = _cn_record(cn)
        rec["bytes"] = {k: after[cn.name][k] - before[cn.name][k] for k in after[cn.name]}
        receiver = rec["receiver"]
        rec["notice_bytes"] = (
            int(receiver.get("notices", 0)) * NOTICE_BYTES
            + int(receiver.get("lists", 0)) * LIST_BYTES
        )
        cns.append(rec)
    return {"cns": cns, "seconds": time.monotonic() - t0, "sn_tx_bytes": result.sn_tx_bytes}


def _forged(lab: _Lab, name: str, packets: int, lead: int, timeout: float) -> dict[str, Any]:
    lab.sn("demand")
    ifname = lab.forger.ifname(lab.star.switch)
    args = [ifname, lab.sn_ip, str(DATA_PORT), str(packets), "0.001", str(lead), str(FORGER_WAIT)]
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = lab.forger.popen(
        command("forger", *args),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # the forger's socket is open before the session starts
        result = lab.fetch(1, name, "multicast", timeout)
        try:
            proc.wait(timeout=FORGER_WAIT + packets * 0.01 + 5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        lab.forger.kill(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
        out.close()
    forger: dict[str, Any] = {"error": text[-500:]}
    for line in reversed(text.splitlines()):
        try:
            forger = json.loads(line)
            break
        except ValueError:
            continue
    return {"cn": _cn_record(result.cns[0]), "forger": forger}


def _late(
    lab: _Lab, policy: str, n: int, stagger: float, name: str, timeout: float
) -> dict[str, Any]:
    lab.sn(policy)
    result = lab.fetch(n, name, "multicast", timeout, starts=[i * stagger for i in range(n)])
    return {"cns": [_cn_record(cn) for cn in result.cns], "wall": result.wall}


def _guard(fn: Any, *args: Any) -> dict[str, Any]:
    """A point that fails is recorded as failed, not raised."""
    try:
        out: dict[str, Any] = fn(*args)
        return out
    except (LabError, OSError, subprocess.SubprocessError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"[:1000]}


def _each(fn: Any, *args: Any) -> Callable[[int], dict[str, Any]]:
    """What `Context.repeat` calls per repetition: ``fn(*args)``, guarded."""

    def one(rep: int) -> dict[str, Any]:
        return _guard(fn, *args)

    return one


def run(ctx: Context, **params: Any) -> dict[str, Any]:
    reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
    if reason:
        raise LabError(f"the control experiment needs root and tools: {reason}")
    for policy in params["policies"]:
        if policy not in SCHEDULERS:
            raise ValueError(f"unknown policy {policy!r}: {', '.join(SCHEDULERS)}")
    for mode in params["overhead_modes"]:
        if mode not in ("multicast", "unicast"):
            raise ValueError(f"unknown mode {mode!r}: multicast or unicast")
    reps = ctx.reps
    timeout = float(params["timeout"])
    most = max([*params["overhead_cns"], params["late_cns"], 1])
    data: dict[str, Any] = {"params": params, "reps": reps, "overhead": [], "forged": []}
    data["late"] = []
    t0 = time.monotonic()
    with Network() as net:
        lab = _Lab(net, ctx.subdir("lab"), most, params["rate"])
        lab.star.share(params["overhead_mb"] * MB, name="small.bin")
        lab.star.share(params["late_mb"] * MB, name="late.bin")
        for mode in params["overhead_modes"]:
            for n in params["overhead_cns"]:
                runs = ctx.repeat(
                    f"overhead {mode} {n} CN",
                    _each(_overhead, lab, n, mode, "small.bin", timeout),
                )
                data["overhead"].append({"mode": mode, "cns": n, "runs": runs})
        data["forged"] = ctx.repeat(
            "forged burst",
            _each(_forged, lab, "small.bin", params["forged_packets"], params["lead"], timeout),
        )
        for loss in params["losses"]:
            lab.star.set_loss(loss or None)
            for policy in params["policies"]:
                runs = ctx.repeat(
                    f"late joiners {policy} loss {loss:.0%}",
                    _each(
                        _late,
                        lab,
                        policy,
                        params["late_cns"],
                        params["stagger"],
                        "late.bin",
                        timeout,
                    ),
                )
                data["late"].append({"policy": policy, "loss": loss, "runs": runs})
        lab.star.set_loss(None)
        lab.star.stop()
    data["seconds"] = time.monotonic() - t0
    ctx.done()
    return data


# -- reporting -----------------------------------------------------------------


def _ok_cns(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [cn for run in runs for cn in run.get("cns", []) if cn.get("ok")]


def _failed(runs: list[dict[str, Any]]) -> int:
    bad = 0
    for run in runs:
        if "error" in run and "cns" not in run:
            bad += 1
        bad += sum(1 for cn in run.get("cns", []) if not cn.get("ok"))
    return bad


def _ratio(cn: dict[str, Any], key: str) -> float:
    data = cn["bytes"]["data"]
    if not data:
        return math.nan
    value = cn["notice_bytes"] if key == "notices" else cn["bytes"][key]
    return float(value) / data


def report(data: dict[str, Any], out: ReportOut) -> Section:
    p = data["params"]
    reps = data["reps"]
    tables: list[str] = []
    notes: list[str] = []

    # 1. overhead
    rows = []
    overhead_pts = []
    for point in data["overhead"]:
        cns = _ok_cns(point["runs"])
        ratios = {k: [_ratio(c, k) * 1000 for c in cns] for k in ("notices", "ctl_in", "ctl_out")}
        overhead_pts.append((point, ratios))
        rows.append(
            [
                point["mode"],
                point["cns"],
                fmt_spread(ratios["notices"], 2),
                fmt_spread(ratios["ctl_in"], 2),
                fmt_spread(ratios["ctl_out"], 2),
                fmt_spread([c["receiver"].get("lost", 0) for c in cns], 0),
                _failed(point["runs"]),
            ]
        )
    tables.append(
        "Control bytes per 1000 data bytes, per CN (data: UDP from the SN "
        "into the CN; SN->CN: TCP from the control port; CN->SN: TCP to it)\n\n"
        + md_table(
            [
                "mode",
                "CNs",
                "digest lists (8 B a packet, in data)",
                "SN->CN control on the wire",
                "CN->SN (wanted maps, loss reports, acks)",
                "lost packets",
                "failed CNs",
            ],
            rows,
        )
    )

    # 2. forgery
    forged_runs = [r for r in data["forged"] if "cn" in r]
    forged = [float(r["cn"]["receiver"].get("forged", 0)) for r in forged_runs]
    sent = [float(r["forger"].get("sent", 0)) for r in forged_runs]
    mean_hold = [
        1000 * r["cn"]["receiver"].get("forged_hold_sum", 0.0) / r["cn"]["receiver"]["forged"]
        for r in forged_runs
        if r["cn"]["receiver"].get("forged")
    ]
    max_hold = [
        1000 * float(r["cn"]["receiver"].get("forged_hold_max", 0.0))
        for r in forged_runs
        if r["cn"]["receiver"].get("forged")
    ]
    verified = sum(1 for r in forged_runs if r["cn"].get("verified"))
    unannounced = [float(r["cn"]["receiver"].get("unannounced", 0)) for r in forged_runs]
    tables.append(
        "Forged packets (one 1-CN multicast fetch per repetition; hold: from the forged "
        "packet's arrival to the notice that exposed it)\n\n"
        + md_table(
            [
                "forged sent",
                "counted forged",
                "dropped unannounced",
                "mean hold (ms)",
                "max hold (ms)",
                "files verified",
            ],
            [
                [
                    fmt_spread(sent, 0),
                    fmt_spread(forged, 0),
                    fmt_spread(unannounced, 0),
                    fmt_spread(mean_hold, 2),
                    fmt_spread(max_hold, 2),
                    f"{verified}/{len(data['forged'])}",
                ]
            ],
        )
    )

    # 3. late joiners
    rows = []
    late_pts = []
    all_rates: list[float] = []
    for point in data["late"]:
        slowest, med, dups, dups_first, rates = [], [], [], [], []
        for run in point["runs"]:
            cns = run.get("cns", [])
            if not cns or not all(c.get("ok") for c in cns):
                continue
            times = [float(c["elapsed"]) for c in cns]
            slowest.append(max(times))
            med.append(spread(times)[0])
            dups += [c["duplicates"] for c in cns]
            dups_first.append(cns[0]["duplicates"])
            # What the session achieved, as the first CN saw it (everything it
            # accepted, useful or not): the shared machine's load varies it.
            rates.append(cns[0]["receiver"]["accepted"] * PACKET_BITS / cns[0]["elapsed"] / 1e6)
        late_pts.append((point, slowest, med, dups))
        all_rates += rates
        rows.append(
            [
                point["policy"],
                f"{point['loss']:.0%}",
                fmt_spread(slowest, 2),
                fmt_spread(med, 2),
                fmt_spread(dups, 0),
                fmt_spread(dups_first, 0),
                fmt_spread(rates, 0),
                _failed(point["runs"]),
            ]
        )
    tables.append(
        f"Block choice with {p['late_cns']} CNs starting {p['stagger']:g} s apart "
        f"(multicast, {p['late_mb']} MiB; completion from each CN's own start; duplicates: "
        "blocks a CN received that it held already)\n\n"
        + md_table(
            [
                "policy",
                "loss",
                "slowest CN (s)",
                "median CN (s)",
                "duplicates per CN",
                "duplicates, first CN",
                "session rate at the first CN (Mbit/s)",
                "failed CNs",
            ],
            rows,
        )
    )

    # plots
    fig, axes = out.figure(1, 2, figsize=(10, 4))
    ax = axes[0]
    labels, meds, los, his = [], [], [], []
    for point, slowest, _, _ in late_pts:
        m, lo, hi = spread(slowest)
        labels.append(f"{point['policy']}\n{point['loss']:.0%}")
        meds.append(m)
        los.append(m - lo if m == m else 0)
        his.append(hi - m if m == m else 0)
    ax.bar(range(len(labels)), meds, yerr=[los, his], capsize=4, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("slowest CN's completion (s)")
    ax.set_title("block choice, late joiners")
    ax = axes[1]
    meds = [spread(d)[0] for _, _, _, d in late_pts]
    ax.bar(range(len(labels)), meds, color="tab:orange")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("duplicate blocks per CN (median)")
    ax.set_title("duplicates")
    plots = [out.save(fig, "policies")]
    fig, ax = out.figure()
    names = [f"{pt['mode']}\n{pt['cns']} CN" for pt, _ in overhead_pts]
    width = 0.4
    for i, (key, label) in enumerate((("ctl_in", "SN->CN"), ("ctl_out", "CN->SN"))):
        vals = [spread(r[key])[0] for _, r in overhead_pts]
        ax.bar([j + i * width for j in range(len(names))], vals, width, label=label)
    ax.set_xticks([j + width / 2 for j in range(len(names))], names)
    ax.set_ylabel("control bytes per 1000 data bytes")
    ax.legend()
    plots.append(out.save(fig, "overhead"))

    # conclusion, from the numbers above
    by_mode = []
    for mode in p["overhead_modes"]:
        ins = [r for pt, rs in overhead_pts if pt["mode"] == mode for r in rs["ctl_in"] if r == r]
        outs = [r for pt, rs in overhead_pts if pt["mode"] == mode for r in rs["ctl_out"] if r == r]
        if ins:
            by_mode.append(
                f"{fmt_spread(ins, 1)} SN->CN and {fmt_spread(outs, 1)} CN->SN in {mode}"
            )
    first = (
        "Per 1000 data bytes a CN's control channel carried " + ", ".join(by_mode)
        if by_mode
        else "No overhead point completed"
    )
    if forged_runs and sum(forged):
        first += (
            f", and a CN dropped {fmt_spread(forged, 0)} forged packets per burst after "
            f"holding them {fmt_spread(mean_hold, 2)} ms on average (at most "
            f"{max(max_hold):.1f} ms), with {verified} of {len(data['forged'])} files verified."
        )
    else:
        first += "; no forged packet was counted, so detection time is not measured."
    clauses = []
    for loss in p["losses"]:
        done = [(pt, s, d) for pt, s, _, d in late_pts if pt["loss"] == loss and s]
        if len(done) < 2:
            continue
        best = min(done, key=lambda x: spread(x[1])[0])
        fewest = min(done, key=lambda x: spread(x[2])[0])
        demand = next((x for x in done if x[0]["policy"] == "demand"), None)
        clause = (
            f"at {loss:.0%} loss {best[0]['policy']} gave the fastest slowest CN "
            f"({spread(best[1])[0]:.2f} s median"
        )
        if demand is not None and demand is not best:
            clause += f", demand-weighted {spread(demand[1])[0]:.2f} s"
        elif demand is not None:
            others = min(spread(x[1])[0] for x in done if x is not demand)
            clause += f", {others / spread(demand[1])[0] - 1:.0%} ahead of the next policy"
        clause += (
            f") and {fewest[0]['policy']} the fewest duplicate blocks per CN "
            f"({spread(fewest[2])[0]:.0f} median"
        )
        if demand is not None and demand is not fewest:
            clause += f", demand-weighted {spread(demand[2])[0]:.0f}"
        clauses.append(clause + ")")
    if clauses:
        second = (
            f"With {p['late_cns']} CNs joining {p['stagger']:g} s apart, "
            + "; ".join(clauses)
            + "."
        )
    else:
        second = "Fewer than two policies completed, so the block choices cannot be compared."
    if all_rates:
        notes.append(
            f"The session rate the first CN saw ranged from {min(all_rates):.0f} to "
            f"{max(all_rates):.0f} Mbit/s over the block-choice runs (the links allow "
            f"{p['rate']}), so completion times mix each policy's effect with the shared "
            "machine's load and the rate control; the duplicate counts do not depend on speed."
        )
    if any(_failed(pt["runs"]) for pt in data["late"] + data["overhead"]):
        notes.append("Some CNs failed or timed out; they are left out of the medians.")
    setup = (
        f"A switch (IGMP snooping off) with the SN, {max([*p['overhead_cns'], p['late_cns']])} "
        f"CN hosts and a forger host, every link {p['rate']} Mbit/s (tbf, both ends), real "
        f"daemons, the SN's sessions at 95% of the link rate, plain code. Overhead: "
        f"{p['overhead_mb']} MiB file, {', '.join(map(str, p['overhead_cns']))} CNs, "
        f"{' and '.join(p['overhead_modes'])}, bytes counted by nftables in each CN's "
        f"namespace. Forgery: {p['forged_packets']} forged copies at 1 ms spacing, "
        f"{p['lead']} sequence numbers ahead, spoofed SN source and SSRC, during a 1-CN "
        f"multicast fetch of the same file. Block choice: {p['late_cns']} CNs, "
        f"{p['stagger']:g} s apart, {p['late_mb']} MiB, multicast, policies "
        f"{', '.join(p['policies'])}, UDP loss "
        f"{', '.join(f'{x:.0%}' for x in p['losses'])}; the SN restarted per policy. "
        f"{reps} repetitions per point; median (min-max); the run took "
        f"{data.get('seconds', math.nan):.0f} s."
    )
    return Section(
        setup=setup, tables=tables, plots=plots, conclusion=f"{first} {second}", notes=notes
    )
