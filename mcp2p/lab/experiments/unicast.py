"""Experiment 1, multicast or unicast: one SN, N CNs, five ways to copy a file.

Topology: one star (`StarLab`): a switch, the SN and ``max(cns)`` CN hosts,
every link shaped to ``link_mbit`` in both directions. The SN runs the real
daemon (``twistd -n mcp2p``) and so does every CN host; an mcp2p point runs
``mcp2p get`` on the first N CNs at once (multicast or unicast data). The
peers run in the same star: ``udpcast`` and ``uftp`` (multicast tools) and
``tcp`` (one plain TCP copy per CN, sent with ``os.sendfile``); see
`mcp2p.lab.peers`. The SN's sessions and the multicast peers' senders are
all paced at ``send_mbit``.

Loss is nftables dropping a random fraction of the packets arriving at each
CN. For mcp2p, udpcast and UFTP that is UDP (their data, and for the peers
their control packets too; mcp2p's TLS control channel is TCP and kept, as
DESIGN.md 9 says). For the plain TCP peer the same fraction of TCP segments
into the CNs is dropped as well when ``tcp_loss`` is on (the default): its
data is TCP, and the fair comparison drops every tool's data into the CNs.

One star serves every point (the loss rule is changed between points); per
loss and N the tools take turns within each repetition, so the machine's
noise falls on all of them alike. Per run: each CN's completion time (mcp2p:
the fetch's own elapsed time, search to delivery; peers: start signal to the
receiver's end), goodput per CN, the SN's transmitted bytes and the bytes
sent on every link end (both over the file size), and whether every copy
verified. Before each run the lab syncs the file systems, untimed: the
kernel writes a copy back about 30 s after it was written, which is during
a later run, and on two cores that writeback slowed whichever tool ran
then (mcp2p's median went from 9.18 s alone to 9.23 s between udpcast and
UFTP). A run that fails or times out is recorded as failed, not raised;
its timeout is 10 s + 4x its ideal time (one copy for the multicast tools,
N copies for the unicast ones) at that loss.

The headline point (the most CNs, at the loss nearest 1%) is also run with
a larger file, ``headline_mib`` (64 MiB in the full lab), when that is
larger than the grid's: an 8 MiB copy is over before the tools reach their
steady state, so the grid compares start-up as much as throughput. Those
runs are in ``headline_runs`` (same fields as ``runs``), and the report's
headline table and conclusion come from them.

CPU: for every run, the user+sys CPU seconds of the processes doing the
work, from the start signal to the run's end (`mcp2p.lab.procstat`): for
mcp2p the SN's daemon (``sn_cpu_s``) and each fetching CN's daemon
(``cn_cpu_s``, and ``cns[].cpu_s``); for the peers the sender and each
receiver. ``cpu_cores`` is all of it over the run's wall time: the cores
the tool kept busy. The report marks a tool CPU-bound when one of its
processes used 90% of a core over its transfer, or all of them 90% of the
machine's cores.

``family`` 6 runs the same experiment over IPv6: the star's veths carry
their fd77:: addresses, every mcp2p daemon gets ``[node] interface6`` and
queries ff15::77 only, and the CNs ask for IPv6 sessions (``[fetching]
family = 6``; `StarLab(family=6)`), uftp uses ff15::4d:1/2 and
the hosts' IPv6 addresses, TCP connects over IPv6, and udpcast is skipped
(it speaks IPv4 only). Before measuring, one CN fetches a small file over
IPv6 (1 MiB): a fetch that fails or is given an IPv4 group stops
the experiment with one line saying what is missing.

Sizes, measured on the 2 shared cores of the dev machine (Nov 2026): full
(N 1, 2, 4, 8; loss 0, 1, 5%; 8 MiB; 3 reps; 180 runs) 517-716 s for the
grid, plus the 64 MiB headline at 8 CNs and 1% (15 runs; the unicast tools
copy 8 x 64 MiB through one 100 Mbit/s link, about 45 s each at best):
about 7 minutes more; quick (N 1, 4; loss 0, 1%; 4 MiB; 3 reps; headline
from the grid) 97 s; smoke (N 2; loss 1%; 2 MiB; 1 rep; headline 3 MiB, so
that the suite's one smoke run of the lab has a headline of its own) 12 s. udpcast runs
that lose their handshake wait out their timeout, so a bad draw adds about
13 s each.
"""

