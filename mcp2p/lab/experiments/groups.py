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
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mcp2p.lab.daemons import Daemon, start_all
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
from mcp2p.lab.net import Host, LabError, Network, Switch, counter_delta
from mcp2p.lab.progs import command

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

SSM_POOL = "232.0.0.0/8"
ASM_BASE = "239.192.0.0"
DATA_PORT = 7712
BLOCK = 1400
SN_READY = 120.0  # seconds for an SN to start and hash its share
NFT_TABLE = "mcp2p_groups"
FETCH_FIELDS = [
    "cn",  # index of the CN host
    "sn",  # index of the SN host that served it
    "ok",  # the fetch finished and the file is byte-identical to the source
    "start",  # seconds after the go signal the fetch was posted
    "elapsed",  # seconds the daemon reports from search to delivery
    "groups",  # the group it subscribed to, then each group it was moved to
    "packets",  # datagrams its receiver got (all, own and foreign)
    "foreign",  # ... of them: right group, another session
    "accepted",  # ... authenticated and delivered
    "lost",  # packets announced that never came (reported for resending)
    "error",
]


_SUB_RE = re.compile(r"subscription \d+ from \w*: (\S+) by multicast, session ([0-9a-f]{8})")
_MOVE_RE = re.compile(r"session ([0-9a-f]{8}) moved from (\S+) to (\S+):")
_END_RE = re.compile(r"session ([0-9a-f]{8}) ended \((.*?)\): (\d+) packets, (\d+) bytes")


# --------------------------------------------------------------------------
# modes and the model


def parse_mode(mode: str) -> tuple[str, str]:
    """``ssm`` or ``asm/N`` (or ``asm:NET/N``) -> (group_mode, pool)."""
    mode = mode.strip()
    if mode == "ssm":
        return "ssm", SSM_POOL
    m = re.fullmatch(r"asm(?:/(\d+)|:(\S+))", mode)
    if not m:
        raise ValueError(f"mode must be ssm or asm/N (e.g. asm/24), not {mode!r}")
    try:
        net = ipaddress.IPv4Network(
            f"{ASM_BASE}/{m.group(1)}" if m.group(1) else m.group(2), strict=True
        )
    except ValueError as e:
        raise ValueError(f"mode {mode!r}: {e}") from None
    if not net.is_multicast or net.num_addresses < 4:
        raise ValueError(f"mode {mode!r}: the pool must be multicast with 2+ usable groups")
    return "asm", str(net)


def usable_groups(pool: str) -> int:
    """Groups `random_group` can draw from the pool (first and last excluded)."""
    return int(ipaddress.ip_network(pool).num_addresses) - 2


def birthday(sessions: int, groups: int) -> float:
    """Expected number of sessions whose random group another of ``sessions``
    also drew, ``groups`` equally likely groups (the model)."""
    if sessions < 2 or groups < 1:
        return 0.0
    return sessions * (1.0 - (1.0 - 1.0 / groups) ** (sessions - 1))


def model_collisions(mode: str, pool: str, sessions: int, sns: int) -> float:
    """The model's colliding sessions: in ASM every session shares the pool;
    in SSM a channel is (source, group), so only sessions of one SN can collide."""
    n = usable_groups(pool)
    if mode == "ssm":
        per = sessions / max(1, sns)
        return sns * birthday(round(per), n)
    return birthday(sessions, n)


# --------------------------------------------------------------------------
# the run


