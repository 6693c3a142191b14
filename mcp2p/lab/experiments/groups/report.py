"""Experiment 3's report: the tables, the plot, the conclusion and the notes
of the REPORT.md section, from the run's JSON via `analysis`."""

from __future__ import annotations

import math
from typing import Any

from mcp2p.lab.experiment import ReportOut, Section, fmt_spread, md_table, median, spread
from mcp2p.lab.experiments.groups.analysis import fetch_rows, good, summary


def _fmt_int(values: list[float]) -> str:
    return fmt_spread(values, 0)


def report(data: dict[str, Any], out: ReportOut) -> Section:
    rows = summary(data)
    by = {(r["mode"], r["sessions"]): r for r in rows}
    headers = [
        "mode (pool)", "S", "peak alive", "colliding sessions", "model: measured overlaps",
        "model: all S at once", "moves",
        "foreign pkts / CN", "unwanted pkts / CN", "unwanted kB / CN", "unwanted pkts / SN",
        "sent / needed", "SN CPU ms / session", "completion s", "verified",
    ]  # fmt: skip
    table = md_table(
        headers,
        [
            [
                f"{r['mode']} ({r['pool']}, {r['groups']} groups)",
                r["sessions"],
                _fmt_int(r["peak"]),
                _fmt_int(r["collisions"]),
                fmt_spread(r["model_overlap"], 1),
                f"{r['model']:.1f}",
                _fmt_int(r["moves"]),
                _fmt_int(r["foreign_cn"]),
                _fmt_int(r["unwanted_cn"]),
                fmt_spread(r["unwanted_cn_kb"], 0),
                _fmt_int(r["unwanted_sn"]),
                fmt_spread(r["sent_per_needed"], 2),
                fmt_spread([c * 1000 for c in r["sn_cpu_per_session"]], 1),
                fmt_spread(r["completion"], 2),
                f"{r['verified']}/{r['fetches']}"
                + (f", {r['failed_runs']} runs failed" if r["failed_runs"] else ""),
            ]
            for r in rows
        ],
    )
    # the cost of moving, against SSM at the same S
    cost_rows = []
    for r in rows:
        if r["mode"] == "ssm":
            continue
        base = by.get(("ssm", r["sessions"]))
        med = spread(r["completion_median"])[0]
        ref = spread(base["completion_median"])[0] if base else math.nan
        cost_rows.append([
            r["mode"], r["sessions"], _fmt_int(r["moves"]), _fmt_int(r["moved_events"]),
            fmt_spread(r["completion_median"], 2),
            f"{med - ref:+.2f}" if math.isfinite(med - ref) else "-",
            fmt_spread(r["sent_per_needed"], 2),
            fmt_spread(base["sent_per_needed"], 2) if base else "-",
        ])  # fmt: skip
    cost = md_table(
        ["mode", "S", "session moves (SN)", "SessionMoved at CNs", "completion median s",
         "vs SSM s", "sent / needed", "SSM sent / needed"],
        cost_rows,
    )  # fmt: skip
    plots = [_plot(data, rows, out)]
    setup = (
        f"One switch (Linux bridge, IGMP snooping with a querier, IGMPv3, so a port gets a "
        f"group, and in SSM a (source, group) channel, only if its host joined it), "
        f"{data['sns']} SN hosts and {data['cns']} CN hosts, links unshaped, no loss; real "
        f"daemons on every host. Each run makes S fetches at once (one distinct "
        f"{data['file_kib']} KiB file each, spread over SNs and CNs, posted to the CN "
        f"daemons' API), so up to S multicast sessions run concurrently (peak alive: how "
        f"many did), each at most {data['rate'] / 1000:.0f} kbit/s ({data['block']}-byte "
        f"blocks; a new session waits 50 ms for its CN to join before its first burst). "
        f"Modes: ssm (random "
        f"groups of 232.0.0.0/8, channel = SN + group) and asm/N (random groups of "
        f"239.192.0.0/N; an ASM session listens on its group and moves when it hears "
        f"another session). Colliding sessions: started on a group another session used "
        f"at an overlapping time (post to delivery). Model (birthday problem, N groups in "
        f"the pool): on the measured overlaps, the sum over sessions of 1-(1-1/N)^k, k the "
        f"sessions alive with it; all S at once, S(1-(1-1/N)^(S-1)); in SSM only sessions "
        f"of one SN count. Unwanted packets: data packets "
        f"that arrived on a host's interface (nftables ingress counter) minus those of "
        f"its own sessions (an SN wants none). {data['reps']} repetitions per point, "
        f"fresh SN daemons (fresh random groups) per mode; median (min-max)."
    )
    return Section(
        setup=setup,
        tables=[table, cost],
        plots=plots,
        conclusion=_conclusion(rows),
        notes=_notes(data, rows),
    )