from __future__ import annotations

import ipaddress
import math
import os
import platform
import statistics
import time
from typing import Any

from mcp2p.lab.experiment import (
    Context,
    Param,
    ReportOut,
    Section,
    fmt_spread,
    md_table,
    median,
    spread,
)
from mcp2p.lab.floor import BLOCK, floor
from mcp2p.lab.net import LabError, Network
from mcp2p.lab.peers import missing_tools, run_peer, unsupported
from mcp2p.lab.transfer import FILE_NAME, FetchResult, StarLab

NAME = "unicast"
TITLE = "Multicast or unicast"
QUESTION = (
    "From which number of CNs and which loss does multicast win over unicast, "
    "and by how much (mcp2p multicast and unicast, udpcast, UFTP, plain TCP copies)?"
)
TOOLS = ["mcp2p-multicast", "mcp2p-unicast", "udpcast", "uftp", "tcp"]
PARAMS = {
    "cns": Param([1, 2, 4, 8], [1, 4], [2], "CNs fetching at once"),
    "losses": Param([0.0, 0.01, 0.05], [0.0, 0.01], [0.01], "loss into each CN (0.01 or 1%)"),
    "tools": Param(TOOLS, TOOLS, TOOLS, "mcp2p-multicast, mcp2p-unicast, udpcast, uftp, tcp"),
    "size_mib": Param(8, 4, 2, "file size, MiB"),
    "headline_mib": Param(
        64, 0, 3, "file size of the headline point (most CNs, loss nearest 1%), MiB; 0: size_mib"
    ),
    "family": Param(4, 4, 4, "IP family of the copies: 4 or 6 (mcp2p, uftp and tcp over IPv6)"),
    "link_mbit": Param(100, 100, 100, "rate of every link, Mbit/s"),
    "send_mbit": Param(95, 95, 95, "SN session rate and multicast peers' rate, Mbit/s"),
    "tcp_loss": Param(True, True, True, "drop TCP into the CNs too for the tcp peer"),
    "code": Param(
        "auto", "auto", "auto", "block code of mcp2p's fetches: auto (default), plain or raptorq"
    ),
    "sn_rate": Param(
        "pinned",
        "pinned",
        "pinned",
        "mcp2p SN's rate: pinned (rate = max_rate = send_mbit) or shipped "
        "(etc/mcp2p.ini's rate and max_rate: the session finds the link's rate itself)",
    ),
}
MULTICAST_TOOLS = ("mcp2p-multicast", "udpcast", "uftp")
WIN_MARGIN = 0.05  # "wins": a median at least 5% lower (less is noise on 2 shared cores)
PAUSE = 0.2  # seconds between runs: an SN session ends after its last subscriber
HEADLINE_FILE = "headline.bin"
PROBE_FILE = "probe6.bin"  # the family-6 check's file
CPU_BOUND = 0.9  # of a core (one process) or of the machine's cores (all of a run's)


def _timeout(tool: str, n: int, size: int, rate: float, loss: float) -> float:
    """Seconds a run may take: 4x its ideal time at this loss, plus 10 s."""
    copies = 1 if tool in MULTICAST_TOOLS else n
    ideal = copies * size * 8 / rate
    return 10.0 + 4.0 * ideal / max(0.5, 1.0 - loss)


def _record(result: FetchResult, tool: str, n: int, loss: float, rep: int) -> dict[str, Any]:
    """One run's JSON: `FetchResult.to_json` (with its CPU fields) and the point."""
    data = result.to_json()
    data.pop("link_delta", None)  # the total is enough; keeps the JSON small
    data.update(
        tool=tool,
        cns_n=n,
        loss=loss,
        rep=rep,
        slowest=result.slowest if result.ok else None,
        failures=result.failures(),
    )
    return data