def _cpu(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _nft_counter(host: Host) -> tuple[int, int, int]:
    """(packets, bytes) of data-port UDP that arrived on the host's interface
    from other hosts, and the packets of its own that the kernel looped back
    (a host that joined a group it sends to gets a copy through the same hook)."""
    cp = host.run(["nft", "-j", "list", "table", "netdev", NFT_TABLE], timeout=15)
    if cp.returncode != 0:
        raise LabError(f"{host.name}: cannot read the data counter: {cp.stderr.strip()}")
    counters = [
        expr["counter"]
        for item in json.loads(cp.stdout).get("nftables", [])
        for expr in item.get("rule", {}).get("expr", [])
        if "counter" in expr
    ]
    if len(counters) != 2:
        raise LabError(f"{host.name}: expected two data counters, found {len(counters)}")
    return int(counters[0]["packets"]), int(counters[0]["bytes"]), int(counters[1]["packets"])


def _count_data(host: Host) -> None:
    ifname = next(iter(host.interfaces))
    me = host.addr()
    script = (
        f"table netdev {NFT_TABLE} {{\n"
        f"  chain ingress {{\n"
        f'    type filter hook ingress device "{ifname}" priority -10;\n'
        f"    ip saddr != {me} udp dport {DATA_PORT} counter\n"
        f"    ip saddr {me} udp dport {DATA_PORT} counter\n"
        f"  }}\n}}\n"
    )
    cp = host.run(["nft", "-f", "-"], input=script, timeout=15)
    if cp.returncode != 0:
        raise LabError(f"{host.name}: nft failed: {cp.stderr.strip()}")


def _snooping(sw: Switch) -> float:
    """IGMP snooping that filters: a querier (without one the bridge floods
    all multicast), IGMPv3 (so SSM joins are filtered per source too), a 1 s
    response interval (the querier counts only after that long), and fast
    leave on every port (one host per port: a leave stops the group at once,
    so a run never gets the tail of a group its host left in the run before).
    Returns the monotonic time from which the snooping filters."""
    sw.ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "1",
          "mcast_igmp_version", "3", "mcast_query_response_interval", "100")  # fmt: skip
    sw.ip("link", "set", "br0", "type", "bridge", "mcast_querier", "1")
    for port in sw.ports():
        cp = sw.run(["bridge", "link", "set", "dev", port.name, "fastleave", "on"], timeout=15)
        if cp.returncode != 0:
            raise LabError(f"fast leave on {port.name}: {cp.stderr.strip()}")
    return time.monotonic() + 1.5


