"""Other ways to copy one file to N CNs, in the same star as `StarLab`.

    lab = StarLab(net, root, cns=8, rate=100_000_000)
    lab.share(8 << 20)
    result = run_peer(lab, "udpcast", 4, timeout=60)   # a FetchResult
    result.slowest, result.sn_ratio, result.link_bytes

Three peers, each one sender in the SN's namespace and one receiver per CN:

- ``udpcast``: ``udp-sender`` / ``udp-receiver`` (Debian udpcast),
  multicast data on the lab's switch, sender paced by ``--max-bitrate``
  (``rate``, 95 Mbit/s by default); a receiver that lost its connect reply
  is dropped after 30 unanswered REQACKs (``--retries-until-drop``);
  with one receiver udpcast itself switches to point-to-point (unicast).
- ``uftp``: the ``uftp`` server and one ``uftpd`` client per CN (Debian
  uftp 4.10), unencrypted (``-Y none``), closed group (``-H`` the CNs'
  ids, so it starts as soon as they all registered), fixed rate ``-R``
  (Kbit/s), no congestion control; clients in the foreground (``-d``).
- ``tcp``: plain TCP unicast copies: a small Python server (one thread per
  connection, ``os.sendfile``) serving the file to N concurrent
  receivers that write it to disk.

The receivers (udpcast, TCP) or the uftp server wait for one start signal,
as `StarLab.fetch` does; a CN's completion time runs from that signal to
its receiver's exit (udpcast, TCP) or to the moment its file appears under
its final name (uftp clients write to a temp name and rename when the file
is complete). Each run records the SN's veth counters and every link end's
counters before the signal and after the sender exited, and checks every
delivered file against the source's digest. The result is a `FetchResult`
(``mode`` is the tool's name), so the same code reports mcp2p and its peers.
A tool that fails or runs past ``timeout`` gives failed CNs with the tail of
their stderr (and the sender's, in ``error``), never an exception; a
missing executable raises `LabError` before anything starts.

Multicast stays on the lab's veths: every tool is bound to the host's lab
interface and uses groups in 239.77.0.0/16 (administratively scoped), or
on a family-6 star (``StarLab(family=6)``) ff15::4d:0/112 (site scope).
Over IPv6 uftp and TCP run the same way on the hosts' IPv6 addresses;
udpcast cannot (udp-sender and udp-receiver speak IPv4 only), and
`unsupported` says so.

The CPU each process used over the run (user+sys, `mcp2p.lab.procstat`:
``/proc/PID/stat`` at the start signal, and ``wait4``'s rusage for a
process that exits or ``/proc`` again for one still running at the end)
is in the result: the sender's as ``sn_cpu``, each receiver's (``uftpd``
client, ``udp-receiver``, TCP receiver) as its CN's ``cpu``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp2p.lab.net import Host, LabError, counter_delta
from mcp2p.lab.procstat import CpuMeter
from mcp2p.lab.progs import command
from mcp2p.lab.transfer import FILE_NAME, CNResult, FetchResult, StarLab, file_digest

__all__ = [
    "PEERS",
    "TCP_PORT",
    "SEND_RATE",
    "missing_tools",
    "run_peer",
    "run_tcp",
    "run_udpcast",
    "run_uftp",
    "unsupported",
]

PEERS = ("udpcast", "uftp", "tcp")
TOOLS = {"udpcast": ("udp-sender", "udp-receiver"), "uftp": ("uftp", "uftpd"), "tcp": ()}
SEND_RATE = 95_000_000  # bit/s: udp-sender --max-bitrate, uftp -R (Kbit/s)
# uftp's "Kbps" are of 1024 bits: told -R 95000, it sent 100 MiB to one CN on a
# 1 Gbit/s link in 9.0 s, 97.9 Mbit/s on the wire on average, where udpcast
# told 95m and mcp2p told 95M took 93.6-93.8 (the lab, 2026-11-26). So the
# same bit/s for every tool is -R rate / 1024.
UFTP_KBIT = 1024
TCP_PORT = 7700
UDPCAST_PORTBASE = 9700
UFTP_PORT = 1044
RDV_GROUP = "239.77.0.1"  # udpcast rendez-vous
UDPCAST_GROUP = "239.77.0.2"  # udpcast data
UFTP_PUBLIC = "239.77.1.1"  # uftp announcements
UFTP_PRIVATE = "239.77.1.2"  # uftp data
UFTP_PUBLIC6 = "ff15::4d:1"  # the same on a family-6 star
UFTP_PRIVATE6 = "ff15::4d:2"
NO_IPV6 = {"udpcast": "udpcast has no IPv6 (udp-sender and udp-receiver speak IPv4 only)"}
READY_TIMEOUT = 30.0
SENDER_GRACE = 5.0  # seconds a sender may take to exit after the last CN is done
TAIL = 1500  # characters of stderr kept in the JSON


def missing_tools(tool: str) -> str | None:
    """Why ``tool`` cannot run here, or None."""
    if tool not in TOOLS:
        return f"unknown peer {tool!r}; known: {', '.join(PEERS)}"
    gone = [t for t in TOOLS[tool] if shutil.which(t) is None]
    return f"{', '.join(gone)} not installed" if gone else None


def unsupported(tool: str, family: int) -> str | None:
    """Why ``tool`` cannot run on a star of this IP family, or None."""
    return NO_IPV6.get(tool) if family == 6 else None


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-TAIL:].strip()
    except OSError:
        return ""


@dataclass
class _Proc:
    host: Host
    proc: subprocess.Popen[Any]
    log: Path
    out: Any
    done_at: float | None = None


@dataclass
class _Plan:
    """What one peer run starts: ``before`` (up and waiting before the start
    signal: a server, uftpd clients), ``at_go`` (exec'd at the signal:
    receivers, or the uftp server), and how to tell a CN is done."""

    sender: list[str]
    sender_at_go: bool
    receivers: list[list[str]]  # per CN
    receivers_at_go: bool
    out_files: list[Path]  # per CN: where its copy lands
    done_by_exit: bool  # CN done = its receiver exited (else: its file appeared)
    ready: Callable[[], bool] = lambda: True  # the before-processes are ready
    settle: float = 0.0  # seconds to let the before-processes settle
    notes: dict[str, Any] = field(default_factory=dict)


def _start(host: Host, cmd: list[str], log: Path, at_go: Path | None, ready: Path) -> _Proc:
    out = open(log, "wb")  # noqa: SIM115 - closed by _run
    if at_go is not None:
        cmd = command("at_go", str(at_go), str(ready), str(READY_TIMEOUT + 60), *cmd)
    proc = host.popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _Proc(host, proc, log, out)


def _run(
    lab: StarLab, tool: str, n: int, name: str, timeout: float, rate: int, plan_fn: Any
) -> FetchResult:
    reason = missing_tools(tool) or unsupported(tool, lab.family)
    if reason:
        raise LabError(f"{tool}: {reason}")
    if name not in lab.files:
        raise LabError(f"{name!r} is not shared; share() it first")
    if not 1 <= n <= len(lab.hosts):
        raise LabError(f"n must be 1..{len(lab.hosts)}")
    size, digest = lab.files[name]
    source = lab.sn_dir / "share" / name
    run_dir = lab.run_dir(tool)
    go = run_dir / "go"
    hosts = lab.hosts[:n]
    plan: _Plan = plan_fn(lab, hosts, source, run_dir, rate)
    sender: _Proc | None = None
    receivers: list[_Proc] = []
    started = time.monotonic()
    error = ""
    done: dict[str, float] = {}
    before_sn: dict[str, int] = {}
    after_sn: dict[str, int] = {}
    links_before: dict[str, dict[str, int]] = {}
    links_after: dict[str, dict[str, int]] = {}
    sn_if = lab.sn.ifname(lab.switch)
    drops_before = {h.name: lab.drops(h) for h in hosts}
    meter = CpuMeter()
    try:
        readies: list[Path] = []
        if not plan.sender_at_go:
            sender = _start(lab.sn, plan.sender, run_dir / "sender.log", None, run_dir / "x")
        for i, (host, cmd) in enumerate(zip(hosts, plan.receivers, strict=True)):
            ready = run_dir / f"ready{i}"
            at_go = go if plan.receivers_at_go else None
            if at_go is not None:
                readies.append(ready)
            receivers.append(_start(host, cmd, run_dir / f"{host.name}.log", at_go, ready))
        if plan.sender_at_go:
            readies.append(run_dir / "ready-sender")
            sender = _start(lab.sn, plan.sender, run_dir / "sender.log", go, readies[-1])
        assert sender is not None
        for p in (sender, *receivers):
            meter.add(p.proc)
        deadline = time.monotonic() + READY_TIMEOUT
        while not (all(r.exists() for r in readies) and plan.ready()):
            dead = [p for p in (sender, *receivers) if meter.poll(p.proc) is not None]
            if dead or time.monotonic() > deadline:
                raise _Failed(
                    "not ready: "
                    + "; ".join(f"{p.host.name}: {_tail(p.log)[-300:]}" for p in dead or [sender])
                )
            time.sleep(0.02)
        time.sleep(plan.settle)
        links_before = lab.net.link_counters()
        before_sn = lab.sn.counters(sn_if)
        meter.start()
        started = time.monotonic()
        go.touch()
        deadline = started + timeout
        sender_exit: float | None = None
        while len(done) < n and time.monotonic() < deadline:
            now = time.monotonic()
            for host, rec, out in zip(hosts, receivers, plan.out_files, strict=True):
                if host.name in done:
                    continue
                exited = meter.poll(rec.proc) is not None  # one look: see _receiver_done
                state = _receiver_done(plan.done_by_exit, exited, out.exists())
                if state is not None:
                    done[host.name] = now - started if state else float("nan")
            if meter.poll(sender.proc) is not None:
                # A sender that exited leaves its receivers a moment to finish.
                sender_exit = sender_exit or now
                if now - sender_exit > 2.0:
                    break
            time.sleep(0.005)
        end = time.monotonic() + SENDER_GRACE
        while meter.poll(sender.proc) is None and time.monotonic() < end and len(done) == n:
            time.sleep(0.01)
        wall = time.monotonic() - started
        meter.stop()
        after_sn = lab.sn.counters(sn_if)
        links_after = lab.net.link_counters()
        if meter.poll(sender.proc) not in (None, 0):
            error = f"sender exited {sender.proc.returncode}: {_tail(sender.log)}"
        elif len(done) < n or any(t != t for t in done.values()):
            error = f"not all CNs done after {wall:.0f} s; sender: {_tail(sender.log)[-500:]}"
    except _Failed as e:
        error = str(e)
        wall = time.monotonic() - started
    finally:
        for p in (*receivers, *([sender] if sender else [])):
            if meter.poll(p.proc) is None:
                p.host.kill(p.proc)
            p.out.close()
    drops = {h.name: lab.drops(h) - drops_before[h.name] for h in hosts}
    results = []
    for host, rec, out in zip(hosts, receivers, plan.out_files, strict=True):
        t = done.get(host.name, float("nan"))
        verified = out.exists() and out.stat().st_size == size and file_digest(out) == digest
        cn_error = ""
        if t != t:
            cn_error = "timed out or failed: " + _tail(rec.log)[-TAIL:]
        elif not verified and rec.proc.returncode not in (0, None):
            cn_error = f"receiver exited {rec.proc.returncode}: " + _tail(rec.log)[-TAIL:]
        elif not verified:
            cn_error = "delivered file differs from the source: " + _tail(rec.log)[-500:]
        event = {"event": "done", "elapsed": t, "path": str(out), "bytes": size} if t == t else None
        results.append(
            CNResult(
                host.name,
                rec.proc.returncode,
                event,
                verified,
                t,
                cn_error,
                cpu=meter.seconds(rec.proc),
            )
        )
        out.unlink(missing_ok=True)
    delta = counter_delta(links_before, links_after) if links_after else {}
    return FetchResult(
        size=size,
        mode=tool,
        code="",
        cns=results,
        sn_tx_bytes=after_sn.get("tx_bytes", 0) - before_sn.get("tx_bytes", 0),
        sn_tx_packets=after_sn.get("tx_packets", 0) - before_sn.get("tx_packets", 0),
        wall=wall,
        drops=drops,
        link_bytes=sum(c["tx_bytes"] for c in delta.values()),
        link_delta=delta,
        error=error,
        sn_cpu=meter.seconds(sender.proc) if sender is not None else None,
    )


def _receiver_done(done_by_exit: bool, exited: bool, have_file: bool) -> bool | None:
    """A receiver is done (True), failed (False) or still at work (None),
    from one look at its process (``exited``), taken before the one at its
    file. Two looks at the process let one that exited between them, its
    copy whole, count as failed: a TCP receiver did, and CI saw "not all CNs
    done after 0 s" for a run whose every copy verified."""
    if done_by_exit:
        return True if exited else None
    if have_file:
        return True  # its file is there, whether or not it exited since
    return False if exited else None  # a uftpd that died without its file