def _failed(tool: str, n: int, loss: float, rep: int, error: str, size: int) -> dict[str, Any]:
    return {
        "tool": tool,
        "cns_n": n,
        "loss": loss,
        "rep": rep,
        "size": size,
        "ok": False,
        "slowest": None,
        "elapsed": [],
        "goodput_mb_s": [],
        "sn_cpu_s": None,
        "cn_cpu_s": [],
        "cpu_cores": None,
        "failures": error[-2000:],
    }


def _one(
    lab: StarLab,
    tool: str,
    n: int,
    loss: float,
    rep: int,
    p: dict[str, Any],
    name: str = FILE_NAME,
) -> dict[str, Any]:
    size = lab.files[name][0]
    timeout = _timeout(tool, n, size, p["send_mbit"] * 1e6, loss)
    os.sync()  # untimed: the copies of the runs before are on disk (see above)
    try:
        if tool.startswith("mcp2p-"):
            mode = tool.split("-", 1)[1]
            result = lab.fetch(n, name=name, mode=mode, code=p["code"], timeout=timeout)
        else:
            tcp_drop = tool == "tcp" and p["tcp_loss"] and loss > 0
            if tcp_drop:
                lab.set_loss(loss, proto="tcp, udp")
            try:
                result = run_peer(
                    lab, tool, n, name=name, timeout=timeout, rate=int(p["send_mbit"] * 1e6)
                )
            finally:
                if tcp_drop:
                    lab.set_loss(loss)
    except LabError as e:
        return _failed(tool, n, loss, rep, str(e), size)
    finally:
        time.sleep(PAUSE)
    return _record(result, tool, n, loss, rep)


def ipv6_missing() -> str | None:
    """One line saying why this mcp2p cannot run over IPv6, or None."""
    from mcp2p.config import SCHEMA

    if "family" not in SCHEMA.get("fetching", {}):
        return (
            "--family 6: this mcp2p has no IPv6 data sessions (no [fetching] family option "
            "to ask for them; issue 14)"
        )
    return None


def check_ipv6(lab: StarLab) -> None:
    """Raise LabError with one line unless one CN of a `StarLab(family=6)`
    fetches the small `PROBE_FILE` over IPv6 and is given an IPv6 group."""
    result = lab.fetch(1, name=PROBE_FILE, mode="multicast", code="plain", timeout=30)
    [cn] = result.cns
    v4 = sorted({g for g in cn.groups if _version(g) != 6})
    if v4:
        raise LabError(
            f"--family 6: an IPv6 fetch was given IPv4 group {', '.join(v4)}: mcp2p's data "
            "sessions are IPv4 only (needs IPv6 sessions for [node] interface6, issue 14)"
        )
    if not result.ok or not cn.groups:
        why = " ".join((cn.error or "no group").split())
        raise LabError(f"--family 6: mcp2p cannot fetch over IPv6 here: {why[-300:]}")


def _version(address: str) -> int:
    try:
        return ipaddress.ip_address(address.split("%")[0]).version
    except ValueError:
        return 0


