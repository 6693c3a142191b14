"""Experiment 5, key servers reached by anycast: replication, look-ups, failover, floods.

Topology (`mcp2p.lab.anycast.AnycastLab`): N key servers ``ks1..ksN``, one
behind each router of a chain ``r1..rN``; ``cn1`` on r1 (its nearest server
ks1 is 1 router away) and ``cn3`` behind two more routers (ks1 3 routers
away). Every router and server runs BIRD with OSPF (hello 1 s, dead
``dead`` s); every server announces the anycast address 10.99.99.1/32. The
servers are real daemons (``[keys] serve = yes``, listening on all
addresses, every other server as a peer, anti-entropy every
``replication_interval`` s). The CNs run the real client
(`mcp2p.trust.keyclient`) through ``python -m mcp2p.lab.anycast``.

1. Replication: cn1 publishes a record to ks1 (its unicast address) and
   polls every server (every 20 ms) until each holds it.
2. Look-ups from cn1 and cn3 to the anycast address: which server
   answered (its ``X-Key-Server``) and the latency (connect + HTTP + verify).
3. A sybil flood: cn3 posts ``flood`` records of fresh keys to the anycast
   address, 4 at a time, while cn1 publishes an honest record; then every
   server's summary must agree, and the honest record be on every server.
4. Failover: cn1 looks up every 50 ms (timeout 0.5 s); ks1 crashes (its
   daemon and its bird are SIGKILLed); the failover time is from the crash
   to the first answer from another server.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mcp2p.lab.anycast import ANYCAST4, HKP_PORT, PROBE, AnycastLab, missing
from mcp2p.lab.daemons import Daemon, start_all
from mcp2p.lab.experiment import Context, Param, ReportOut, Section, fmt_spread, md_table
from mcp2p.lab.net import Host, LabError, Network

NAME = "keys"
TITLE = "Key servers reached by anycast"
QUESTION = (
    "How long until a record published to one key server is on all of them, how fast "
    "does a CN's look-up through the anycast address answer at 1 and 3 hops, how long "
    "does failover take when the nearest server dies, and does a sybil flood cost "
    "honest records anything?"
)
PARAMS = {
    "servers": Param([3, 10], [3], [3], "key servers (one per backbone router)"),
    "lookups": Param(50, 20, 5, "look-ups per CN"),
    "flood": Param(2000, 400, 60, "sybil records posted in the flood"),
    "replication_interval": Param(1.0, 1.0, 0.5, "seconds between anti-entropy rounds"),
    "dead": Param(3, 3, 3, "OSPF dead interval, seconds (hello 1 s)"),
    "add_rate": Param(5.0, 5.0, 5.0, "[keys] add_rate: records/s one address may add"),
}


def _probe(host: Host, *args: str, timeout: float = 120) -> Any:
    cp = host.run([*PROBE, *args], timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"probe {args[0]} on {host.name}: {cp.stderr[-2000:]}")
    return json.loads(cp.stdout)


def _start_probe(host: Host, *args: str) -> subprocess.Popen[Any]:
    return host.popen(
        [*PROBE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def _finish(proc: subprocess.Popen[Any], what: str, timeout: float = 120) -> Any:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise LabError(f"probe {what}: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out)


def _record_file(root: Path, name: str, labels: list[str]) -> tuple[str, Path]:
    from mcp2p.trust import records
    from mcp2p.trust.keys import load_or_create

    identity = load_or_create(root / name)
    record = records.make_record(identity, int(time.time()), labels=labels)
    path = root / f"{name}.record"
    path.write_bytes(record.encode() + b"\n")
    return identity.node_id.hex(), path


def run_point(
    ctx: Context,
    root: Path,
    servers: int,
    lookups: int,
    flood: int,
    replication_interval: float,
    dead: int,
    add_rate: float,
) -> dict[str, Any]:
    from mcp2p.trust.keys import load_or_create

    out: dict[str, Any] = {"servers": servers}
    with Network() as net:
        t0 = time.monotonic()
        lab = AnycastLab(net, servers=servers, dead=dead).build()
        out["converge_s"] = time.monotonic() - t0
        endpoints = [f"{h.addr()}:{HKP_PORT}" for h in lab.ks]
        daemons = []
        for host, ep in zip(lab.ks, endpoints, strict=True):
            keys = {
                "serve": "yes",
                "listen": f"0.0.0.0:{HKP_PORT}",
                "peers": ", ".join(e for e in endpoints if e != ep),
                "replication_interval": str(replication_interval),
                "lookup_timeout": "2",
                "add_rate": str(add_rate),
                "add_burst": "20",
            }
            daemons.append(Daemon(host, root / host.name, keys=keys))
        ctx.progress(f"{servers} servers: starting daemons")
        start_all([(d, "key server on") for d in daemons])
        names = {load_or_create(root / h.name / "state").node_id.hex(): h.name for h in lab.ks}
        cn1, cn3 = lab.cns[1], lab.cns[3]

        # 1. replication of one record
        ctx.progress(f"{servers} servers: replication")
        alice, alice_file = _record_file(root, "alice", ["alice"])
        rep = _probe(
            cn1, "poll", "--record", str(alice_file), "--to", endpoints[0],
            "--servers", ",".join(endpoints), "--interval", "0.02", "--duration", "60",
        )  # fmt: skip
        out["replication"] = {
            "posted": rep["posted"],
            "seen": {names_of(endpoints, lab, e): t for e, t in rep["seen"].items()},
        }

        # 2. look-ups at 1 and 3 hops
        out["lookups"] = {}
        for hops, cn in ((1, cn1), (3, cn3)):
            ctx.progress(f"{servers} servers: look-ups at {hops} hops")
            rows = _probe(
                cn, "lookups", "--node", alice, "--count", str(lookups), "--interval", "0.05",
                "--timeout", "2",
            )  # fmt: skip
            out["lookups"][str(hops)] = [[names.get(r[1] or "", r[1]), r[2], r[3]] for r in rows]

        # 3. the sybil flood, with an honest record published meanwhile
        ctx.progress(f"{servers} servers: sybil flood of {flood}")
        bob, bob_file = _record_file(root, "bob", ["bob"])
        flooder = _start_probe(
            cn3, "flood", "--count", str(flood), "--parallel", "4", "--duration", "120",
            "--timeout", "5",
        )  # fmt: skip
        time.sleep(0.5)
        honest = _probe(
            cn1, "poll", "--record", str(bob_file), "--servers", ",".join(endpoints),
            "--interval", "0.05", "--duration", "60",
        )  # fmt: skip
        flooded = _finish(flooder, "flood", timeout=180)
        summaries: dict[str, Any] = {}
        deadline = time.monotonic() + 10 * replication_interval + 20
        while time.monotonic() < deadline:
            summaries = _probe(cn1, "summary", "--servers", ",".join(endpoints))
            if len({json.dumps(v) for v in summaries.values()}) == 1:
                break
            time.sleep(replication_interval)
        out["flood"] = {
            "codes": flooded["codes"],
            "seconds": flooded["seconds"],
            "honest_posted": honest["posted"],
            "honest_seen": {names_of(endpoints, lab, e): t for e, t in honest["seen"].items()},
            "records": {names_of(endpoints, lab, e): v[0] for e, v in summaries.items()},
            "agree": len({json.dumps(v) for v in summaries.values()}) == 1,
        }

        # 4. failover: ks1 crashes while cn1 looks up
        ctx.progress(f"{servers} servers: failover")
        probe = _start_probe(
            cn1, "lookups", "--node", alice, "--count", "100000", "--interval", "0.05",
            "--timeout", "0.5", "--duration", str(dead * 3 + 6),
        )  # fmt: skip
        time.sleep(1.5)
        crashed = time.time()
        assert daemons[0].proc is not None
        daemons[0].proc.kill()
        lab.kill_server(0)
        daemons[0].stop()
        rows = _finish(probe, "failover", timeout=dead * 3 + 60)
        after = [r for r in rows if r[0] >= crashed]
        answered = [r for r in after if r[1] is not None and names.get(r[1]) != "ks1"]
        out["failover"] = {
            "crashed": crashed,
            "rows": [[r[0] - crashed, names.get(r[1] or "", r[1]), r[2], r[3]] for r in rows],
            "failover_s": (answered[0][0] + answered[0][2] - crashed) if answered else None,
            "failed_lookups": sum(1 for r in after if r[1] is None),
        }
        rows3 = _probe(cn3, "lookups", "--node", alice, "--count", "3", "--timeout", "2")
        out["after_failover_3hops"] = [[names.get(r[1] or "", r[1]), r[2], r[3]] for r in rows3]
        for d in daemons:
            d.stop()
    return out


def names_of(endpoints: list[str], lab: AnycastLab, endpoint: str) -> str:
    return lab.ks[endpoints.index(endpoint)].name if endpoint in endpoints else endpoint


def run(ctx: Context, **params: Any) -> dict[str, Any]:
    reason = missing()
    if reason:
        raise LabError(f"keys experiment: {reason}")
    points = []
    for n in params["servers"]:
        for rep in range(1, ctx.reps + 1):
            ctx.progress(f"{n} servers", rep, ctx.reps)
            root = ctx.subdir(f"n{n}-rep{rep}")
            try:
                point = run_point(
                    ctx, root, n, params["lookups"], params["flood"],
                    params["replication_interval"], params["dead"], params["add_rate"],
                )  # fmt: skip
            except LabError as e:
                point = {"servers": n, "failed": str(e)[:2000]}
            point["rep"] = rep
            points.append(point)
    ctx.done()
    return {"params": params, "reps": ctx.reps, "points": points}


# -- report ---------------------------------------------------------------------------


def replication_time(point: dict[str, Any]) -> float | None:
    seen = point["replication"]["seen"]
    return max(seen.values()) if len(seen) == point["servers"] else None


def report(data: dict[str, Any], out: ReportOut) -> Section:
    p = data["params"]
    ok = [pt for pt in data["points"] if "failed" not in pt]
    notes = [
        f"{pt['servers']} servers rep {pt['rep']}: {pt['failed']}"
        for pt in data["points"]
        if "failed" in pt
    ]
    rows = []
    for n in p["servers"]:
        pts = [pt for pt in ok if pt["servers"] == n]
        if not pts:
            continue
        repl = [replication_time(pt) for pt in pts]
        fail = [pt["failover"]["failover_s"] for pt in pts]
        rows.append([
            n,
            fmt_spread([pt["converge_s"] for pt in pts], 1, " s"),
            fmt_spread([1000 * r for r in repl if r is not None], 0, " ms"),
            fmt_spread([f for f in fail if f is not None], 2, " s"),
            fmt_spread([pt["failover"]["failed_lookups"] for pt in pts], 0),
        ])  # fmt: skip
    tables = [
        "Replication (publish on ks1 until every server holds it) and failover "
        "(ks1 crashes: from the crash to cn1's first answer from another server)\n\n"
        + md_table(
            ["servers", "OSPF converged", "replication", "failover", "look-ups failed meanwhile"],
            rows,
        )
    ]
    rows = []
    for n in p["servers"]:
        pts = [pt for pt in ok if pt["servers"] == n]
        for hops in ("1", "3"):
            lk = [r for pt in pts for r in pt["lookups"][hops]]
            if not lk:
                continue
            who = sorted({str(r[0]) for r in lk})
            rows.append([
                n, hops, ", ".join(who),
                fmt_spread([1000 * r[1] for r in lk if r[2] is None], 1, " ms"),
                sum(1 for r in lk if r[2] is not None),
            ])  # fmt: skip
    tables.append(
        "Look-ups through the anycast address (connect, HTTP, verify)\n\n"
        + md_table(["servers", "hops to nearest", "answered by", "latency", "failed"], rows)
    )
    rows = []
    for pt in ok:
        f = pt["flood"]
        honest = f["honest_seen"]
        rows.append([
            pt["servers"], pt["rep"], sum(f["codes"].values()),
            f["codes"].get("200", 0), f["codes"].get("429", 0), f"{f['seconds']:.1f} s",
            f"{len(honest)}/{pt['servers']}",
            f"{1000 * max(honest.values()):.0f} ms" if honest else "-",
            "yes" if f["agree"] else "no",
        ])  # fmt: skip
    tables.append(
        f"Sybil flood from one address (add_rate {p['add_rate']:g}/s, burst 20) with an "
        "honest record published meanwhile from another\n\n"
        + md_table(
            [
                "servers",
                "rep",
                "posted",
                "stored",
                "refused (rate)",
                "took",
                "honest record on",
                "honest replication",
                "servers agree",
            ],
            rows,
        )  # fmt: skip
    )
    med_repl = fmt_spread([replication_time(pt) or float("nan") for pt in ok], 2, " s")
    med_fail = fmt_spread(
        [pt["failover"]["failover_s"] for pt in ok if pt["failover"]["failover_s"]], 1, " s"
    )
    conclusion = (
        f"A record published to one server was on all of them after {med_repl} "
        f"(anti-entropy every {p['replication_interval']:g} s, every server a peer of "
        f"every other); when the nearest server crashed, look-ups moved to the next one "
        f"after {med_fail}, the OSPF dead interval ({p['dead']} s) plus a route "
        "recomputation, and a flood from one address stored only what its rate allows "
        "while the honest record still reached every server."
    )
    setup = (
        f"Chain of N routers with one key server each, OSPF (BIRD 2, hello 1 s, dead "
        f"{p['dead']} s), anycast {ANYCAST4}/32 announced by every server; cn1 1 router "
        "and cn3 3 routers from the nearest server (ks1). "
        f"{data['reps']} repetition(s) per N."
    )
    return Section(setup=setup, tables=tables, plots=[], conclusion=conclusion, notes=notes)