class _Failed(Exception):
    pass


# -- the three tools


def _udpcast_plan(lab: StarLab, hosts: list[Host], source: Path, run_dir: Path, rate: int) -> _Plan:
    n = len(hosts)
    sn_if = lab.sn.ifname(lab.switch)
    common = [
        "--portbase",
        str(UDPCAST_PORTBASE),
        "--mcast-rdv-address",
        RDV_GROUP,
        "--nokbd",
    ]
    sender = [
        "udp-sender",
        "--file",
        str(source),
        "--interface",
        sn_if,
        "--mcast-data-address",
        UDPCAST_GROUP,
        "--max-bitrate",
        f"{max(1, rate // 1000)}k",
        "--full-duplex",
        "--rexmit-hello-interval",  # wakes its loop: starts ~20 ms after the
        "20",  # last receiver connected instead of ~2 s
        "--retries-until-drop",  # a receiver that lost its connect reply is
        "30",  # dropped after 30 unanswered REQACKs, not waited for for ever
        "--min-receivers",
        str(n),
        "--start-timeout",
        str(int(READY_TIMEOUT + 60)),
        *common,
    ]
    outs, receivers = [], []
    for host in hosts:
        out = run_dir / host.name / FILE_NAME
        out.parent.mkdir()
        outs.append(out)
        receivers.append(
            [
                "udp-receiver",
                "--file",
                str(out),
                "--interface",
                host.ifname(lab.switch),
                "--start-timeout",
                "30",
                "--receive-timeout",
                "30",
                "--exit-wait",
                "100",
                *common,
            ]
        )
    return _Plan(sender, False, receivers, True, outs, done_by_exit=True)