def run(
    ctx: Context,
    *,
    cns: list[int],
    losses: list[float],
    tools: list[str],
    size_mib: int,
    link_mbit: int,
    send_mbit: int,
    tcp_loss: bool,
    headline_mib: int = 0,
    family: int = 4,
    code: str = "auto",
    sn_rate: str = "pinned",
) -> dict[str, Any]:
    if not cns or min(cns) < 1 or max(cns) > 64:
        raise ValueError("cns: numbers of CNs between 1 and 64")
    if not losses or any(not 0 <= x < 1 for x in losses):
        raise ValueError("losses: fractions in [0, 1)")
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        raise ValueError(f"tools: unknown {unknown}; known: {', '.join(TOOLS)}")
    if size_mib < 1 or link_mbit < 1 or not 0 < send_mbit <= link_mbit:
        raise ValueError("size_mib >= 1, link_mbit >= 1, 0 < send_mbit <= link_mbit")
    if headline_mib < 0:
        raise ValueError("headline_mib: 0 (the grid's size) or more MiB")
    if family not in (4, 6):
        raise ValueError("family: 4 or 6")
    if code not in ("auto", "plain", "raptorq"):
        raise ValueError("code: auto, plain or raptorq")
    if sn_rate not in ("pinned", "shipped"):
        raise ValueError("sn_rate: pinned or shipped")
    if family == 6 and any(t.startswith("mcp2p-") for t in tools) and ipv6_missing():
        raise LabError(str(ipv6_missing()))
    size = size_mib << 20
    # The headline is run apart only when its file is larger than the grid's.
    hl_size = headline_mib << 20 if headline_mib > size_mib else 0
    hl_loss, hl_n = _headline_point(losses, cns)
    p = {"send_mbit": send_mbit, "tcp_loss": tcp_loss, "code": code}
    skipped = {
        t: missing_tools(t) or unsupported(t, family) for t in tools if not t.startswith("mcp2p-")
    }
    skipped = {t: why for t, why in skipped.items() if why}
    todo = [t for t in tools if t not in skipped]
    runs: list[dict[str, Any]] = []
    headline_runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with Network() as net:
        lab = StarLab(net, ctx.subdir("star"), max(cns), rate=link_mbit * 1_000_000, family=family)
        lab.share(size)
        if hl_size:
            lab.share(hl_size, name=HEADLINE_FILE)
        if family == 6:
            lab.share(1 << 20, name=PROBE_FILE)
        if sn_rate == "shipped":
            lab.start_sn(rate=_shipped("rate"), max_rate=_shipped("max_rate"))
        else:
            lab.start_sn(rate=f"{send_mbit}M")
        try:
            if family == 6 and any(t.startswith("mcp2p-") for t in todo):
                ctx.progress("IPv6: does mcp2p fetch over IPv6?")
                check_ipv6(lab)
            for loss in losses:
                lab.set_loss(loss or None)
                for n in sorted(cns):
                    for rep in range(1, ctx.reps + 1):
                        for tool in todo:
                            ctx.progress(f"loss {loss:.0%} N={n} {tool}", rep, ctx.reps)
                            runs.append(_one(lab, tool, n, loss, rep, p))
            if hl_size:
                lab.set_loss(hl_loss or None)
                for rep in range(1, ctx.reps + 1):
                    for tool in todo:
                        ctx.progress(
                            f"headline {headline_mib} MiB, loss {hl_loss:.0%} N={hl_n} {tool}",
                            rep,
                            ctx.reps,
                        )
                        headline_runs.append(_one(lab, tool, hl_n, hl_loss, rep, p, HEADLINE_FILE))
        finally:
            lab.stop()
    return {
        "params": {
            "cns": sorted(cns),
            "losses": losses,
            "tools": tools,
            "size": size,
            "link_mbit": link_mbit,
            "send_mbit": send_mbit,
            "tcp_loss": tcp_loss,
            "reps": ctx.reps,
            "headline_size": hl_size or size,
            "family": family,
            "code": code,
            "sn_rate": sn_rate,
        },
        "skipped": skipped,
        "runs": runs,
        "headline_runs": headline_runs,
        "seconds": time.monotonic() - started,
        "kernel": platform.release(),
        "cores": os.cpu_count(),
    }


def _shipped(option: str) -> str:
    """[serving] ``option`` as an SN that sets nothing has it."""
    from mcp2p.config import SCHEMA

    return SCHEMA["serving"][option].default


def _headline_point(losses: list[float], cns: list[int]) -> tuple[float, int]:
    """The headline: the most CNs, at the loss nearest 1%."""
    return min(losses, key=lambda x: abs(x - 0.01)), max(cns)


# -- report


def _points(data: dict[str, Any]) -> dict[tuple[float, int, str], list[dict[str, Any]]]:
    out: dict[tuple[float, int, str], list[dict[str, Any]]] = {}
    for r in data["runs"]:
        out.setdefault((r["loss"], r["cns_n"], r["tool"]), []).append(r)
    return out


def _slowest(runs: list[dict[str, Any]]) -> list[float]:
    return [float(r["slowest"]) for r in runs if r.get("ok") and r.get("slowest") is not None]


