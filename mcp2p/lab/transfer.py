"""Transfers between real daemons in namespaces: one SN, N CNs on a switch.

The shape every transfer test and benchmark shares::

    with tempfile.TemporaryDirectory() as tmp, Network() as net:
        lab = StarLab(net, Path(tmp), cns=4, rate=100_000_000, loss=0.01)
        lab.share(20 << 20)                  # one random file, made once
        lab.start_sn(rate="95M")             # twistd -n mcp2p in the SN's namespace
        result = lab.fetch(4, mode="multicast", code="plain")   # CN daemons
        result.sn_tx_bytes / result.size     # measured on the SN's veth
        result.link_bytes / result.size      # sent on every link end
        lab.stop()                           # or leave it to the Network

The topology is a star: a Linux bridge (IGMP snooping off, so multicast is
flooded; DESIGN.md 9) with the SN host and hosts ``cn1`` ... ``cnN`` plugged
in. ``rate`` (bit/s) puts a tbf on both ends of every link, so both what the
SN sends and what each CN receives are limited; ``loss`` drops that
fraction of UDP arriving at each CN (nftables ingress on the CN's veth).
The TCP control channels are not dropped.

Every CN host runs its own ``twistd -n mcp2p`` (started once per lab by
the first fetch, `start_cns`), whose share directory stays empty, so a CN
never serves what it fetched to the others. A fetch runs ``mcp2p get NAME
-o DIR --json`` in each CN's namespace: the CLI posts the fetch to its
host's daemon and prints the daemon's events. The CLIs are started in a
Python that has already imported the CLI and waits for a start signal, so
N CNs start together (or at the given ``starts`` offsets) and import time is
not measured; should no daemon answer, the CLI fails instead of falling
back to an in-process fetch. The SN's transmitted bytes are read from its
veth's counters before the start and after the last CN exited: everything
the SN sent (data, notices, TLS, discovery) is in the ratio; the bytes sent
on every link end of the network (`Network.link_counters`) are recorded
too. Every delivered file is hashed and compared with the source.

All traffic stays inside the namespaces of the `Network` (DESIGN.md 10);
every process is started through it and killed by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp2p.commands import twistd_node
from mcp2p.lab.daemons import Daemon, ini_text, node_sections, start_all
from mcp2p.lab.net import Host, LabError, Link, Network, Switch, counter_delta
from mcp2p.lab.procstat import CpuMeter
from mcp2p.lab.progs import command

__all__ = [
    "CNResult",
    "FetchResult",
    "StarLab",
    "file_digest",
    "make_file",
    "median",
]

FILE_NAME = "data.bin"
QUERY_GROUP6 = "ff15::77"  # the query group of a family-6 star (the default's IPv6 one)
START_TIMEOUT = 60.0  # seconds for the SN to start and index its file
READY_TIMEOUT = 60.0  # seconds for the CN processes to import and wait


def make_file(path: Path, size: int, chunk: int = 8 << 20) -> Path:
    """A file of ``size`` random bytes (written in chunks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    return path


def file_digest(path: Path) -> str:
    try:
        import blake3

        h: Any = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(str(path))
        return str(h.hexdigest())
    except (ImportError, AttributeError):
        import hashlib

        h2 = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h2.update(block)
        return h2.hexdigest()


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class CNResult:
    """One CN's fetch: its last event and whether the file verified."""

    name: str
    returncode: int | None
    done: dict[str, Any] | None
    verified: bool
    wall: float  # seconds from the start signal to the CLI's exit
    error: str = ""
    start: float = 0.0  # seconds after the start signal this CN began
    cpu: float | None = None  # user+sys seconds of its daemon (or receiver) over the run
    groups: list[str] = field(default_factory=list)  # multicast groups it was given

    @property
    def receivers(self) -> list[dict[str, Any]]:
        """The receiver counters of the done event (one dict per source)."""
        return list((self.done or {}).get("receivers") or [])

    @property
    def store(self) -> dict[str, Any]:
        """The store counters of the done event."""
        return dict((self.done or {}).get("store") or {})

    @property
    def ok(self) -> bool:
        return self.done is not None and self.verified

    @property
    def elapsed(self) -> float:
        """The fetch's own elapsed time (search to delivery), seconds."""
        return float(self.done["elapsed"]) if self.done else float("nan")


@dataclass
class FetchResult:
    """N CNs fetching the shared file at the same time."""

    size: int
    mode: str
    code: str
    cns: list[CNResult]
    sn_tx_bytes: int
    sn_tx_packets: int
    wall: float  # start signal to the last CN's exit
    drops: dict[str, int] = field(default_factory=dict)  # loss-rule drops per CN
    link_bytes: int = 0  # bytes sent on every link end of the network (sum of tx)
    link_delta: dict[str, dict[str, int]] = field(default_factory=dict)  # per link end
    error: str = ""  # what failed beside the CNs (a peer tool's sender, say)
    sn_cpu: float | None = None  # user+sys seconds of the SN's daemon (or sender) over the run

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cns)

    @property
    def cn_cpu(self) -> list[float | None]:
        """Per CN: CPU seconds of its daemon (or receiver) over the run."""
        return [c.cpu for c in self.cns]

    @property
    def cpu_cores(self) -> float | None:
        """All the run's measured CPU (SN and CNs) over its wall time: how
        many cores the tool kept busy (None: a process was not measured)."""
        values = [self.sn_cpu, *self.cn_cpu]
        if any(v is None for v in values) or not self.wall > 0:
            return None
        return sum(v for v in values if v is not None) / self.wall

    @property
    def sn_ratio(self) -> float:
        """SN transmitted bytes / file size."""
        return self.sn_tx_bytes / self.size

    @property
    def link_ratio(self) -> float:
        """Bytes sent on all links / file size."""
        return self.link_bytes / self.size if self.size else float("nan")

    @property
    def elapsed(self) -> list[float]:
        return [c.elapsed for c in self.cns]

    @property
    def slowest(self) -> float:
        """The slowest CN's fetch time; infinite if one failed."""
        return max(e if e == e else float("inf") for e in self.elapsed)

    @property
    def goodputs(self) -> list[float]:
        """Per CN: file size / its elapsed time, in MB/s (10^6 bytes)."""
        return [self.size / e / 1e6 if e > 0 else 0.0 for e in self.elapsed]

    def failures(self) -> str:
        parts = [
            f"{c.name}: rc={c.returncode} verified={c.verified} {c.error}".strip()
            for c in self.cns
            if not c.ok
        ]
        if self.error and not self.ok:
            parts.append(self.error)
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mode": self.mode,
            "code": self.code,
            "ok": self.ok,
            "sn_tx_bytes": self.sn_tx_bytes,
            "sn_tx_packets": self.sn_tx_packets,
            "sn_ratio": self.sn_ratio,
            "wall": self.wall,
            "elapsed": self.elapsed,
            "goodput_mb_s": self.goodputs,
            "loss_drops": self.drops,
            "link_bytes": self.link_bytes,
            "link_ratio": self.link_ratio,
            "link_delta": self.link_delta,
            "error": self.error,
            "sn_cpu_s": _round(self.sn_cpu),
            "cn_cpu_s": [_round(c) for c in self.cn_cpu],
            "cpu_cores": _round(self.cpu_cores),
            "cns": [
                {
                    "name": c.name,
                    "ok": c.ok,
                    "start": c.start,
                    "elapsed": c.elapsed,
                    "wall": c.wall,
                    "error": c.error,
                    "store": c.store,
                    "receivers": c.receivers,
                    "cpu_s": _round(c.cpu),
                    "groups": c.groups,
                }
                for c in self.cns
            ],
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class StarLab:
    """One switch, the SN and ``cns`` CN hosts; see the module docstring.

    ``root`` is a directory this object may fill (file, state dirs, logs).
    ``family`` 6 runs mcp2p over IPv6: every daemon gets ``[node]
    interface6`` (its veth to the switch) and queries only the IPv6 query
    group, so the CNs find the SN, and reach it, over IPv6 (the hosts'
    fd77:: addresses), and the CNs ask for IPv6 sessions (``[fetching]
    family = 6``); `addr` gives the peers the SN's address of that family.
    """

    def __init__(
        self,
        net: Network,
        root: Path,
        cns: int,
        *,
        rate: int | None = None,
        loss: float | None = None,
        family: int = 4,
    ) -> None:
        if cns < 1:
            raise LabError("a star needs at least one CN")
        if family not in (4, 6):
            raise LabError("family is 4 or 6")
        self.family = family
        self.net = net
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.loss = loss
        self.switch: Switch = net.add_switch("sw")
        self.sn: Host = net.add_host("sn")
        self.sn_link = net.link(self.sn, self.switch, rate=rate)
        self.hosts: list[Host] = []
        self.cn_links: list[Link] = []
        for i in range(cns):
            host = net.add_host(f"cn{i + 1}")
            link = net.link(host, self.switch, rate=rate)
            if loss:
                link.set_loss(loss, dst=host)
            self.hosts.append(host)
            self.cn_links.append(link)
        for node in (self.switch, self.sn, *self.hosts):
            node.wait_ready()
        self.files: dict[str, tuple[int, str]] = {}  # name -> (size, digest)
        self.sn_proc: subprocess.Popen[Any] | None = None
        self.sn_dir = self.root / "sn"
        self.cns: dict[str, Daemon] = {}  # host name -> its long-lived daemon
        self._cn_settings: tuple[float, tuple[str, ...]] | None = None
        self.runs = 0
        self.loss_proto = "udp"

    def set_loss(self, loss: float | None, proto: str = "udp") -> None:
        """Drop this fraction of the packets arriving at every CN (None: no
        loss): UDP by default, as DESIGN.md 9 says; ``proto="tcp, udp"``
        drops TCP segments too (a plain-TCP peer's data). The packets the
        CNs send are never dropped."""
        match = f"{{ {proto} }}" if "," in proto else proto
        for host, link in zip(self.hosts, self.cn_links, strict=True):
            link.set_loss(loss, dst=host, proto=match)
        self.loss = loss or None
        self.loss_proto = proto

    def addr(self, host: Host) -> str:
        """``host``'s address on the star in the lab's family."""
        return host.addr(self.switch, family=self.family)

    def family_sections(self, host: Host) -> dict[str, dict[str, str]]:
        """What a daemon's ini adds for the lab's family: nothing for IPv4;
        for IPv6 ``[node] interface6`` and only the IPv6 query group."""
        if self.family == 4:
            return {}
        return {
            "node": {"interface6": host.ifname(self.switch)},
            "discovery": {"query_groups": QUERY_GROUP6},
        }

    def run_dir(self, tag: str = "") -> Path:
        """A fresh directory for the next run (fetch or peer tool)."""
        self.runs += 1
        path = self.root / f"run{self.runs}{'-' + tag if tag else ''}"
        path.mkdir(parents=True)
        return path

    # -- the SN

    def share(self, size: int, name: str = FILE_NAME, source: Path | None = None) -> Path:
        """Share a random file of ``size`` bytes called ``name`` (or hard-link
        or copy ``source``, an existing file, so a bench makes its file once).
        Share every file before `start_sn`."""
        share = self.sn_dir / "share"
        share.mkdir(parents=True, exist_ok=True)
        path = share / name
        if source is not None:
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
        else:
            make_file(path, size)
        self.files[name] = (path.stat().st_size, file_digest(path))
        return path

    def sn_ini(self, rate: str, max_rate: str | None = None, **serving: str) -> str:
        return ini_text(
            node_sections(
                self.sn.addr(),
                self.sn_dir,
                serving={"rate": rate, "max_rate": max_rate or rate, "grace": "1", **serving},
                **self.family_sections(self.sn),
            )
        )

    def start_sn(
        self,
        rate: str = "2G",
        max_rate: str | None = None,
        *,
        prefix: list[str] | None = None,
        **serving: str,
    ) -> subprocess.Popen[Any]:
        """Start ``twistd -n mcp2p`` in the SN's namespace and wait until it
        shares the file. ``rate``/``max_rate`` go to [serving]; ``prefix``
        (e.g. a profiler's argv) runs before twistd."""
        if not self.files:
            raise LabError("share() a file before starting the SN")
        ini = self.sn_dir / "node.ini"
        ini.write_text(self.sn_ini(rate, max_rate, **serving))
        log_path = self.sn_dir / "twistd.log"
        with open(log_path, "wb") as log:
            proc = self.sn.popen(
                [*(prefix or []), *twistd_node(str(ini))],
                cwd=self.sn_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.sn_proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        ready = f"sharing {len(self.files)} files"
        while ready not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop_sn()
                raise LabError("SN did not start:\n" + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        return proc

    def stop_sn(self) -> None:
        if self.sn_proc is not None:
            self.sn.kill(self.sn_proc, timeout=10)
            self.sn_proc = None

    def sn_log(self) -> str:
        try:
            return (self.sn_dir / "twistd.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- the CNs

    def cn_sections(self, stall_timeout: float, host: Host) -> dict[str, dict[str, str]]:
        """What a CN daemon's ini says beyond `node_sections`' defaults: its
        share directory stays empty and downloads go to per-fetch out dirs
        under ``root`` (so the daemon may write there: [fetching]
        download_dirs), so a CN never serves what it fetched to the other CNs."""
        sections = {
            "discovery": {"methods": "query", "answers_wanted": "1"},
            "fetching": {
                "stall_timeout": str(stall_timeout),
                "sources": "1",
                "download_dirs": str(self.root),
            },
        }
        for name, options in self.family_sections(host).items():
            sections.setdefault(name, {}).update(options)
        if self.family == 6:  # not merely "auto" (the family the SN was found at)
            sections["fetching"]["family"] = "6"
        return sections

    def start_cns(
        self, *, stall_timeout: float = 30, prefix: list[str] | None = None
    ) -> list[Daemon]:
        """Start (or restart, when the settings changed) ``twistd -n mcp2p``
        on every CN host; all start at once and this waits for their APIs.
        `fetch` calls it; a daemon that died is started again."""
        want = (stall_timeout, tuple(prefix or ()))
        if want != self._cn_settings:
            self.stop_cns()
            self._cn_settings = want
        todo = [h for h in self.hosts if not (h.name in self.cns and self.cns[h.name].running())]
        if todo:
            for host in todo:
                old = self.cns.pop(host.name, None)
                if old is not None:
                    old.stop()
                self.cns[host.name] = Daemon(
                    host, self.root / "cns" / host.name, **self.cn_sections(stall_timeout, host)
                )
            start_all([(self.cns[h.name], None) for h in todo], prefix=prefix)
        return [self.cns[h.name] for h in self.hosts]

    def stop_cns(self) -> None:
        for daemon in self.cns.values():
            daemon.stop()
        self.cns.clear()

    def stop(self) -> None:
        """Stop every daemon of the lab (the Network kills them anyway)."""
        self.stop_cns()
        self.stop_sn()

    def fetch(
        self,
        n: int | None = None,
        *,
        name: str = FILE_NAME,
        mode: str = "multicast",
        code: str = "plain",
        rate: str | None = None,
        timeout: float = 300,
        keep: bool = False,
        stall_timeout: float = 30,
        prefix: list[str] | None = None,
        starts: list[float] | None = None,
    ) -> FetchResult:
        """``n`` CNs (the first n hosts) fetch the shared file.

        Every CN host runs a long-lived ``twistd -n mcp2p`` (`start_cns`);
        a fetch runs ``mcp2p get NAME -o DIR --json`` in each CN's namespace,
        which posts the fetch to that host's daemon and prints its events.
        The CLI processes are started first and wait for one start signal;
        CN i starts ``starts[i]`` seconds after it (default: all at 0).
        Each fetch gets a fresh output directory. ``rate`` is the CLI's
        ``--rate`` (the rate a CN asks for; the SN's [serving] bounds it).
        A CN still running ``timeout`` seconds after its start is stopped
        (its transfer cancelled) and counted as failed; its daemon is then
        restarted so the next fetch starts clean. Downloads are deleted
        afterwards unless ``keep``. ``stall_timeout`` and ``prefix`` (argv
        run before each CN's twistd, e.g. a profiler) are daemon settings:
        changing them restarts the CN daemons.
        """
        if self.sn_proc is None or self.sn_proc.poll() is not None:
            raise LabError("the SN is not running:\n" + self.sn_log()[-3000:])
        if name not in self.files:
            raise LabError(f"{name!r} is not shared; share() it first")
        hosts = self.hosts[: n or len(self.hosts)]
        offsets = [0.0] * len(hosts) if starts is None else [float(s) for s in starts]
        if len(offsets) != len(hosts) or any(not 0 <= s < timeout for s in offsets):
            raise LabError(f"starts needs {len(hosts)} offsets in [0, timeout)")
        daemons = self.start_cns(stall_timeout=stall_timeout, prefix=prefix)
        run_dir = self.run_dir()
        go = run_dir / "go"
        procs = []
        for host, daemon, offset in zip(hosts, daemons, offsets, strict=False):
            cn_root = run_dir / host.name
            cn_root.mkdir(parents=True)
            args = [
                "--config",
                str(daemon.ini),
                "get",
                name,
                "-o",
                str(cn_root / "out"),
                "--json",
                "--mode",
                mode,
                "--code",
                code,
                "--sources",
                "1",
            ]
            if rate is not None:
                args += ["--rate", rate]
            out = open(cn_root / "events.jsonl", "wb")  # noqa: SIM115 - closed below
            err = open(cn_root / "stderr.txt", "wb")  # noqa: SIM115
            cmd = command(
                "cn_cli",
                str(go),
                str(cn_root / "ready"),
                str(READY_TIMEOUT + 30),
                str(offset),
                *args,
            )
            proc = host.popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            procs.append((host, cn_root, proc, out, err))
        restart: list[Daemon] = []
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not all((r / "ready").exists() for _, r, _, _, _ in procs):
                dead = [h.name for h, _, p, _, _ in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    errors = {
                        h.name: (r / "stderr.txt").read_text(errors="replace")[-2000:]
                        for h, r, _, _, _ in procs
                    }
                    raise LabError(f"CNs did not get ready (dead: {dead}): {errors}")
                time.sleep(0.02)
            sn_if = self.sn.ifname(self.switch)
            links_before = self.net.link_counters()
            before = self.sn.counters(sn_if)
            drops_before = {h.name: self.drops(h) for h in hosts}
            measured = [self.sn_proc, *(d.proc for d in daemons[: len(hosts)])]
            meter = CpuMeter(p for p in measured if p is not None)
            meter.start()
            started = time.monotonic()
            go.touch()
            walls: dict[str, float] = {}
            while len(walls) < len(procs):
                now = time.monotonic()
                for (host, _, proc, _, _), offset, daemon in zip(
                    procs, offsets, daemons, strict=False
                ):
                    if host.name in walls:
                        continue
                    if proc.poll() is not None:
                        walls[host.name] = now - started
                    elif now > started + offset + timeout:
                        self._cancel(host, proc)
                        restart.append(daemon)
                        walls[host.name] = float("nan")
                time.sleep(0.01)
            wall = time.monotonic() - started
            meter.stop()
            after = self.sn.counters(sn_if)
            links_after = self.net.link_counters()
            drops = {h.name: self.drops(h) - drops_before[h.name] for h in hosts}
        finally:
            for host, _, proc, out, err in procs:
                if proc.poll() is None:
                    self._cancel(host, proc)
                out.close()
                err.close()
        size, digest = self.files[name]
        results = [
            self._cn_result(h, r, p, walls.get(h.name, float("nan")), name, digest, offset)
            for (h, r, p, _, _), offset in zip(procs, offsets, strict=True)
        ]
        for result, daemon in zip(results, daemons, strict=False):
            result.cpu = meter.seconds(daemon.proc) if daemon.proc is not None else None
            if not result.ok and daemon not in restart:
                restart.append(daemon)  # whatever it still holds, start clean
        for daemon in restart:
            daemon.stop()  # start_cns starts it again before the next fetch
        if not keep:
            for _, cn_root, _, _, _ in procs:
                shutil.rmtree(cn_root / "out", ignore_errors=True)
        delta = counter_delta(links_before, links_after)
        return FetchResult(
            size=size,
            mode=mode,
            code=code,
            cns=results,
            sn_tx_bytes=after["tx_bytes"] - before["tx_bytes"],
            sn_tx_packets=after["tx_packets"] - before["tx_packets"],
            wall=wall,
            drops=drops,
            link_bytes=sum(c["tx_bytes"] for c in delta.values()),
            link_delta=delta,
            sn_cpu=meter.seconds(self.sn_proc) if self.sn_proc is not None else None,
        )

    @staticmethod
    def _cancel(host: Host, proc: subprocess.Popen[Any]) -> None:
        """Stop a CLI: SIGINT first (it then cancels its daemon transfer)."""
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            pass
        host.kill(proc)

    def drops(self, host: Host) -> int:
        """Packets the loss rule dropped so far on the way into ``host``."""
        if not self.loss:
            return 0
        link = self.cn_links[self.hosts.index(host)]
        return link.loss_drops(host)

    def _cn_result(
        self,
        host: Host,
        root: Path,
        proc: subprocess.Popen[Any],
        wall: float,
        name: str,
        digest: str,
        start: float = 0.0,
    ) -> CNResult:
        done = None
        error = ""
        try:
            lines = (root / "events.jsonl").read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        groups: list[str] = []
        last = None
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            last = event
            if event.get("event") == "subscribed" and event.get("group"):
                groups.append(str(event["group"]))
        if last is not None and last.get("event") == "done":
            done = last
        elif last is not None and last.get("event") == "failed":
            error = str(last.get("error", "failed"))
        if done is None and not error:
            error = (root / "stderr.txt").read_text(errors="replace")[-1000:] or "no done event"
        if wall != wall and not error.startswith("timed out"):
            error = f"timed out; {error}"
        verified = False
        if done is not None:
            path = Path(done.get("path", root / "out" / name))
            verified = path.exists() and file_digest(path) == digest
            if not verified:
                error = "delivered file differs from the source"
        return CNResult(
            host.name, proc.returncode, done, verified, wall, error, start, groups=groups
        )