def _uftp_plan(lab: StarLab, hosts: list[Host], source: Path, run_dir: Path, rate: int) -> _Plan:
    ids = [f"0x{0x77000001 + i:08x}" for i in range(len(hosts))]
    public, private = UFTP_PUBLIC, UFTP_PRIVATE
    if lab.family == 6:
        public, private = UFTP_PUBLIC6, UFTP_PRIVATE6

    def iface(host: Host) -> str:
        # By name uftp takes the interface's IPv4 address: give the IPv6 one.
        return lab.addr(host) if lab.family == 6 else host.ifname(lab.switch)

    outs, receivers = [], []
    for host, uid in zip(hosts, ids, strict=True):
        dest = run_dir / host.name
        dest.mkdir()
        outs.append(dest / FILE_NAME)
        receivers.append(
            [
                "uftpd",
                "-d",  # foreground, log to stderr
                "-x",
                "1",
                "-q",
                "-t",  # receive into a temp name, rename when complete
                "-D",
                str(dest),
                "-U",
                uid,
                "-I",
                iface(host),
                "-M",
                public,
                "-p",
                str(UFTP_PORT),
                "-B",
                str(8 << 20),
            ]
        )
    sender = [
        "uftp",
        "-Y",
        "none",
        "-R",
        str(max(1, rate // UFTP_KBIT)),
        "-I",
        iface(lab.sn),
        "-M",
        public,
        "-P",
        private,
        "-p",
        str(UFTP_PORT),
        "-H",
        ",".join(ids),
        "-B",
        str(8 << 20),
        "-x",
        "1",
        "-D",
        FILE_NAME,
        str(source),
    ]
    # uftpd has no ready signal: give the clients a moment to join the group.
    return _Plan(sender, True, receivers, False, outs, done_by_exit=False, settle=0.3)


def _tcp_plan(lab: StarLab, hosts: list[Host], source: Path, run_dir: Path, rate: int) -> _Plan:
    addr = lab.addr(lab.sn)
    ready = run_dir / "tcp-ready"
    sender = command(
        "tcp_sender",
        str(source),
        addr,
        str(TCP_PORT),
        str(len(hosts)),
        str(READY_TIMEOUT + 600),
        str(ready),
    )
    outs, receivers = [], []
    for host in hosts:
        out = run_dir / host.name / FILE_NAME
        out.parent.mkdir()
        outs.append(out)
        receivers.append(command("tcp_receiver", addr, str(TCP_PORT), str(out), "600"))
    return _Plan(sender, False, receivers, True, outs, done_by_exit=True, ready=ready.exists)


_PLANS = {"udpcast": _udpcast_plan, "uftp": _uftp_plan, "tcp": _tcp_plan}


def run_peer(
    lab: StarLab,
    tool: str,
    n: int,
    *,
    name: str = FILE_NAME,
    timeout: float = 120,
    rate: int = SEND_RATE,
) -> FetchResult:
    """``tool`` (one of PEERS) copies the shared file ``name`` from the SN to
    the first ``n`` CNs of ``lab``; see the module docstring. ``rate`` (bit/s)
    paces the multicast senders (udpcast's ``--max-bitrate``, uftp's ``-R``);
    TCP is paced by TCP alone."""
    if tool not in _PLANS:
        raise LabError(f"unknown peer {tool!r}; known: {', '.join(PEERS)}")
    if rate < 1000:
        raise LabError("rate is in bit/s, at least 1000")
    return _run(lab, tool, n, name, timeout, rate, _PLANS[tool])


def run_udpcast(lab: StarLab, n: int, **kw: Any) -> FetchResult:
    return run_peer(lab, "udpcast", n, **kw)


def run_uftp(lab: StarLab, n: int, **kw: Any) -> FetchResult:
    return run_peer(lab, "uftp", n, **kw)


def run_tcp(lab: StarLab, n: int, **kw: Any) -> FetchResult:
    return run_peer(lab, "tcp", n, **kw)