def _goodputs(runs: list[dict[str, Any]]) -> list[float]:
    """Per CN and run, Mbit/s (the runs that verified)."""
    return [8 * g for r in runs if r.get("ok") for g in r.get("goodput_mb_s", [])]


def _cn_cpu(runs: list[dict[str, Any]]) -> list[float]:
    """Per CN and run, CPU seconds of its daemon or receiver (the runs that verified)."""
    return [float(c) for r in runs if r.get("ok") for c in r.get("cn_cpu_s") or [] if c is not None]


def _sn_cpu(runs: list[dict[str, Any]]) -> list[float]:
    return [float(r["sn_cpu_s"]) for r in runs if r.get("ok") and r.get("sn_cpu_s") is not None]


def _cores(runs: list[dict[str, Any]]) -> list[float]:
    return [float(r["cpu_cores"]) for r in runs if r.get("ok") and r.get("cpu_cores") is not None]


def _busiest(run: dict[str, Any]) -> float:
    """The busiest process of a run, in cores: a CN's CPU over its own time,
    or the SN's over the run's wall time (NaN: not measured)."""
    loads = [
        float(c) / float(e)
        for c, e in zip(run.get("cn_cpu_s") or [], run.get("elapsed") or [], strict=False)
        if c is not None and e is not None and e == e and e > 0
    ]
    if run.get("sn_cpu_s") is not None and run.get("wall"):
        loads.append(float(run["sn_cpu_s"]) / float(run["wall"]))
    return max(loads) if loads else math.nan


def cpu_bound(runs: list[dict[str, Any]], cores: int) -> str:
    """Why these runs were CPU-bound ("" if they were not): in the median
    run one process used CPU_BOUND of a core, or all of them CPU_BOUND of
    the machine's cores."""
    busiest = median([_busiest(r) for r in runs if r.get("ok")])
    together = median(_cores(runs))
    if not math.isnan(together) and together >= CPU_BOUND * cores:
        return f"its processes kept {together:.1f} of the {cores} cores busy"
    if not math.isnan(busiest) and busiest >= CPU_BOUND:
        return f"its busiest process used {busiest:.0%} of a core"
    return ""


def _row(tool: str, runs: list[dict[str, Any]], n: int | None = None) -> list[str]:
    ok = sum(1 for r in runs if r.get("ok"))
    row = [] if n is None else [str(n)]
    return [
        *row,
        tool,
        fmt_spread(_slowest(runs), 2, " s"),
        fmt_spread(_goodputs(runs), 1),
        fmt_spread([r["sn_ratio"] for r in runs if r.get("ok")], 2),
        fmt_spread([r["link_ratio"] for r in runs if r.get("ok")], 2),
        fmt_spread(_cn_cpu(runs), 2),
        fmt_spread(_sn_cpu(runs), 2),
        fmt_spread(_cores(runs), 2),
        f"{ok}/{len(runs)}",
    ]


HEAD = [
    "tool",
    "slowest CN",
    "goodput/CN Mbit/s",
    "SN bytes/file",
    "all-link bytes/file",
    "CPU s per CN",
    "CPU s SN",
    "cores busy",
    "ok",
]


def _wins(
    pts: dict[tuple[float, int, str], list[dict[str, Any]]], loss: float, ns: list[int], other: str
) -> int | None:
    """The smallest N from which mcp2p multicast's median slowest CN is
    at least WIN_MARGIN faster than ``other``'s at every larger measured N
    (or ``other`` failed there); None: never."""
    first = None
    for n in sorted(ns, reverse=True):
        mc = median(_slowest(pts.get((loss, n, "mcp2p-multicast"), [])))
        ot = median(_slowest(pts.get((loss, n, other), [])))
        failed_other = bool(pts.get((loss, n, other))) and math.isnan(ot)
        if not math.isnan(mc) and (mc < (1 - WIN_MARGIN) * ot or failed_other):
            first = n
        else:
            break
    return first


