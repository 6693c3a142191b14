"""CPU per data packet: an mcp2p SN and CN beside UFTP's and udpcast's receivers.

``python -m mcp2p.lab.bench_cpu [--size 200M] [--rate 400M] [--tools
mcp2p,uftp,udpcast] [--mode multicast] [--quick] [--json FILE]`` (root), or
``... --stages-only [--stage-pieces 32]`` (any user)

Two parts, printed as one table and written as JSON:

1. **Real daemons and tools, side by side**: the lab's star with one CN
   (`mcp2p.lab.transfer.StarLab`: two namespaces on a bridge, veths
   unshaped), the same file sent by each tool in turn: an mcp2p SN to an
   mcp2p CN (``twistd -n mcp2p`` each, the CN fetching through ``mcp2p
   get``), then ``uftp`` -> ``uftpd`` and ``udp-sender`` ->
   ``udp-receiver`` with the lab's own command lines (`mcp2p.lab.peers`),
   all three with 1400-byte blocks and paced to ``--rate`` (default 400
   Mbit/s, which every receiver keeps up with here, so the figure is work
   per packet, not work on a loss storm). Every receiver's copy is kept
   till the end, so each is written into memory that has been free for a
   while: on a virtual machine whose balloon reports free pages to the
   host, memory freed seconds ago is still backed and a page-cache write
   into it costs a tenth of one into memory free for longer (0.2 against 2
   ms of CPU per MiB on the machine where this was found), and deleting
   one tool's copy before the next tool ran favoured the next. For each
   receiver (and the mcp2p SN): the CPU it used (user+sys,
   ``/proc/PID/stat``, or ``wait4`` for a receiver that exits) from the
   start to the file's arrival, divided by the data packets: mcp2p's from
   its receivers' counters, the peers' as file size / block size. mcp2p's
   figure includes its per-file work too (search, manifest, TLS, notices,
   final hash of the file). Also each process's peak RSS (VmHWM), and for
   mcp2p the packets per receive call and the share of packets that came
   before their digest list was trusted (held: each costs a copy and a
   second look).

2. **Stages in process**: the CN's receive path taken apart on synthetic
   packets of the same shape (1400-byte blocks, 1 MiB pieces), each stage
   timed alone with ``time.process_time``, µs of CPU per packet:
   ``recv_per_datagram`` (one ``recvfrom`` each, on a 127.0.0.1 socket),
   ``recv_batch`` (the CN's `BatchReader`, datagrams sent one by one) and
   ``recv_batch_gso_gro`` (sent as the SN does, GSO bursts, received whole
   with UDP_GRO), ``rtp_decode`` (the full decoder; the receiver uses one
   struct unpack), ``digest`` (the SHA-256 packet digest every packet
   needs), ``take_lists`` (the notices of trusted digest lists of 175
   packets each, per packet: `Receiver._take_list`),
   ``receiver_no_delivery`` (``Receiver.datagrams``: header, notice
   match, digest), ``store_write_block`` (copy into the piece
   buffer, hash and one write per piece), ``piece_hash`` (the hash alone)
   and ``receiver_to_store`` (both together, batch read not included;
   ``..._packets_first``: each packet before its notice, held and copied).
   Then what comes after the receiver, in batches of 64 views:
   ``store_write_blocks`` (the store's batch path), ``fetch_plain``
   (``Fetch._deliver_many`` with the plain code: store and bookkeeping),
   ``raptorq_add_many_{0,1}pct`` (the RaptorQ decoder alone, per symbol, on
   each piece's source symbols with 0% or 1% dropped at random, then the
   repair symbols the SN sends for them: lost + ``repair_overhead``) and
   ``fetch_raptorq_{0,1}pct`` (the same through ``Fetch._deliver_many``:
   decoder, piece hash and write); ``..._batch4``: in batches of 4 (what
   a batch costs beside its packets).

``--stages-only`` runs part 2 alone: no root, no namespaces, nothing sent
beyond 127.0.0.1.

Traffic stays inside the lab's namespaces (the stage split's sockets on
127.0.0.1); every process is started here and killed by pid; every
sender is bounded by the file and a timeout.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp2p.lab.bench import parse_size, write_json
from mcp2p.lab.procstat import PerfCounts, cpu_seconds, peak_rss
from mcp2p.lab.transfer import file_digest

BLOCK = 1400  # payload bytes per data packet, for every tool
PIECE = 1 << 20
TIMEOUT = 300.0  # seconds a single transfer may take


@dataclass
class Row:
    tool: str
    role: str
    packets: int
    cpu: float  # seconds
    elapsed: float
    rss: int = 0
    ok: bool = True
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # perf's, over the same span

    @property
    def us_per_packet(self) -> float:
        return self.cpu / self.packets * 1e6 if self.packets else float("nan")

    def per_packet(self, event: str) -> float | None:
        """Thousands of ``event`` (perf's instructions or cycles) per packet."""
        value = self.counts.get(event)
        return value / self.packets / 1e3 if value and self.packets else None

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "role": self.role,
            "packets": self.packets,
            "cpu_s": round(self.cpu, 3),
            "us_per_packet": round(self.us_per_packet, 2),
            "elapsed_s": round(self.elapsed, 3),
            "peak_rss_mb": round(self.rss / 1e6, 1),
            "ok": self.ok,
            "note": self.note,
            "k_instructions_per_packet": _round(self.per_packet("instructions")),
            "k_cycles_per_packet": _round(self.per_packet("cycles")),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- mcp2p ----------------------------------------------------------------


def run_mcp2p(lab: Any, rate: int, mode: str, code: str = "auto") -> list[Row]:
    """One fetch by the CN daemon from the SN daemon; CPU of both over it."""
    if lab.sn_proc is None:
        lab.start_sn(rate=str(rate), max_rate=str(max(rate, 10**9)))
    [cn] = lab.start_cns()
    assert lab.sn_proc is not None and cn.proc is not None
    sn_pid, cn_pid = lab.sn_proc.pid, cn.proc.pid
    sn_perf, cn_perf = PerfCounts.attach(sn_pid), PerfCounts.attach(cn_pid)
    sn0, cn0 = cpu_seconds(sn_pid), cpu_seconds(cn_pid)
    # The CN asks for the peers' rate: its session finds the path's rate by
    # itself otherwise, and the comparison is per packet at one rate.
    # Kept (see the module docstring): the peers' copies are kept too.
    result = lab.fetch(1, mode=mode, code=code, timeout=TIMEOUT, rate=str(rate), keep=True)
    [got] = result.cns
    try:
        sn_cpu, cn_cpu = cpu_seconds(sn_pid) - sn0, cpu_seconds(cn_pid) - cn0
    except OSError:  # a daemon died (the lab restarts a failed CN's)
        log = cn.log()[-1500:] + "\nSN: " + lab.sn_log()[-1500:]
        return [Row("mcp2p", "CN", 0, 0.0, got.wall, ok=False, note=f"{got.error} {log}")]
    received = sum(int(r.get("packets", 0)) for r in got.receivers)
    accepted = sum(int(r.get("accepted", 0)) for r in got.receivers)
    # The SN sent what the CN took in, plus what the path lost (none unshaped).
    lost = sum(int(r.get("lost", 0)) for r in got.receivers)
    note = "" if got.ok else (got.error or "failed")[:300]
    reads = sum(int(r.get("reads", 0)) for r in got.receivers)
    held = sum(int(r.get("held", 0)) for r in got.receivers)
    extra = (
        f"{received / max(1, reads):.1f} packets per receive call, "
        f"{100 * held / max(1, received):.0f}% held for their list"
        if accepted
        else ""
    )
    sn_counts = sn_perf.stop() if sn_perf else {}
    cn_counts = cn_perf.stop() if cn_perf else {}
    return [
        Row(
            "mcp2p",
            "SN",
            received + lost,
            sn_cpu,
            got.wall,
            peak_rss(sn_pid),
            got.ok,
            note,
            sn_counts,
        ),
        Row(
            "mcp2p",
            "CN",
            received,
            cn_cpu,
            got.wall,
            peak_rss(cn_pid),
            got.ok,
            note or extra,
            cn_counts,
        ),
    ]


# -- the peers ------------------------------------------------------------


def run_peer(lab: Any, tool: str, rate: int) -> list[Row]:
    """The peer's own commands (`mcp2p.lab.peers`), 1400-byte blocks, one CN;
    the receiver's CPU from its start to the file's arrival (or its exit)."""
    from mcp2p.lab import peers
    from mcp2p.lab.transfer import FILE_NAME

    host = lab.hosts[0]
    source = lab.sn_dir / "share" / FILE_NAME
    run_dir = lab.run_dir(tool + "-cpu")
    plan = peers._PLANS[tool](lab, [host], source, run_dir, rate)
    sender_cmd = list(plan.sender)
    sender_cmd[1:1] = ["-b", str(BLOCK)] if tool == "uftp" else ["--blocksize", str(BLOCK)]
    [receiver_cmd] = plan.receivers
    [out] = plan.out_files
    procs: list[subprocess.Popen[Any]] = []

    def start(h: Any, cmd: list[str], log: str) -> subprocess.Popen[Any]:
        with open(run_dir / log, "wb") as f:
            proc = h.popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    perf: PerfCounts | None = None
    try:
        if plan.receivers_at_go:  # udpcast: the sender waits for its receiver
            sender = start(lab.sn, sender_cmd, "sender.log")
            time.sleep(0.5)
            t0 = time.monotonic()
            receiver = start(host, receiver_cmd, "receiver.log")
            cpu0 = 0.0
        else:  # uftp: the clients listen first
            receiver = start(host, receiver_cmd, "receiver.log")
            time.sleep(max(0.5, plan.settle))
            # udpcast's receiver works as soon as it starts, too soon to attach to
            perf = PerfCounts.attach(receiver.pid)
            cpu0 = cpu_seconds(receiver.pid)
            t0 = time.monotonic()
            sender = start(lab.sn, sender_cmd, "sender.log")
        cpu, rss, usage = cpu0, 0, None
        counts: dict[str, int] = {}
        while time.monotonic() - t0 < TIMEOUT:
            rss = max(rss, peak_rss(receiver.pid))
            if plan.done_by_exit:
                pid, status, usage = os.wait4(receiver.pid, os.WNOHANG)
                if pid:
                    receiver.returncode = os.waitstatus_to_exitcode(status)
                    break
            else:
                if receiver.poll() is not None:
                    break
                cpu = cpu_seconds(receiver.pid)
                if out.exists():
                    break
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        if perf is not None:
            counts = perf.stop()
        if usage is not None:
            cpu = usage.ru_utime + usage.ru_stime
        try:
            sender.wait(15)
        except subprocess.TimeoutExpired:
            pass
        ok = out.exists() and file_digest(out) == lab.files[FILE_NAME][1]
        packets = -(-lab.files[FILE_NAME][0] // BLOCK)
        name = receiver_cmd[0]
        return [Row(tool, f"receiver ({name})", packets, cpu - cpu0, elapsed, rss, ok, "", counts)]
    finally:
        for proc in procs:
            host.kill(proc)


# -- stages in process ----------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    content_id: bytes
    name: str
    size: int
    piece_length: int
    block_length: int
    piece_hashes: tuple[bytes, ...]


def _synthetic(pieces: int) -> tuple[bytes, _Manifest, list[bytes], list[tuple[int, bytes]]]:
    from mcp2p.wire.merkle import hash_piece, merkle_root
    from mcp2p.wire.rtp import pack_header, packet_digest

    size = pieces * PIECE
    data = os.urandom(size)
    hashes = tuple(hash_piece(data[i : i + PIECE]) for i in range(0, size, PIECE))
    manifest = _Manifest(merkle_root(list(hashes)), "stages.bin", size, PIECE, BLOCK, hashes)
    bpp = -(-PIECE // BLOCK)
    datagrams, notices = [], []
    seq = 0
    for piece in range(pieces):
        base = piece * PIECE
        for block in range(bpp):
            start = base + block * BLOCK
            payload = data[start : min(start + BLOCK, base + PIECE)]
            d = pack_header(seq & 0xFFFF, seq, 7, piece, block) + payload
            datagrams.append(d)
            notices.append((seq, packet_digest(d)))
            seq += 1
    return data, manifest, datagrams, notices


def _timed(fn: Any, n: int) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) / n * 1e6


def _send_gso(sock: socket.socket, datagrams: list[bytes], addr: Any) -> None:
    """Send as the SN does: runs of equal-sized datagrams in one GSO sendmsg."""
    i = 0
    while i < len(datagrams):
        size = len(datagrams[i])
        j = i + 1
        while j < len(datagrams) and j - i < 40 and len(datagrams[j]) == size:
            j += 1
        if j < len(datagrams) and j - i < 40 and len(datagrams[j]) < size:
            j += 1  # a shorter last segment is allowed
        cmsg = [(17, 103, size.to_bytes(2, "little"))]  # SOL_UDP, UDP_SEGMENT
        sock.sendmsg([b"".join(datagrams[i:j])], cmsg, 0, addr)
        i = j


def _recv_stage(datagrams: list[bytes], batch: bool, gso: bool = False) -> float:
    """µs of CPU per datagram spent in the receive calls alone."""
    from mcp2p.transfer import receiver as rx

    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    snd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rcv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rcv.bind(("127.0.0.1", 0))
        rcv.setblocking(False)
        addr = rcv.getsockname()
        reader = rx.BatchReader(rcv) if batch and hasattr(rx, "BatchReader") else None
        spent, got = 0.0, 0
        for i in range(0, len(datagrams), 256):
            if gso:
                _send_gso(snd, datagrams[i : i + 256], addr)
            else:
                for d in datagrams[i : i + 256]:
                    snd.sendto(d, addr)
            t = time.process_time()
            if reader is not None:
                while True:
                    n = reader.read()
                    if not n:
                        break
                    got += n
            else:
                while True:
                    try:
                        rcv.recvfrom(65536)
                    except BlockingIOError:
                        break
                    got += 1
            spent += time.process_time() - t
        return spent / max(1, got) * 1e6
    finally:
        rcv.close()
        snd.close()


def stages(pieces: int) -> dict[str, float]:
    """µs of CPU per packet of each stage of the CN's receive path."""
    from twisted.internet.task import Clock

    from mcp2p.transfer import receiver as rx
    from mcp2p.transfer.store import Buffer, PartialFile
    from mcp2p.wire.merkle import hash_piece
    from mcp2p.wire.rtp import DIGEST_LEN, MAX_PAYLOAD, decode_packet, pack_list, packet_digest

    data, manifest, datagrams, notices = _synthetic(pieces)
    n = len(datagrams)
    out: dict[str, float] = {"packets": n}
    out["recv_per_datagram"] = _recv_stage(datagrams, batch=False)
    if hasattr(rx, "BatchReader"):
        out["recv_batch"] = _recv_stage(datagrams, batch=True)
        try:
            out["recv_batch_gso_gro"] = _recv_stage(datagrams, batch=True, gso=True)
        except OSError:  # no UDP GSO here
            pass

    def decode() -> None:
        for d in datagrams:
            decode_packet(d)

    def digest() -> None:
        for d in datagrams:
            packet_digest(d)

    out["rtp_decode"] = _timed(decode, n)
    out["digest"] = _timed(digest, n)

    per_list = MAX_PAYLOAD // DIGEST_LEN  # as the SN makes them
    lists = [
        pack_list(notices[i][0], 7, b"".join(d for _, d in notices[i : i + per_list]))
        for i in range(0, n, per_list)
    ]
    r0 = rx.Receiver(Clock(), 7, lambda *a: None, lambda lost, received: None)

    def take_lists() -> None:
        for packet in lists:
            r0._take_list(packet)

    out["take_lists"] = _timed(take_lists, n)

    def receiver(deliver: Any) -> Any:
        clock = Clock()
        r = rx.Receiver(clock, 7, deliver, lambda lost, received: None)
        r.notices(notices)
        return r

    r = receiver(lambda piece, symbol, payload: None)

    def receive() -> None:
        feed(r)

    def feed(r: Any) -> None:
        if hasattr(r, "datagrams"):
            for i in range(0, n, 64):
                r.datagrams(datagrams[i : i + 64])
        else:
            for d in datagrams:
                r.datagramReceived(d, ("127.0.0.1", 1))

    out["receiver_no_delivery"] = _timed(receive, n)

    with tempfile.TemporaryDirectory(prefix="mcp2p-bench-") as tmp:
        root = Path(tmp)
        (root / "dl").mkdir()
        store = PartialFile.open(root / "dl", root / "state", manifest)
        bpp = -(-PIECE // BLOCK)

        def write() -> None:
            view = memoryview(data)
            for i in range(n):
                piece, block = divmod(i, bpp)
                start = piece * PIECE + block * BLOCK
                store.write_block(i, view[start : min(start + BLOCK, (piece + 1) * PIECE)])

        out["store_write_block"] = _timed(write, n)
        assert store.complete
        store.close()

        def hashing() -> None:
            view = memoryview(data)
            for i in range(0, len(data), PIECE):
                hash_piece(view[i : i + PIECE])

        out["piece_hash"] = _timed(hashing, n)

        (root / "dl2").mkdir()
        store2 = PartialFile.open(root / "dl2", root / "state2", manifest)
        layout = store2.layout

        def deliver(piece: int, symbol: int, payload: bytes) -> None:
            store2.write_block(layout.block_index(piece, symbol), payload)

        r2 = receiver(deliver)
        if hasattr(store2, "write_blocks") and hasattr(r2, "deliver_many"):
            r2.deliver_many = lambda items: store2.write_blocks(items)

        out["receiver_to_store"] = _timed(lambda: feed(r2), n)
        assert store2.complete, "the in-process path did not complete the file"
        store2.close()

        # The same, packets before their notices (TLS lags UDP): each is held
        # (copied), then digested and handed on when its notice comes.
        (root / "dl3").mkdir()
        store3 = PartialFile.open(root / "dl3", root / "state3", manifest)
        r3 = rx.Receiver(Clock(), 7, lambda *a: None, lambda lost, received: None)

        def deliver3(blocks: list[tuple[int, int, Buffer]]) -> None:
            store3.write_blocks(blocks)  # its piece events are not needed here

        r3.deliver_many = deliver3

        def packets_first() -> None:
            for i in range(0, n, 64):
                r3.datagrams(datagrams[i : i + 64])
                r3.notices(notices[i : i + 64])

        out["receiver_to_store_packets_first"] = _timed(packets_first, n)
        assert store3.complete
        store3.close()
        out.update(_fetch_stages(root, data, manifest))
    return out


def _items(data: bytes, manifest: _Manifest, order: list[int]) -> list[tuple[int, int, Any]]:
    """``(piece, block, view)`` of the blocks ``order`` (global indices)."""
    bpp = -(-manifest.piece_length // manifest.block_length)
    view = memoryview(data)
    out = []
    for i in order:
        piece, block = divmod(i, bpp)
        start = piece * manifest.piece_length + block * manifest.block_length
        stop = min(start + manifest.block_length, (piece + 1) * manifest.piece_length)
        out.append((piece, block, view[start:stop]))
    return out


def _bare_fetch(store: Any, code: Any, layout: Any) -> Any:
    """A ``Fetch`` with only what its data path reads (``_deliver_many``): the
    store, the code's decoder, counters; no search, channel or reactor loop."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from mcp2p.transfer.fetch import Fetch

    fetch = Fetch.__new__(Fetch)
    fetch.reactor = Clock()  # type: ignore[assignment]
    fetch.store = store
    fetch.code = code
    fetch.decoder = code.decoder(layout)
    fetch.decoder.max_pending = 1 << 30
    fetch.counters = {"bad_blocks": 0, "bad_pieces": 0, "pieces": 0}
    fetch.contributors = {}
    fetch.done = defer.Deferred()
    fetch.__dict__["layout"] = layout
    fetch.__dict__["per_block"] = code.name == "plain"
    return fetch


def lossy_stream(
    data: bytes, manifest: _Manifest, loss: float, seed: int = 1
) -> tuple[list[tuple[int, int, bytes]], int]:
    """What a RaptorQ CN gets of ``data`` at ``loss``: each piece's source
    symbols with ``loss`` of them dropped (at random, seeded), then the repair
    symbols the SN sends for what was lost (``repair_overhead`` more); and the
    number of source symbols dropped."""
    import random

    from mcp2p.core.blockcode import RaptorQCode
    from mcp2p.wire.layout import Layout

    rng = random.Random(seed)
    code = RaptorQCode()
    layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
    encoder = code.encoder(layout, lambda offset, length: data[offset : offset + length])
    out: list[tuple[int, int, bytes]] = []
    dropped = 0
    for piece in range(layout.pieces):
        k = code.source_symbols(layout, piece)
        symbols = encoder.symbols(piece, 0, k)
        kept = [s for s in symbols if rng.random() >= loss]
        lost = k - len(kept)
        dropped += lost
        out += kept
        if lost:
            out += encoder.symbols(piece, k, lost + code.repair_overhead(layout, piece))
    return out, dropped


def _feed(fn: Any, batches: list[Any]) -> Any:
    """A call that hands ``fn`` each batch in turn."""

    def run() -> None:
        for batch in batches:
            fn(batch)

    return run


def _fetch_stages(root: Path, data: bytes, manifest: _Manifest) -> dict[str, float]:
    """The part after the receiver: ``Fetch._deliver_many`` with each code, and the
    RaptorQ decoder alone on a 1%-lossy stream. Batches of 64 (``..._batch4``: of
    4, as a receiver woken for a few packets hands them on), payloads views."""
    from mcp2p.core.blockcode import PlainCode, RaptorQCode
    from mcp2p.transfer.fetch.common import Source
    from mcp2p.transfer.store import PartialFile
    from mcp2p.wire.layout import Layout

    layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
    out: dict[str, float] = {}
    plain = _items(data, manifest, list(range(layout.blocks)))
    batches = [plain[i : i + 64] for i in range(0, len(plain), 64)]

    (root / "f1").mkdir()
    store = PartialFile.open(root / "f1", root / "state-f1", manifest)
    out["store_write_blocks"] = _timed(_feed(store.write_blocks, batches), len(plain))
    assert store.complete
    store.close()

    class _Server:
        node_id = bytes(range(32))

    def source() -> Any:
        return Source(server=_Server(), offer=None, state="active")  # type: ignore[arg-type]

    def fetch_stage(name: str, code: Any, items: list[Any], batch: int) -> None:
        (root / name).mkdir()
        store = PartialFile.open(root / name, root / f"state-{name}", manifest)
        fetch = _bare_fetch(store, code, layout)
        deliver = functools.partial(fetch._deliver_many, source())
        batches = [items[i : i + batch] for i in range(0, len(items), batch)]
        out[name] = _timed(_feed(deliver, batches), len(items))
        assert store.complete and fetch.counters["pieces"] == layout.pieces
        store.close()

    fetch_stage("fetch_plain", PlainCode(), plain, 64)
    fetch_stage("fetch_plain_batch4", PlainCode(), plain, 4)
    for loss in (0.0, 0.01):
        stream, _ = lossy_stream(data, manifest, loss)
        views = [(p, e, memoryview(s)) for p, e, s in stream]
        rq = [views[i : i + 64] for i in range(0, len(views), 64)]
        tag = f"{loss * 100:g}pct"
        decoder = RaptorQCode().decoder(layout)
        decoder.max_pending = 1 << 30
        out[f"raptorq_add_many_{tag}"] = _timed(_feed(decoder.add_many, rq), len(views))
        assert decoder.decoded == layout.pieces, (decoder.decoded, decoder.rejected)
        fetch_stage(f"fetch_raptorq_{tag}", RaptorQCode(), views, 64)
        if not loss:
            fetch_stage(f"fetch_raptorq_{tag}_batch4", RaptorQCode(), views, 4)
    return out


# -- the whole bench ------------------------------------------------------


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_stages(split: dict[str, float]) -> None:
    packets = f"{split['packets']:.0f} packets"
    print(f"CN receive path by stage (in process, {packets}, µs CPU per packet)")
    for key, value in split.items():
        if key != "packets":
            print(f"  {key:<32} {value:7.2f}")


def _rounded(split: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in split.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcp2p.lab.bench_cpu", description=__doc__)
    parser.add_argument("--size", default="200M", help="file size (default 200M)")
    parser.add_argument("--rate", default="400M", help="sending rate, bit/s (default 400M)")
    parser.add_argument("--tools", default="mcp2p,uftp,udpcast")
    parser.add_argument("--mode", default="multicast", choices=("multicast", "unicast"))
    parser.add_argument(
        "--code",
        default="auto",
        choices=("auto", "plain", "raptorq"),
        help="mcp2p's block code (default auto, as shipped: raptorq in multicast)",
    )
    parser.add_argument("--stage-pieces", type=int, default=32, help="MiB for the stage split")
    parser.add_argument("--quick", action="store_true", help="8 MiB file, 4 MiB stages at most")
    parser.add_argument(
        "--stages-only",
        action="store_true",
        help="only the in-process stage split (no root, no namespaces, sockets on 127.0.0.1)",
    )
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    from mcp2p.config import parse_rate

    size = parse_size("8M" if args.quick else args.size)
    pieces = min(4, args.stage_pieces) if args.quick else args.stage_pieces
    rate = parse_rate(args.rate)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in ("mcp2p", "uftp", "udpcast"):
            parser.error(f"unknown tool {tool!r}")
    if args.stages_only:
        split = stages(pieces)
        _print_stages(split)
        if args.json:
            write_json(args.json, {"stages_us_per_packet": _rounded(split)})
        return 0
    rows: list[Row] = []
    from mcp2p.lab.net import Network, missing_requirements
    from mcp2p.lab.peers import missing_tools
    from mcp2p.lab.transfer import StarLab

    if os.geteuid() != 0 or missing_requirements(("ip",)):
        parser.error("needs root and iproute2 (the daemons run in a namespace pair)")
    with tempfile.TemporaryDirectory(prefix="mcp2p-cpu-", dir=args.dir) as tmp, Network() as net:
        lab = StarLab(net, Path(tmp), cns=1)
        lab.share(size)
        for tool in tools:
            print(f"bench_cpu: {tool} ...", file=sys.stderr, flush=True)
            reason = None if tool == "mcp2p" else missing_tools(tool)
            if reason:
                rows.append(Row(tool, "receiver", 0, 0.0, 0.0, ok=False, note=reason))
                continue
            try:
                if tool == "mcp2p":
                    rows += run_mcp2p(lab, rate, args.mode, args.code)
                else:
                    rows += run_peer(lab, tool, rate)
            except Exception as e:  # noqa: BLE001 - reported in the table
                rows.append(Row(tool, "?", 0, 0.0, 0.0, ok=False, note=str(e)[:300]))
        lab.stop()
    split = stages(pieces)
    print(
        f"CPU per data packet, {size / 2**20:.0f} MiB file, namespace pair, "
        f"sent at {rate / 1e6:.0f} Mbit/s"
    )
    head = ("tool", "role", "packets", "cpu s", "µs/pkt", "kinstr/pkt", "kcyc/pkt", "time s")
    print(
        "{:<9} {:<24} {:>9} {:>7} {:>8} {:>10} {:>8} {:>7} {:>11}  ok".format(*head, "peak RSS MB")
    )
    for row in rows:
        instr, cyc = row.per_packet("instructions"), row.per_packet("cycles")
        print(
            f"{row.tool:<9} {row.role:<24} {row.packets:>9} {row.cpu:>7.2f} "
            f"{row.us_per_packet:>8.2f} {_cell(instr):>10} {_cell(cyc):>8} "
            f"{row.elapsed:>7.2f} {row.rss / 1e6:>11.1f}  "
            f"{'yes' if row.ok else 'NO'} {row.note}"
        )
    print(
        "kinstr/kcyc: thousands of instructions and of cycles per packet (perf stat on the "
        "process over the same span; '-' where perf is missing, or for udpcast's receiver, "
        "which works from its first moment): unlike µs, instructions do not grow when "
        "the machine is slowed by its neighbours."
    )
    print()
    _print_stages(split)
    result = {
        "size": size,
        "rate": rate,
        "block": BLOCK,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": [r.to_json() for r in rows],
        "stages_us_per_packet": _rounded(split),
    }
    if args.json:
        write_json(args.json, result)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
