"""Experiment 3's runner: the namespaces (a snooping IGMPv3 switch, SN and
CN hosts with an nftables data counter each), the daemons, the concurrent
fetches of one run, and `run`, which measures every (mode, S) point."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mcp2p.lab.daemons import Daemon, start_all
from mcp2p.lab.experiment import Context
from mcp2p.lab.experiments.groups import record
from mcp2p.lab.experiments.groups.analysis import healthy
from mcp2p.lab.experiments.groups.model import BLOCK, parse_mode, usable_groups
from mcp2p.lab.net import Host, LabError, Network, Switch
from mcp2p.lab.progs import command

DATA_PORT = 7712
SN_READY = 120.0  # seconds for an SN to start and hash its share
NFT_TABLE = "mcp2p_groups"


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
    """The switch, ``sns`` SN and ``cns`` CN hosts on it, their files and
    daemons (SNs restarted per mode), and one run of concurrent fetches."""

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
            subscribed, ended = record.sn_sessions(logs)
            if set(subscribed) <= ended or time.time() > until:
                break
            time.sleep(0.1)
        time.sleep(0.2)
        after = self._snapshot()
        point = record.point(
            mode=mode, sessions=sessions, rep=rep, files=self.files,
            file_kib=self.p["file_kib"], per_cn=per_cn, outs=outs, logs=logs,
            subscribed=subscribed, sn_names=[h.name for h in self.sn_hosts],
            cn_names=[h.name for h in self.cn_hosts], before=before, after=after, go=go,
            wall=wall, errors=errors,
        )  # fmt: skip
        for out_dir, _ in outs:
            with contextlib.suppress(OSError):
                shutil.rmtree(out_dir)
        return point


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
                        if not healthy(point):
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