def report(data: dict[str, Any], out: ReportOut) -> Section:
    prm = data["params"]
    pts = _points(data)
    skipped = data.get("skipped") or {}
    losses, ns = prm["losses"], prm["cns"]
    tools = [t for t in prm["tools"] if t and t not in skipped]
    size_mib = prm["size"] / (1 << 20)
    hl_loss, hl_n = _headline_point(losses, ns)
    hl_mib = prm.get("headline_size", prm["size"]) / (1 << 20)
    hl_runs: dict[str, list[dict[str, Any]]] = {}
    for r in data.get("headline_runs") or []:
        hl_runs.setdefault(r["tool"], []).append(r)
    if not hl_runs:  # the headline is the grid's point
        hl_runs = {t: pts.get((hl_loss, hl_n, t), []) for t in tools}
    cores = int(data.get("cores") or 0)
    family = int(prm.get("family", 4))
    setup = (
        ("Over IPv6 (--family 6): " if family == 6 else "")
        + f"One star: a switch, one SN and up to {max(ns)} CNs, every link shaped to "
        f"{prm['link_mbit']} Mbit/s both ways (tc tbf); a random file of {size_mib:g} MiB; "
        f"N = {', '.join(map(str, ns))} CNs fetch it at once; loss "
        f"{', '.join(f'{x:.0%}' for x in losses)} dropped by nftables on the way into each CN "
        "(UDP; for the plain TCP peer "
        + ("TCP segments as well" if prm["tcp_loss"] else "UDP only, so TCP is not dropped")
        + "). Tools: mcp2p multicast and unicast (real `twistd -n mcp2p` daemons on the SN "
        f"and on every CN, the `mcp2p get` CLI on each CN, {prm.get('code', 'plain')} code "
        "(auto: RaptorQ in multicast, plain in unicast), "
        + (
            "SN sessions at the shipped rate settings (start at [serving] rate, adapt up to "
            "max_rate: they find the link's rate themselves)"
            if prm.get("sn_rate") == "shipped"
            else f"SN sessions at {prm['send_mbit']} Mbit/s"
        )
        + "), udpcast (`udp-sender --max-bitrate "
        f"{prm['send_mbit']}m --full-duplex --min-receivers N --rexmit-hello-interval 20 "
        "--retries-until-drop 30`), UFTP 4.10 (`uftp -Y none -R "
        f"{prm['send_mbit'] * 1_000_000 // 1024}` to a closed group: its Kbps are of 1024 "
        "bits, so that is the same rate; `uftpd -d -t` clients) and plain TCP "
        "copies (one Python sender with `os.sendfile`, one connection per CN). "
        "The switch floods multicast to every port (no IGMP snooping, DESIGN.md 9), so a "
        f"multicast run also loads the links of the idle CNs of the {max(ns)}-CN star (udpcast "
        "alone switches to unicast for a single receiver). "
        f"{prm['reps']} repetitions per point; completion time per CN is mcp2p's own "
        "fetch time (search to verified file) or, for the peers, start signal to the "
        "receiver's end; 'slowest CN' is the median (min-max) over repetitions of the "
        "slowest CN's time; goodput is file size / a CN's time; bytes are counted on the "
        "veths (SN: its link; all links: every link end's transmitted bytes, so one copy to "
        "one CN counts twice, SN to switch and switch to CN). "
        "udpcast's rendezvous and acknowledgements are UDP too and are dropped like its "
        "data (mcp2p's control channel is TCP and is not); runs that failed or timed out "
        "count in the 'ok' column, not in the medians. "
        f"'Wins' below means a median slowest-CN time at least {WIN_MARGIN:.0%} lower. "
        + (
            f"The headline point ({hl_n} CNs, {hl_loss:.0%} loss) is run again with a "
            f"{hl_mib:g} MiB file, large enough for every tool to reach its steady state. "
            if hl_mib != size_mib
            else ""
        )
        + "CPU: user+sys seconds of the processes doing the work, from the start signal to "
        "the run's end (/proc/PID/stat and wait4): mcp2p's SN daemon and each fetching CN's "
        "daemon, the peers' sender and receivers; 'cores busy' is all of it over the run's "
        f"wall time (this machine has {cores or '?'} cores, shared by all the namespaces). "
        + (
            "Over IPv6 every address is the hosts' fd77:: one, the mcp2p daemons have "
            "[node] interface6 and query ff15::77 only, the CNs have [fetching] family = 6, "
            "uftp uses ff15::4d:1/2; udpcast has no IPv6. "
            if family == 6
            else ""
        )
        + f"The whole matrix took {data.get('seconds', math.nan):.0f} s."
    )
    tables: list[str] = []
    # the headline: most CNs at the loss nearest 1%
    tables.append(
        f"**Headline: {hl_n} CNs at {hl_loss:.0%} loss, {hl_mib:g} MiB**\n\n"
        + md_table(HEAD, [_row(t, hl_runs.get(t, [])) for t in tools])
    )
    for loss in losses:
        rows = [_row(t, pts.get((loss, n, t), []), n) for n in ns for t in tools]
        tables.append(f"**Loss {loss:.0%}**\n\n" + md_table(["N", *HEAD], rows))

    plots = []
    fig, axes = out.figure(1, len(losses), figsize=(4.2 * len(losses), 3.8), squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        for tool in tools:
            xs, ys, lo, hi = [], [], [], []
            for n in ns:
                med, mn, mx = spread(_slowest(pts.get((loss, n, tool), [])))
                if not math.isnan(med):
                    xs.append(n)
                    ys.append(med)
                    lo.append(med - mn)
                    hi.append(mx - med)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=tool)
        ax.set_title(f"loss {loss:.0%}")
        ax.set_xlabel("CNs")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_ylabel("slowest CN, s")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    plots.append(out.save(fig, "completion"))

    fig, axes = out.figure(1, 2, figsize=(9, 3.8), squeeze=False)
    for ax, key, label in zip(
        axes[0],
        ("sn_ratio", "link_ratio"),
        ("SN bytes / file", "all-link bytes / file"),
        strict=True,
    ):
        for tool in tools:
            xs, ys = [], []
            for n in ns:
                vals = [r[key] for r in pts.get((hl_loss, n, tool), []) if r.get("ok")]
                if vals:
                    xs.append(n)
                    ys.append(statistics.median(vals))
            if xs:
                ax.plot(xs, ys, marker="o", label=tool)
        ax.set_title(f"{label} (loss {hl_loss:.0%})")
        ax.set_xlabel("CNs")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    plots.append(out.save(fig, "bytes"))

    conclusion = _conclusion(pts, losses, ns, hl_loss, hl_n, hl_runs, hl_mib)
    conclusion += " " + floor_sentence(
        int(prm.get("headline_size", prm["size"])),
        hl_n,
        hl_loss,
        prm["send_mbit"],
        prm["link_mbit"],
    )
    bound = [(t, cpu_bound(hl_runs.get(t, []), cores or 2)) for t in tools]
    bound = [(t, why) for t, why in bound if why]
    conclusion += (
        " CPU-bound at the headline: " + "; ".join(f"{t} ({why})" for t, why in bound) + "."
        if bound
        else " No tool was CPU-bound at the headline (no process near a full core, "
        "the cores not all busy)."
    )
    notes = []
    failed = [
        f"{t} at {x:.0%}, N={n}: {sum(1 for r in rs if not r.get('ok'))}/{len(rs)} failed "
        f"({_last_words(next(r['failures'] for r in rs if not r.get('ok')))})"
        for (x, n, t), rs in sorted(pts.items())
        if any(not r.get("ok") for r in rs)
    ]
    if data.get("headline_runs"):
        failed += [
            f"{t} at the {hl_mib:g} MiB headline: "
            f"{sum(1 for r in rs if not r.get('ok'))}/{len(rs)} failed "
            f"({_last_words(next(r['failures'] for r in rs if not r.get('ok')))})"
            for t, rs in hl_runs.items()
            if any(not r.get("ok") for r in rs)
        ]
    if failed:
        notes.append("Failed runs (not in the medians): " + "; ".join(failed))
    for tool, why in skipped.items():
        notes.append(f"{tool} was not run: {why}")
    return Section(setup, tables, plots, conclusion, notes)