class _Lab:
    def __init__(self, net: Network, root: Path, p: dict[str, Any]) -> None:
        self.net = net
        self.root = root
        self.p = p
        self.sw = net.add_switch("sw", snooping=True)
        self.sn_hosts = [net.add_host(f"sn{i + 1}") for i in range(p["sns"])]
        self.cn_hosts = [net.add_host(f"cn{i + 1}") for i in range(p["cns"])]
        for h in self.sn_hosts + self.cn_hosts:
            net.link(h, self.sw)
        self.filtering_from = _snooping(self.sw)
        for h in self.sn_hosts + self.cn_hosts:
            _count_data(h)
        self.sns: list[Daemon] = []
        self.cns: list[Daemon] = []
        self.files: dict[str, tuple[int, Path]] = {}  # name -> (sn index, path)
        self.mode = ""

    # -- files and daemons

    def make_files(self, reps: int, sizes: list[int]) -> None:
        size = self.p["file_kib"] * 1024
        for rep in range(reps):
            for s in sizes:
                for i in range(s):
                    name = f"r{rep}s{s}f{i:04d}.bin"
                    k = i % len(self.sn_hosts)
                    path = self.root / f"sn{k + 1}" / "share" / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(os.urandom(size))
                    self.files[name] = (k, path)

    def _discovery(self) -> dict[str, str]:
        return {
            "methods": "query",
            "ring_schedule": "1, 2",
            "ring_timeout": "2",
            "answers_wanted": "1",
            "answer_rate": "10000",
            "answer_burst": "10000",
            "reply_delay_min": "0",
            "reply_delay_max": "0.02",
        }

    def start_cns(self) -> None:
        # Each run's files go to base/runs/TAG/cnJ (see run()): the CN daemons may
        # write there ([fetching] download_dirs), besides their own downloads.
        runs = self.root.parent / "runs"
        self.cns = [
            Daemon(
                h,
                self.root / h.name,
                discovery=self._discovery(),
                fetching={
                    "sources": "1",
                    "download_dirs": f"{self.root / h.name / 'downloads'}, {runs}",
                },
            )
            for h in self.cn_hosts
        ]
        start_all([(d, None) for d in self.cns], timeout=SN_READY + 30)

    def start_sns(self, mode: str) -> None:
        self.stop_sns()
        group_mode, pool = parse_mode(mode)
        rate = str(self.p["rate"])
        serving = {
            "group_mode": group_mode,
            "ssm_pool" if group_mode == "ssm" else "asm_pool": pool,
            "rate": rate,
            "min_rate": str(min(self.p["rate"], 64_000)),
            "max_rate": rate,
        }
        self.sns = []
        pairs: list[tuple[Daemon, str | None]] = []
        for k, h in enumerate(self.sn_hosts):
            root = self.root / h.name
            log = root / "twistd.log"
            if log.exists():
                log.rename(root / f"twistd-{self.mode.replace('/', '_')}.log")
            d = Daemon(h, root, discovery=self._discovery(), serving=serving)
            n = sum(1 for sn, _ in self.files.values() if sn == k)
            self.sns.append(d)
            pairs.append((d, f"sharing {n} files"))
        self.mode = mode
        start_all(pairs, timeout=SN_READY + 30)

    def stop_sns(self) -> None:
        """SIGTERM every SN at once, SIGKILL what still runs 3 s later (an SN
        in a move storm may take long to stop)."""
        procs = [(d, d.proc) for d in self.sns if d.proc is not None]
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + 3
        for d, proc in procs:
            d.host.kill(proc, timeout=max(0.1, deadline - time.monotonic()))
            d.proc = None
        self.sns = []

    def stop(self) -> None:
        self.stop_sns()
        for d in self.cns:
            d.stop()

    # -- one run

    def _snapshot(self) -> dict[str, Any]:
        """Every host's data counter and interface counters (read in parallel:
        a few dozen short commands in a row would add a second to each run)."""
        hosts = self.sn_hosts + self.cn_hosts

        def one(h: Host) -> tuple[tuple[int, int, int], dict[str, int]]:
            return _nft_counter(h), h.counters(next(iter(h.interfaces)))

        with ThreadPoolExecutor(len(hosts)) as pool:
            read = dict(zip((h.name for h in hosts), pool.map(one, hosts), strict=True))
        cpu = {d.host.name: _cpu(d.proc.pid if d.proc else None) for d in self.sns + self.cns}
        return {
            "links": {name: v[1] for name, v in read.items()},
            "data": {name: v[0] for name, v in read.items()},
            "cpu": cpu,
        }

    def run(self, mode: str, sessions: int, rep: int, work: Path) -> dict[str, Any]:
        names = [f"r{rep}s{sessions}f{i:04d}.bin" for i in range(sessions)]
        n_sn, n_cn = len(self.sn_hosts), len(self.cn_hosts)
        per_cn: list[list[str]] = [[] for _ in range(n_cn)]
        for i, name in enumerate(names):
            per_cn[(i + i // n_sn) % n_cn].append(name)  # file i is on SN i % n_sn
        tag = f"{mode.replace('/', '_')}-s{sessions}-r{rep}"
        time.sleep(max(0.0, self.filtering_from - time.monotonic()))
        log_at = [len(d.log()) for d in self.sns]
        before = self._snapshot()
        go = time.time() + 0.4
        deadline = go + float(self.p["timeout"])
        procs = []
        outs = []
        for j, (d, mine) in enumerate(zip(self.cns, per_cn, strict=True)):
            out_dir = work / tag / f"cn{j + 1}"
            out_dir.mkdir(parents=True, exist_ok=True)
            names_file = work / tag / f"cn{j + 1}.names.json"
            names_file.write_text(json.dumps(mine))
            out_file = work / tag / f"cn{j + 1}.result.json"
            outs.append((out_dir, out_file))
            assert d.port is not None
            procs.append(
                d.host.popen(
                    command(
                        "fetch_driver", str(d.root / "state"), str(d.port),
                        str(names_file), str(out_dir), repr(go), repr(deadline), str(out_file),
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                )
            )  # fmt: skip
        errors = []
        for j, proc in enumerate(procs):
            try:
                _, err = proc.communicate(timeout=max(5.0, deadline - time.time() + 30))
            except subprocess.TimeoutExpired:
                self.cn_hosts[j].kill(proc)
                err = "driver did not finish"
            if proc.returncode != 0:
                errors.append(f"cn{j + 1} driver: {(err or '').strip()[-500:]}")
        wall = max(0.0, time.time() - go)
        # every session of this run ends (its CN unsubscribed) before counting
        subscribed: dict[str, str] = {}
        until = time.time() + 3
        while True:
            logs = [d.log()[at:] for d, at in zip(self.sns, log_at, strict=True)]
            subscribed = {sid: name for text in logs for name, sid in _SUB_RE.findall(text)}
            ended = {sid for text in logs for sid, *_ in _END_RE.findall(text)}
            if set(subscribed) <= ended or time.time() > until:
                break
            time.sleep(0.1)
        time.sleep(0.2)
        after = self._snapshot()
        return self._result(
            mode, sessions, rep, names, per_cn, outs, logs, subscribed, before, after, go, wall,
            errors,
        )  # fmt: skip

    def _result(
        self,
        mode: str,
        sessions: int,
        rep: int,
        names: list[str],
        per_cn: list[list[str]],
        outs: list[tuple[Path, Path]],
        logs: list[str],
        subscribed: dict[str, str],
        before: dict[str, Any],
        after: dict[str, Any],
        go: float,
        wall: float,
        errors: list[str],
    ) -> dict[str, Any]:
        group_mode, pool = parse_mode(mode)
        rows = []
        cn_needed = [0] * len(self.cn_hosts)
        cn_own = [0] * len(self.cn_hosts)
        cn_moved = [0] * len(self.cn_hosts)
        for j, (out_dir, out_file) in enumerate(outs):
            try:
                fetches = json.loads(out_file.read_text())
            except (OSError, ValueError):
                fetches = [
                    {"name": n, "state": "failed", "events": [], "error": "no driver output"}
                    for n in per_cn[j]
                ]
            for f in fetches:
                sn, src = self.files[f["name"]]
                events = f.get("events", [])
                done = next((e for e in events if e.get("event") == "done"), None)
                groups = [e["group"] for e in events if e.get("event") in ("subscribed", "moved")]
                cn_moved[j] += sum(1 for e in events if e.get("event") == "moved")
                recv = (done or {}).get("receivers") or []
                tot = {k: sum(int(r.get(k, 0)) for r in recv) for k in ("packets", "foreign",
                       "accepted", "lost", "malformed")}  # fmt: skip
                cn_own[j] += tot["packets"] - tot["foreign"] - tot["malformed"]
                cn_needed[j] += math.ceil(self.p["file_kib"] * 1024 / BLOCK)
                got = out_dir / f["name"]
                ok = bool(
                    done is not None
                    and got.is_file()
                    and got.stat().st_size == src.stat().st_size
                    and got.read_bytes() == src.read_bytes()
                )
                error = f.get("error", "")
                if not error and not ok:
                    failed = next((e for e in events if e.get("event") == "failed"), None)
                    error = (failed or {}).get("error") or f.get("result") or "not verified"
                drops = [e.get("reason", "") for e in events if e.get("event") == "source_dropped"]
                if drops:
                    error += " (SN dropped: " + "; ".join(sorted(set(drops))) + ")"
                rows.append([
                    j, sn, ok, round(f.get("t_post", go) - go, 3),
                    round(float(done["elapsed"]), 3) if done else None, groups,
                    tot["packets"], tot["foreign"], tot["accepted"], tot["lost"], error[:200],
                ])  # fmt: skip
            with contextlib.suppress(OSError):
                shutil.rmtree(out_dir)
        moves = sum(len(_MOVE_RE.findall(text)) for text in logs)
        ended = [m for text in logs for m in _END_RE.findall(text) if m[0] in subscribed]
        links = counter_delta(before["links"], after["links"])
        hosts = {}
        for h in self.sn_hosts + self.cn_hosts:
            link = links.get(h.name, {})
            b, a = before["data"][h.name], after["data"][h.name]
            hosts[h.name] = {
                "data_rx_packets": a[0] - b[0],
                "data_rx_bytes": a[1] - b[1],
                "looped_back": a[2] - b[2],
                "rx_packets": link.get("rx_packets", 0),
                "rx_bytes": link.get("rx_bytes", 0),
                "tx_packets": link.get("tx_packets", 0),
                "tx_bytes": link.get("tx_bytes", 0),
                "cpu": round(after["cpu"].get(h.name, 0.0) - before["cpu"].get(h.name, 0.0), 2),
            }
        for j, h in enumerate(self.cn_hosts):
            hosts[h.name]["own_packets"] = cn_own[j]
            hosts[h.name]["needed_packets"] = cn_needed[j]
            hosts[h.name]["moved_events"] = cn_moved[j]
        return {
            "mode": mode,
            "group_mode": group_mode,
            "pool": pool,
            "groups_in_pool": usable_groups(pool),
            "sessions": sessions,
            "rep": rep,
            "wall": round(wall, 2),
            "moves": moves,
            "sn_sessions": len(subscribed),
            "leftover_sessions": len(set(subscribed) - {m[0] for m in ended}),
            "sent_packets": sum(int(m[2]) for m in ended),
            "sent_bytes": sum(int(m[3]) for m in ended),
            "fetch_fields": FETCH_FIELDS,
            "fetches": rows,
            "hosts": hosts,
            "errors": errors,
        }


def _healthy(point: dict[str, Any]) -> bool:
    """Every fetch verified and every session ended by the end of the run."""
    if "failed" in point or point.get("leftover_sessions"):
        return False
    return all(row[2] for row in point.get("fetches", []))


def run(ctx: Context, **p: Any) -> dict[str, Any]:
    sizes = sorted({int(s) for s in p["sessions"]})
    modes = [str(m) for m in p["modes"]]
    for m in modes:
        parse_mode(m)  # bad modes fail before anything is built
    if not sizes or sizes[0] < 1 or not modes:
        raise ValueError("need at least one mode and session count >= 1")
    if p["sns"] < 1 or p["cns"] < 1 or p["file_kib"] < 1 or p["rate"] < 8000:
        raise ValueError("sns, cns, file_kib must be >= 1 and rate >= 8000 bit/s")
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    points: list[dict[str, Any]] = []
    t0 = time.monotonic()
    # Daemon state, shares and downloads on a tmpfs when there is one: every
    # fetch fsyncs its part file and directory on the CN's reactor thread, and
    # hundreds of them on a busy disk pace the fetches, not the network.
    shm = Path("/dev/shm")
    base = (
        Path(tempfile.mkdtemp(prefix="mcp2p-groups-", dir=shm))
        if shm.is_dir() and os.access(shm, os.W_OK)
        else ctx.subdir("files")
    )
    with Network() as net:
        lab = _Lab(net, base / "hosts", p)
        try:
            ctx.progress(f"making {ctx.reps * sum(sizes)} files")
            lab.make_files(ctx.reps, sizes)
            lab.start_cns()
            for mode in modes:
                ctx.progress(f"{mode}: starting {len(lab.sn_hosts)} SNs")
                lab.start_sns(mode)
                groups = usable_groups(parse_mode(mode)[1])
                skip = [s for s in sizes if s > p["oversubscribe"] * groups]
                for s in skip:
                    points.append({"mode": mode, "sessions": s, "skipped": (
                        f"{s} sessions > {p['oversubscribe']:g} x {groups} groups")})  # fmt: skip
                for rep in range(ctx.reps):
                    for s in (s for s in sizes if s not in skip):
                        ctx.progress(f"{mode} S={s}", rep + 1, ctx.reps)
                        try:
                            point = lab.run(mode, s, rep, base / "runs")
                        except (LabError, OSError, subprocess.SubprocessError) as e:
                            point = {"mode": mode, "sessions": s, "rep": rep,
                                     "failed": str(e)[:500]}  # fmt: skip
                        points.append(point)
                        if not _healthy(point):
                            # Sessions still running (a move storm) or SNs that
                            # stopped answering would spoil the next run.
                            ctx.progress(f"{mode}: restarting the SNs after S={s}")
                            lab.start_sns(mode)
        finally:
            lab.stop()
            shutil.rmtree(base, ignore_errors=True)
    return {
        "sns": p["sns"],
        "cns": p["cns"],
        "file_kib": p["file_kib"],
        "rate": p["rate"],
        "timeout": p["timeout"],
        "block": BLOCK,
        "modes": modes,
        "sessions": sizes,
        "reps": ctx.reps,
        "seconds": round(time.monotonic() - t0, 1),
        "points": points,
    }


# --------------------------------------------------------------------------
# analysis (from the JSON only)


def fetch_rows(point: dict[str, Any]) -> list[dict[str, Any]]:
    fields = point.get("fetch_fields", FETCH_FIELDS)
    return [dict(zip(fields, row, strict=False)) for row in point.get("fetches", [])]


def collisions(point: dict[str, Any]) -> int:
    """Sessions that started on a group another session of the run used at an
    overlapping time (lifetimes: post to delivery). In SSM a channel is
    (SN, group), so two SNs on one group do not collide."""
    rows = [r for r in fetch_rows(point) if r["groups"]]
    ssm = point.get("group_mode") == "ssm"
    spans = []
    for r in rows:
        end = r["start"] + (r["elapsed"] if r["elapsed"] is not None else 1e9)
        key = (r["sn"], r["groups"][0]) if ssm else r["groups"][0]
        spans.append((key, r["start"], end))
    hit: set[int] = set()
    by_key: dict[Any, list[int]] = {}
    for i, (key, _, _) in enumerate(spans):
        by_key.setdefault(key, []).append(i)
    for idx in by_key.values():
        for a in idx:
            for b in idx:
                if a < b and spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]:
                    hit.update((a, b))
    return len(hit)


def model_overlap(point: dict[str, Any]) -> float:
    """The birthday model on the measured lifetimes: each session collides with
    probability 1 - (1 - 1/N)^k, k the sessions alive with it at some time (in
    SSM only those of its own SN)."""
    n = point["groups_in_pool"]
    ssm = point.get("group_mode") == "ssm"
    spans = []
    for r in fetch_rows(point):
        if r["groups"]:
            end = r["start"] + (r["elapsed"] if r["elapsed"] is not None else 1e9)
            spans.append((r["sn"], r["start"], end))
    total = 0.0
    for i, (sn, a0, a1) in enumerate(spans):
        k = sum(
            1
            for j, (sn2, b0, b1) in enumerate(spans)
            if j != i and a0 < b1 and b0 < a1 and (not ssm or sn2 == sn)
        )
        total += 1.0 - (1.0 - 1.0 / n) ** k
    return total


def _cn_names(point: dict[str, Any]) -> list[str]:
    return [n for n in point["hosts"] if n.startswith("cn")]


def unwanted(point: dict[str, Any]) -> dict[str, float]:
    """Data packets that reached hosts which wanted none of them: on a CN, all
    arrivals minus those of its own sessions; on an SN, every data arrival
    (an SN wants no data; in ASM its monitor's joins pull other sessions in)."""
    hosts = point["hosts"]
    cns = _cn_names(point)
    cn_pk = [max(0, hosts[n]["data_rx_packets"] - hosts[n]["own_packets"]) for n in cns]
    cn_by = []
    for n, pk in zip(cns, cn_pk, strict=True):
        size = hosts[n]["data_rx_bytes"] / hosts[n]["data_rx_packets"] if pk else 0
        cn_by.append(pk * size)
    sn_pk = [v["data_rx_packets"] for n, v in hosts.items() if n.startswith("sn")]
    foreign = [
        sum(r["foreign"] for r in fetch_rows(point) if r["cn"] == j) for j in range(len(cns))
    ]
    return {
        "cn_packets": sum(cn_pk) / max(1, len(cns)),
        "cn_bytes": sum(cn_by) / max(1, len(cns)),
        "cn_foreign": sum(foreign) / max(1, len(cns)),
        "sn_packets": sum(sn_pk) / max(1, len(sn_pk)),
        "all_packets": float(sum(cn_pk) + sum(sn_pk)),
    }


def completion(point: dict[str, Any]) -> list[float]:
    return [r["elapsed"] for r in fetch_rows(point) if r["ok"] and r["elapsed"] is not None]


def concurrency(point: dict[str, Any]) -> int:
    """The most fetches alive at one time (post to delivery)."""
    marks = []
    for r in fetch_rows(point):
        if r["elapsed"] is not None:
            marks += [(r["start"], 1), (r["start"] + r["elapsed"], -1)]
    level = peak = 0
    for _, d in sorted(marks):
        level += d
        peak = max(peak, level)
    return peak


def _good(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in points if "failed" not in p and "skipped" not in p]


def _cell(data: dict[str, Any], mode: str, s: int) -> list[dict[str, Any]]:
    return [p for p in _good(data["points"]) if p["mode"] == mode and p["sessions"] == s]


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (mode, S): lists over the repetitions."""
    out = []
    for mode in data["modes"]:
        for s in data["sessions"]:
            pts = _cell(data, mode, s)
            failed = [
                p
                for p in data["points"]
                if p["mode"] == mode and p["sessions"] == s and "failed" in p
            ]
            if not pts and not failed:
                continue
            gm, pool = parse_mode(mode)
            rows = [fetch_rows(p) for p in pts]
            needed = [sum(h.get("needed_packets", 0) for h in p["hosts"].values()) for p in pts]
            sn_cpu = [
                sum(v["cpu"] for n, v in p["hosts"].items() if n.startswith("sn")) for p in pts
            ]
            out.append({
                "mode": mode,
                "pool": pool,
                "groups": usable_groups(pool),
                "sessions": s,
                "reps": len(pts),
                "failed_runs": len(failed),
                "model": model_collisions(gm, pool, s, data["sns"]),
                "model_overlap": [model_overlap(p) for p in pts],
                "collisions": [collisions(p) for p in pts],
                "moves": [p["moves"] for p in pts],
                "moved_events": [sum(h.get("moved_events", 0) for h in p["hosts"].values())
                                 for p in pts],
                "foreign_cn": [unwanted(p)["cn_foreign"] for p in pts],
                "unwanted_cn": [unwanted(p)["cn_packets"] for p in pts],
                "unwanted_cn_kb": [unwanted(p)["cn_bytes"] / 1000 for p in pts],
                "unwanted_sn": [unwanted(p)["sn_packets"] for p in pts],
                "unwanted_all": [unwanted(p)["all_packets"] for p in pts],
                "completion": [x for p in pts for x in completion(p)],
                "completion_median": [spread(completion(p))[0] for p in pts],
                # (sessions that never ended never logged what they sent)
                "sent_per_needed": [p["sent_packets"] / n
                                    if n and not p.get("leftover_sessions") else math.nan
                                    for p, n in zip(pts, needed, strict=True)],
                "sn_cpu_per_session": [c / s for c in sn_cpu],
                "peak": [concurrency(p) for p in pts],
                "verified": sum(1 for r in rows for f in r if f["ok"]),
                "fetches": sum(len(r) for r in rows),
            })  # fmt: skip
    return out


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
    lost = [r["lost"] for p in _good(data["points"]) for r in fetch_rows(p) if r["ok"]]
    if lost:
        med = spread(lost)[0]
        blocks = math.ceil(data["file_kib"] * 1024 / data["block"])
        notes.append(
            f"A fetch's receiver reported a median {med:.0f} of the file's {blocks} packets "
            f"lost (sent / needed about {1 + med / blocks:.2f})."
        )
    loop = [
        h.get("looped_back", 0) for p in _good(data["points"]) if p["group_mode"] == "asm"
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
