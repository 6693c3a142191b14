"""The SN's cost: memory per unicast session and CPU per data packet, on loopback.

``python -m mcp2p.lab.bench_sn [--sizes 1G,4G] [--sessions 1,5,20] [--seconds 5]
[--rate 1G] [--json FILE]``

Real daemons: one SN (``twistd mcp2p``, started with
`mcp2p.commands.twistd_node`) shares one sparse file per size in a temp
directory. The subscribers are not CN daemons but a light client in this
process built on the project's own control channel (`ControlClient` over
mutual TLS, `Subscribe` in unicast mode with the whole file wanted): each
has its own node identity and a UDP socket that is never read (the kernel
drops what overflows it), so the SN does all the work of a real session
while the machine's two cores are not spent on CN daemons.

1. RSS: for each file size and number of sessions, a fresh SN; that many
   subscribers subscribe at 1 Mbit/s each; the SN's VmRSS (and its peak,
   VmHWM) from /proc after the last one is served, with the time the
   subscriptions took (a subscription that stalls the reactor shows here).
2. CPU per packet: one subscriber at ``--rate``; the SN's user+sys CPU
   (from /proc/PID/stat) over ``--seconds``, divided by the packets its
   sessions sent in that time (the API's session counters): µs per packet.
3. Where it goes: the same `Session` in this process on a real Twisted UDP
   port toward an unread socket, driven by a Clock, timed without a
   profiler (µs per packet) and then under cProfile, its time split by
   stage (scheduler, read, header, digest, notices, send, other).

Only 127.0.0.1 is used; every sending loop is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.lab.bench import parse_size, write_json
from mcp2p.lab.procstat import cpu_seconds, memory_kib

MBIT = 1_000_000


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    memory = memory_kib(pid)
    return memory["VmRSS"], memory["VmHWM"]


class SN:
    """One SN daemon on 127.0.0.1 sharing ``files`` (name -> size, sparse)."""

    def __init__(self, root: Path, files: dict[str, int], rate: str) -> None:
        from mcp2p.lab.daemons import ini_text, node_sections

        self.root = root
        share = root / "share"
        share.mkdir(parents=True)
        for name, size in files.items():
            with open(share / name, "wb") as f:
                f.truncate(size)
        serving = {}
        import mcp2p.config

        if "connections_per_address" in mcp2p.config.SCHEMA["serving"]:
            # Every subscriber here comes from 127.0.0.1: lift the per-address cap.
            serving["connections_per_address"] = "1000"
        sections = node_sections(
            "127.0.0.1",
            root,
            serving=serving
            | {
                "control_port": "0",
                "data_port": str(free_port(socket.SOCK_DGRAM)),
                "rate": rate,
                "max_rate": rate,
                "min_rate": "1M",
                "grace": "30",
            },
            discovery={"query_port": str(free_port(socket.SOCK_DGRAM))},
        )
        self.ini = root / "node.ini"
        self.ini.write_text(ini_text(sections))
        self.log_path = root / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.files = files

    def start(self) -> None:
        from mcp2p.api.client import ApiClient
        from mcp2p.commands import twistd_node

        port_file = self.root / "state" / "api.port"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                twistd_node(str(self.ini)),
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 120  # hashing a few GiB of zeros takes seconds
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("SN did not start:\n" + self.log_path.read_text()[-3000:])
            if port_file.exists():
                self.api = ApiClient(self.root / "state", port=int(port_file.read_text()))
                try:
                    files = self.api.call("GET", "/api/catalog")["files"]
                except Exception:  # noqa: BLE001 - not answering yet
                    files = []
                if len(files) == len(self.files):
                    break
            time.sleep(0.1)
        self.catalog = {f["name"]: f for f in files}
        self.node_id = bytes.fromhex(self.api.call("GET", "/api/status")["node_id"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def packets(self) -> int:
        return int(self.api.call("GET", "/api/overview")["counters"]["sessions"].get("packets", 0))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def client_main(spec: dict[str, Any]) -> None:
    """The subscribers (a child process of the bench): subscribe, report when
    every subscription is granted (a line on stdout), hold, close."""
    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import HostnameEndpoint
    from twisted.internet.protocol import DatagramProtocol, Factory

    from mcp2p.core.wanted import RangeSet
    from mcp2p.transfer.control import ControlClient, Subscribe, UpdateWanted
    from mcp2p.transfer.fetch import wanted_chunks
    from mcp2p.trust.keys import load_or_create
    from mcp2p.trust.tls import VerifiedClientEndpoint

    class Discard:
        def listed(self, first: int, count: int, digest: bytes) -> None:
            pass

        def drained(self, seq: int) -> None:
            pass

        def session_ended(self, reason: str) -> None:
            pass

        def session_moved(self, group: str) -> None:
            pass

    class Unread(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
            pass

    async def one(i: int) -> Any:
        identity = load_or_create(Path(spec["root"]) / f"cn{i}")
        endpoint = VerifiedClientEndpoint(
            reactor,
            HostnameEndpoint(reactor, "127.0.0.1", spec["port"], timeout=30),
            identity,
            bytes.fromhex(spec["node_id"]),
        )
        client = await endpoint.connect(Factory.forProtocol(ControlClient))
        # The datagrams are never read: stop reading so the kernel drops them.
        port = reactor.listenUDP(0, Unread(), interface="127.0.0.1")  # type: ignore[attr-defined]
        port.stopReading()
        port.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return client, port

    async def main() -> None:
        t0 = time.monotonic()
        pairs = [await one(i) for i in range(spec["count"])]
        for client, port in pairs:
            # The whole file: units = blocks for the plain code; the SN clips
            # nothing, so ask for [0, units) computed from the catalog entry.
            chunks = wanted_chunks(RangeSet.full(spec["units"]), replace=False)
            more = len(chunks) > 1
            reply = await client.callRemote(
                Subscribe,
                content_id=bytes.fromhex(spec["content_id"]),
                mode="unicast",
                port=port.getHost().port,
                rate=spec["rate"],
                code="plain",
                wanted=b"" if more else chunks[0],
                more=more,
            )
            client.handlers[reply["subscription"]] = Discard()
            for chunk in chunks if more else []:
                await client.callRemote(
                    UpdateWanted, subscription=reply["subscription"], wanted=chunk, replace=False
                )
        took = time.monotonic() - t0
        sys.stdout.write(json.dumps({"granted": True}) + "\n")
        sys.stdout.flush()
        await task.deferLater(reactor, spec["hold"], lambda: None)
        for client, port in pairs:
            client.transport.loseConnection()
            port.stopListening()
        sys.stdout.write(json.dumps({"subscribe_seconds": took}) + "\n")

    task.react(lambda _r: defer.ensureDeferred(main()))


def run_clients(sn: SN, name: str, count: int, rate: int, hold: float, root: Path) -> Any:
    """Start the subscribers (a child process); returns it once all are granted."""
    entry = sn.catalog[name]
    from mcp2p.wire.layout import Layout

    units = Layout(entry["size"], entry["piece_length"], entry["block_length"]).blocks
    spec = {
        "port": entry["control_port"],
        "content_id": entry["content_id"],
        "node_id": sn.node_id.hex(),
        "count": count,
        "rate": rate,
        "hold": hold,
        "units": units,
        "root": str(root),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp2p.lab.bench_sn", "--client", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        raise RuntimeError("subscribers failed:\n" + (proc.stderr.read() if proc.stderr else ""))
    return proc


def finish_clients(proc: Any) -> float:
    out, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError("subscribers failed:\n" + err[-3000:])
    return float(json.loads(out.strip().splitlines()[-1])["subscribe_seconds"])


def measure_rss(sizes: list[int], sessions: list[int], tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for count in sessions:
            root = tmp / f"rss-{size}-{count}"
            sn = SN(root, {"big.bin": size}, "1G")
            sn.start()
            try:
                base, _ = rss_kib(sn.pid)
                t0 = time.monotonic()
                proc = run_clients(sn, "big.bin", count, 1 * MBIT, 2.0, root)
                granted = time.monotonic() - t0
                time.sleep(1.0)
                rss, hwm = rss_kib(sn.pid)
                finish_clients(proc)
            finally:
                sn.stop()
            row = {
                "size": size,
                "sessions": count,
                "idle_rss_mb": base / 1024,
                "rss_mb": rss / 1024,
                "peak_mb": hwm / 1024,
                "per_session_mb": (rss - base) / 1024 / count,
                "subscribe_s": granted,
            }
            rows.append(row)
            print(
                f"  {size / (1 << 30):5.2f} GiB x {count:3d} sessions: RSS {row['rss_mb']:7.1f} MB"
                f" (idle {row['idle_rss_mb']:.1f}, peak {row['peak_mb']:.1f},"
                f" {row['per_session_mb']:.2f} MB/session), subscribed in {granted:.1f} s",
                flush=True,
            )
    return rows


def measure_cpu(size: int, rate: str, seconds: float, tmp: Path) -> dict[str, Any]:
    root = tmp / "cpu"
    sn = SN(root, {"big.bin": size}, rate)
    sn.start()
    try:
        proc = run_clients(sn, "big.bin", 1, 0, seconds + 4, root)
        time.sleep(1.0)  # past the first bursts
        cpu0, p0 = cpu_seconds(sn.pid), sn.packets()
        time.sleep(seconds)
        cpu1, p1 = cpu_seconds(sn.pid), sn.packets()
        finish_clients(proc)
    finally:
        sn.stop()
    packets = p1 - p0
    us = 1e6 * (cpu1 - cpu0) / max(packets, 1)
    row = {"cpu_s": cpu1 - cpu0, "packets": packets, "us_per_packet": us, "rate": rate}
    print(
        f"  daemon: {packets} packets in {seconds:.0f} s ({packets / seconds:,.0f}/s),"
        f" {cpu1 - cpu0:.2f} s CPU: {us:.2f} µs per packet",
        flush=True,
    )
    return row


STAGES = (
    ("scheduler", ("mcp2p/core/scheduler.py", "mcp2p/core/wanted.py")),
    ("read", ("blockcode.py", "layout.py", "pread", "_plain_symbols", "_symbols", "readinto")),
    ("header", ("pack_header", "pack_into", "'pack'")),
    ("digest", ("blake3", "packet_digest", "digests")),
    (
        "notices",
        ("control.py", "send_lists", "_notify", "list_hash", "pack_list", "'join'", "amp.py"),
    ),
    ("send", ("udp.py", "sendto", "sendmsg", "_send")),
)


def stage_of(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for stage, marks in STAGES:
        if any(m in text for m in marks):
            return stage
    return "other"


def measure_stages(size: int, tmp: Path, packets: int = 200_000) -> dict[str, Any]:
    """The session in this process, on a real UDP port toward an unread socket."""
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol
    from twisted.internet.task import Clock

    from mcp2p.core.wanted import RangeSet
    from mcp2p.plugins import code_by_name
    from mcp2p.transfer.control import MAX_LISTS_PER_NOTICE, Listed, listed_arguments
    from mcp2p.transfer.session import TICK, Session, Subscriber
    from mcp2p.wire.layout import Layout

    path = tmp / "stages.bin"
    with open(path, "wb") as f:
        f.truncate(size)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]

    class Client:
        def send_lists(self, subscription: int, lists: list[tuple[int, int, bytes]]) -> None:
            # What a control channel does before TLS: the command's box, serialized.
            Listed.makeArguments(listed_arguments(subscription, lists), None).serialize()

        def session_ended(self, subscription: int, reason: str) -> None:
            pass

    clock = Clock()
    layout = Layout(size, 1 << 20, 1400)
    session = Session(
        clock,
        session_id=0x5EED,
        layout=layout,
        code=code_by_name("plain"),
        path=str(path),
        destination=sink.getsockname(),
        port=port,
        rate=100_000 * MBIT,  # every tick a full burst
        min_rate=MBIT,
        max_rate=100_000 * MBIT,
        grace=5.0,
        on_end=lambda s: None,
        rng=random.Random(1),
    )
    sub = Subscriber(1, Client(), session, lists=MAX_LISTS_PER_NOTICE)  # as a CN subscribes
    session.add(sub, RangeSet.full(session.units))
    ticks = packets // session.burst_cap()  # a tick's packets at most

    def drive(n: int) -> int:
        before = session.counters["packets"] + session.counters["would_block"]
        for _ in range(n):
            clock.advance(TICK)
        return session.counters["packets"] + session.counters["would_block"] - before

    drive(20)
    t0 = time.process_time()
    sent = drive(ticks)
    plain_us = 1e6 * (time.process_time() - t0) / max(sent, 1)
    profile = cProfile.Profile()
    profile.enable()
    sent_p = drive(ticks // 2)
    profile.disable()
    stats = pstats.Stats(profile)
    split: dict[str, float] = {}
    for key, value in stats.stats.items():  # type: ignore[attr-defined]
        split[stage_of(key)] = split.get(stage_of(key), 0.0) + value[2]  # tottime
    total = sum(split.values())
    session.end("bench over")
    port.stopListening()
    sink.close()
    print(
        f"  in process: {plain_us:.2f} µs per packet ({sent} packets; would_block"
        f" {session.counters['would_block']}); under cProfile, by stage:",
        flush=True,
    )
    for stage in (*(s for s, _ in STAGES), "other"):
        share = split.get(stage, 0.0) / total if total else 0.0
        print(f"    {stage:9s} {100 * share:5.1f}%  ~{share * plain_us:5.2f} µs", flush=True)
    return {
        "us_per_packet": plain_us,
        "packets": sent,
        "profiled_packets": sent_p,
        "split": {k: v / total for k, v in split.items()} if total else {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcp2p.lab.bench_sn", description=__doc__)
    parser.add_argument("--sizes", default="1G,4G", help="file sizes for the RSS table")
    parser.add_argument("--sessions", default="1,5,20", help="unicast sessions per SN")
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU measuring window")
    parser.add_argument("--rate", default="1G", help="the CPU run's session rate")
    parser.add_argument("--cpu-size", default="4G", help="file size of the CPU runs")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: rss,cpu,stages")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client_main(json.loads(args.client))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mcp2p-bench-sn-") as tmp:
        if "rss" not in skip:
            print("RSS of an SN against file size and unicast sessions (1 Mbit/s each):")
            sizes = [parse_size(x) for x in args.sizes.split(",")]
            counts = [int(x) for x in args.sessions.split(",")]
            out["rss"] = measure_rss(sizes, counts, Path(tmp))
        if "cpu" not in skip:
            print(f"SN CPU per data packet, one unicast subscriber at {args.rate}:")
            out["cpu"] = measure_cpu(parse_size(args.cpu_size), args.rate, args.seconds, Path(tmp))
        if "stages" not in skip:
            print("SN send path by stage (Session on a real UDP port, Clock-driven):")
            out["stages"] = measure_stages(parse_size(args.cpu_size), Path(tmp))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
