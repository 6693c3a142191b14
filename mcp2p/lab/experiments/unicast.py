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
verified. A run that fails or times out is recorded as failed, not raised;
its timeout is 10 s + 4x its ideal time (one copy for the multicast tools,
N copies for the unicast ones) at that loss.

Sizes, measured on the 2 shared cores of the dev machine (Nov 2026): full
(N 1, 2, 4, 8; loss 0, 1, 5%; 8 MiB; 3 reps; 180 runs) 517-716 s, under
its 14 minutes; quick (N 1, 4; loss 0, 1%; 4 MiB; 3 reps) 97 s; smoke
(N 2; loss 1%; 2 MiB; 1 rep) 7 s. udpcast runs that lose their handshake
wait out their timeout, so a bad draw adds about 13 s each.
"""

from __future__ import annotations

import math
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
from mcp2p.lab.netns import LabError, Network
from mcp2p.lab.peers import missing_tools, run_peer
from mcp2p.lab.transfer import FetchResult, StarLab

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
    "link_mbit": Param(100, 100, 100, "rate of every link, Mbit/s"),
    "send_mbit": Param(95, 95, 95, "SN session rate and multicast peers' rate, Mbit/s"),
    "tcp_loss": Param(True, True, True, "drop TCP into the CNs too for the tcp peer"),
}
MULTICAST_TOOLS = ("mcp2p-multicast", "udpcast", "uftp")
WIN_MARGIN = 0.05  # "wins": a median at least 5% lower (less is noise on 2 shared cores)
PAUSE = 0.2  # seconds between runs: an SN session ends after its last subscriber


def _timeout(tool: str, n: int, size: int, rate: float, loss: float) -> float:
    """Seconds a run may take: 4x its ideal time at this loss, plus 10 s."""
    copies = 1 if tool in MULTICAST_TOOLS else n
    ideal = copies * size * 8 / rate
    return 10.0 + 4.0 * ideal / max(0.5, 1.0 - loss)


def _record(result: FetchResult, tool: str, n: int, loss: float, rep: int) -> dict[str, Any]:
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


def _failed(tool: str, n: int, loss: float, rep: int, error: str) -> dict[str, Any]:
    return {
        "tool": tool,
        "cns_n": n,
        "loss": loss,
        "rep": rep,
        "ok": False,
        "slowest": None,
        "elapsed": [],
        "goodput_mb_s": [],
        "failures": error[-2000:],
    }


def _one(
    lab: StarLab, tool: str, n: int, loss: float, rep: int, p: dict[str, Any]
) -> dict[str, Any]:
    size = p["size"]
    timeout = _timeout(tool, n, size, p["send_mbit"] * 1e6, loss)
    try:
        if tool.startswith("mcp2p-"):
            result = lab.fetch(n, mode=tool.split("-", 1)[1], code="plain", timeout=timeout)
        else:
            tcp_drop = tool == "tcp" and p["tcp_loss"] and loss > 0
            if tcp_drop:
                lab.set_loss(loss, proto="tcp, udp")
            try:
                result = run_peer(lab, tool, n, timeout=timeout, rate=int(p["send_mbit"] * 1e6))
            finally:
                if tcp_drop:
                    lab.set_loss(loss)
    except LabError as e:
        return _failed(tool, n, loss, rep, str(e))
    finally:
        time.sleep(PAUSE)
    return _record(result, tool, n, loss, rep)


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
    size = size_mib << 20
    p = {"size": size, "send_mbit": send_mbit, "tcp_loss": tcp_loss}
    skipped = {t: missing_tools(t) for t in tools if not t.startswith("mcp2p-")}
    skipped = {t: why for t, why in skipped.items() if why}
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with Network() as net:
        lab = StarLab(net, ctx.subdir("star"), max(cns), rate=link_mbit * 1_000_000)
        lab.share(size)
        lab.start_sn(rate=f"{send_mbit}M")
        try:
            for loss in losses:
                lab.set_loss(loss or None)
                for n in sorted(cns):
                    for rep in range(1, ctx.reps + 1):
                        for tool in tools:
                            if tool in skipped:
                                continue
                            ctx.progress(f"loss {loss:.0%} N={n} {tool}", rep, ctx.reps)
                            runs.append(_one(lab, tool, n, loss, rep, p))
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
        },
        "skipped": skipped,
        "runs": runs,
        "seconds": time.monotonic() - started,
        "kernel": platform.release(),
    }


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
        f"{ok}/{len(runs)}",
    ]


HEAD = ["tool", "slowest CN", "goodput/CN Mbit/s", "SN bytes/file", "all-link bytes/file", "ok"]


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
    losses, ns, tools = prm["losses"], prm["cns"], [t for t in prm["tools"] if t]
    size_mib = prm["size"] / (1 << 20)
    setup = (
        f"One star: a switch, one SN and up to {max(ns)} CNs, every link shaped to "
        f"{prm['link_mbit']} Mbit/s both ways (tc tbf); a random file of {size_mib:g} MiB; "
        f"N = {', '.join(map(str, ns))} CNs fetch it at once; loss "
        f"{', '.join(f'{x:.0%}' for x in losses)} dropped by nftables on the way into each CN "
        "(UDP; for the plain TCP peer "
        + ("TCP segments as well" if prm["tcp_loss"] else "UDP only, so TCP is not dropped")
        + "). Tools: mcp2p multicast and unicast (real `twistd -n mcp2p` daemons on the SN "
        "and on every CN, the `mcp2p get` CLI on each CN, plain code, SN sessions at "
        f"{prm['send_mbit']} Mbit/s), udpcast (`udp-sender --max-bitrate "
        f"{prm['send_mbit']}m --full-duplex --min-receivers N --rexmit-hello-interval 20 "
        "--retries-until-drop 30`), UFTP 4.10 (`uftp -Y none -R "
        f"{prm['send_mbit'] * 1000}` to a closed group, `uftpd -d -t` clients) and plain TCP "
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
        f"The whole matrix took {data.get('seconds', math.nan):.0f} s."
    )
    tables: list[str] = []
    # the headline: most CNs at the loss nearest 1%
    hl_loss = min(losses, key=lambda x: abs(x - 0.01))
    hl_n = max(ns)
    tables.append(
        f"**Headline: {hl_n} CNs at {hl_loss:.0%} loss**\n\n"
        + md_table(HEAD, [_row(t, pts.get((hl_loss, hl_n, t), [])) for t in tools])
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

    conclusion = _conclusion(pts, losses, ns, hl_loss, hl_n)
    notes = []
    failed = [
        f"{t} at {x:.0%}, N={n}: {sum(1 for r in rs if not r.get('ok'))}/{len(rs)} failed "
        f"({_last_words(next(r['failures'] for r in rs if not r.get('ok')))})"
        for (x, n, t), rs in sorted(pts.items())
        if any(not r.get("ok") for r in rs)
    ]
    if failed:
        notes.append("Failed runs (not in the medians): " + "; ".join(failed))
    for tool, why in (data.get("skipped") or {}).items():
        notes.append(f"{tool} was not run: {why}")
    return Section(setup, tables, plots, conclusion, notes)


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
) -> str:
    def med(tool: str) -> float:
        return median(_slowest(pts.get((hl_loss, hl_n, tool), [])))

    def sn(tool: str) -> str:
        v = median([r["sn_ratio"] for r in pts.get((hl_loss, hl_n, tool), []) if r.get("ok")])
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
            f"mcp2p multicast finished no run at {hl_n} CNs and {hl_loss:.0%} loss, so this run "
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
        f"{first}; at {hl_n} CNs and {hl_loss:.0%} loss it took {mc:.2f} s with the SN "
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