def floor_sentence(size: int, n: int, loss: float, send_mbit: float, link_mbit: float) -> str:
    """mcp2p's floor at the headline (`mcp2p.lab.floor`), beside the ideal
    that ignores headers and loss."""
    f = floor(size, n, loss)
    ideal = size * 8 / (link_mbit * 1e6)
    return (
        f"mcp2p's floor there: one copy of the file in {BLOCK}-byte blocks, "
        f"with mcp2p's headers and digest lists, and for each piece the repairs of the worst "
        f"of the {n} CNs' independent {loss:.0%} losses ({f.packets:,.0f} packets, "
        f"{f.link_bytes / size if size else math.nan:.3f}x the file on a link) take "
        f"{f.seconds(send_mbit * 1e6):.2f} s at the SN's {send_mbit:g} Mbit/s and "
        f"{f.seconds(link_mbit * 1e6, link=True):.2f} s at the links' {link_mbit:g} Mbit/s; "
        f"the file alone at the links' rate, without headers or loss, would take {ideal:.2f} s."
    )


def _last_words(failure: str, limit: int = 160) -> str:
    """The end of a failure text (where tools say what went wrong), one line."""
    text = " ".join(failure.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _fmt_n(n: int | None, ns: list[int]) -> str:
    if n is None:
        return "at no measured N"
    return f"from N={n}" if n != min(ns) else f"at every measured N ({n} and up)"


def _conclusion(
    pts: dict[tuple[float, int, str], list[dict[str, Any]]],
    losses: list[float],
    ns: list[int],
    hl_loss: float,
    hl_n: int,
    hl_runs: dict[str, list[dict[str, Any]]],
    hl_mib: float,
) -> str:
    def med(tool: str) -> float:
        return median(_slowest(hl_runs.get(tool, [])))

    def sn(tool: str) -> str:
        v = median([r["sn_ratio"] for r in hl_runs.get(tool, []) if r.get("ok")])
        return "-" if math.isnan(v) else f"{v:.2f}x"

    parts = []
    for other, label in (("mcp2p-unicast", "mcp2p unicast"), ("tcp", "plain TCP copies")):
        if not any(k[2] == other for k in pts):
            continue
        wins = ", ".join(f"{_fmt_n(_wins(pts, x, ns, other), ns)} at {x:.0%} loss" for x in losses)
        parts.append(f"than {label} {wins}")
    mc = med("mcp2p-multicast")
    if math.isnan(mc):
        return (
            f"mcp2p multicast finished no run at {hl_n} CNs, {hl_loss:.0%} loss and {hl_mib:g} "
            "MiB, so this run "
            "cannot say whether it wins; see the failed runs below."
        )
    first = (
        "mcp2p multicast's slowest CN finished sooner " + ", and sooner ".join(parts)
        if parts
        else "No unicast tool was measured"
    )
    detail = [
        f"{med(tool):.2f} s ({label}, SN {sn(tool)} the file)"
        for tool, label in (("mcp2p-unicast", "mcp2p unicast"), ("tcp", "TCP"))
        if not math.isnan(med(tool))
    ]
    sentence1 = (
        f"{first}; at {hl_n} CNs, {hl_loss:.0%} loss and {hl_mib:g} MiB it took {mc:.2f} s "
        "with the SN "
        f"sending {sn('mcp2p-multicast')} the file, against "
        f"{' and '.join(detail) or 'no finished unicast run'}."
    )
    cmp = []
    for tool in ("udpcast", "uftp"):
        t = med(tool)
        if math.isnan(t):
            cmp.append(f"{tool} finished no run there")
        else:
            cmp.append(f"{mc / t:.2f}x the time of {tool} ({t:.2f} s, SN {sn(tool)} the file)")
    sentence2 = (
        f"Against the dedicated multicast tools at that point mcp2p multicast took "
        f"{' and '.join(cmp)}."
    )
    return f"{sentence1} {sentence2}"