def _plot(data: dict[str, Any], rows: list[dict[str, Any]], out: ReportOut) -> str:
    fig, axes = out.figure(1, 2, figsize=(10, 4))
    styles = ["o-", "s--", "^-", "D-", "v-", "x-"]
    modes = list(data["modes"])
    for ax, key, label in (
        (axes[0], "unwanted_all", "unwanted data packets per run, all hosts"),
        (axes[1], "moves", "session moves per run (SN logs)"),
    ):
        for k, mode in enumerate(modes):
            mine = [r for r in rows if r["mode"] == mode]
            if not mine:
                continue
            # a small sideways shift per mode, so equal values (zeros) stay visible
            shift = 1.0 + 0.04 * (k - (len(modes) - 1) / 2)
            xs = [r["sessions"] * shift for r in mine]
            ys = [spread(r[key]) for r in mine]
            med = [y[0] for y in ys]
            err = [[max(0.0, y[0] - y[1]) for y in ys], [max(0.0, y[2] - y[0]) for y in ys]]
            ax.errorbar(
                xs, med, yerr=err, fmt=styles[k % len(styles)], capsize=3, label=mode,
                clip_on=False,  # zeros sit on the axis
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("sessions per run S (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("Packets delivered to hosts that did not want them")
    axes[1].set_title("Cost of ASM collision handling")
    axes[0].legend()
    return out.save(fig, "unwanted")


def _conclusion(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No run finished, so this experiment answers nothing."
    ssm = [r for r in rows if r["mode"] == "ssm"]
    asm = [r for r in rows if r["mode"] != "ssm"]
    if ssm:
        top = max(r["sessions"] for r in ssm)
        peak = max(spread(r["peak"])[2] for r in ssm)
        coll = max(spread(r["collisions"])[2] for r in ssm)
        unw = max(spread(r["unwanted_all"])[2] for r in ssm)
        if coll == 0 and unw == 0:
            first = (
                f"With random SSM groups no session collided and no host got a data packet "
                f"it did not want in any run up to S={top} ({peak:.0f} sessions alive at once "
                f"at most)"
            )
        else:
            first = (
                f"With random SSM groups up to S={top}, at most {coll:.0f} sessions collided "
                f"and {unw:.0f} unwanted data packets reached hosts in one run"
            )
    else:
        first = "No SSM run finished"
    if not asm:
        return first + "."
    worst = max(asm, key=lambda r: (median(r["unwanted_all"]), r["sessions"]))
    if median(worst["collisions"]) > 0:
        got, model = median(worst["collisions"]), median(worst["model_overlap"])
        if abs(got - model) <= max(2.0, 0.25 * model):
            how = "about as often as the birthday model predicts"
        else:
            how = "more often than" if got > model else "less often than"
            how += " the birthday model predicts"
        first += (
            f", while ASM sessions collided {how} (worst, "
            f"{worst['mode']} at S={worst['sessions']}: {median(worst['collisions']):.0f} "
            f"colliding sessions, model {median(worst['model_overlap']):.0f} on the measured "
            f"overlaps) and put a median {median(worst['unwanted_all']):.0f} unwanted data "
            f"packets per run on hosts."
        )
    else:
        first += ", and no ASM session collided either."
    coll = sum(sum(r["collisions"]) for r in asm)
    moves = sum(sum(r["moves"]) for r in asm)
    parts = []
    if coll:
        parts.append(f"{moves / coll:.0f} session moves per colliding session")
    base = {r["sessions"]: r for r in ssm}
    costs = [
        (median(r["completion_median"]) - median(base[r["sessions"]]["completion_median"]), r)
        for r in asm
        if r["sessions"] in base
    ]
    costs = [c for c in costs if math.isfinite(c[0])]
    if costs:
        d, r = max(costs, key=lambda c: c[0])
        parts.append(
            f"a median completion time {d:+.2f} s against SSM at most "
            f"({r['mode']}, S={r['sessions']})"
        )
    second = "ASM collision handling cost " + (" and ".join(parts) if parts else "nothing here")
    over = [r for r in asm if r["sessions"] > r["groups"] and r["fetches"]]
    if over:
        r = min(over, key=lambda r: r["verified"] / r["fetches"])
        moves = spread(r["moves"])[0]
        second += (
            f"; with more sessions than groups ({r['mode']}, S={r['sessions']}) "
            f"{r['verified']} of {r['fetches']} fetches finished, with a median {moves:.0f} "
            f"moves per run"
        )
    default = [r for r in asm if r["groups"] > 100_000]
    if default:
        dm = max(spread(r["collisions"])[2] for r in default)
        top14 = max(r["sessions"] for r in default)
        second += (
            f"; the default /14 pool had "
            f"{'no colliding session' if dm == 0 else f'up to {dm:.0f} colliding sessions'} "
            f"up to S={top14}"
        )
    return first + " " + second + "."


def _notes(data: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    notes = [
        "The Linux bridge floods all multicast while it knows no querier, snooping or "
        "not: the lab turns on the bridge's own querier (mcast_querier 1) and shortens the "
        "query response interval, after which the querier counts. With mcast_igmp_version "
        "3 the bridge keeps (source, group) entries from IGMPv3 INCLUDE joins and forwards "
        "an SSM channel only to ports that joined that source; with version 2 it keeps "
        "(*, G) only, and a host's socket filter drops other sources after they crossed "
        "the link (checked with two senders on one group before writing this).",
        "Peak alive is the most fetches alive at once (post to delivery): the concurrency "
        "the machine held; the daemons' state, shares and downloads are on a tmpfs so "
        "fsyncs do not pace the fetches.",
    ]
    asm = [r for r in rows if r["mode"] != "ssm"]
    coll = sum(sum(r["collisions"]) for r in asm)
    moves = sum(sum(r["moves"]) for r in asm)
    if coll:
        notes.append(
            f"Moves per colliding session, all ASM runs: {moves / coll:.1f} ({moves} moves, "
            f"{coll} colliding sessions). Of two sessions that hear each other only the one "
            f"with the lower SSRC moves, and nothing counts for 0.5 s after a move; more "
            f"than one move per colliding session means the new group was taken too (or "
            f"there are more sessions than groups)."
        )
    ssm = {r["sessions"]: r for r in rows if r["mode"] == "ssm"}
    calm = [
        abs(median(r["completion_median"]) - median(ssm[r["sessions"]]["completion_median"]))
        for r in asm
        if r["sessions"] in ssm and max(r["moves"], default=0) == 0
    ]
    calm = [c for c in calm if math.isfinite(c)]
    if calm:
        notes.append(
            f"ASM runs without a single move differ from SSM at the same S by up to "
            f"{max(calm):.2f} s in median completion time: that is the run-to-run noise on "
            f"this machine (2 cores shared with other work), not a cost of ASM."
        )
    lost = [r["lost"] for p in good(data["points"]) for r in fetch_rows(p) if r["ok"]]
    if lost:
        med = spread(lost)[0]
        blocks = math.ceil(data["file_kib"] * 1024 / data["block"])
        notes.append(
            f"A fetch's receiver reported a median {med:.0f} of the file's {blocks} packets "
            f"lost (sent / needed about {1 + med / blocks:.2f})."
        )
    loop = [
        h.get("looped_back", 0) for p in good(data["points"]) if p["group_mode"] == "asm"
        for n, h in p["hosts"].items() if n.startswith("sn")
    ]  # fmt: skip
    if loop and max(loop):
        notes.append(
            f"In ASM the SN host is a member of its sessions' groups (the monitor), so the "
            f"kernel loops each packet it sends back to it: up to {max(loop)} per SN per run, "
            f"read by the monitor (CPU), not counted as unwanted (they never crossed a link)."
        )
    skipped = [p for p in data["points"] if "skipped" in p]
    if skipped:
        notes.append("Not run: " + "; ".join(f"{p['mode']} S={p['sessions']} ({p['skipped']})"
                                                for p in skipped) + ".")  # fmt: skip
    failed = [p for p in data["points"] if "failed" in p]
    if failed:
        notes.append(f"{len(failed)} runs failed: " + "; ".join(p["failed"][:120] for p in failed))
    bad = [r for r in rows if r["verified"] < r["fetches"]]
    if bad:
        notes.append(
            "Fetches not verified within the run's time limit "
            f"({data.get('timeout', '?')} s): "
            + ", ".join(
                f"{r['mode']} S={r['sessions']}: {r['fetches'] - r['verified']} of {r['fetches']}"
                for r in bad
            )  # fmt: skip
        )
    return notes
