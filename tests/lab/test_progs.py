"""The lab's helper programs (`mcp2p.lab.progs`) and the lab's one face for
the benches: the pure parts in process, the TCP peer and the start signal as
real processes on loopback."""

from __future__ import annotations

import importlib
import os
import pkgutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp2p.lab import progs
from mcp2p.lab.__main__ import BENCHES
from mcp2p.lab.progs import command, forger, ping
from tests.nodes import free_udp_port, node_ini

SN = socket.inet_aton("10.9.0.1")
GROUP = socket.inet_aton("239.1.2.3")
PORT = 7712


def _rtp(seq: int, size: int, ssrc: int = 0xC0FFEE) -> bytes:
    head = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq, ssrc)
    return head + bytes((seq + i) % 251 for i in range(size - len(head)))


def _ip(src: bytes, dst: bytes, dport: int, payload: bytes, proto: int = 17) -> bytes:
    udp = struct.pack("!HHHH", 5000, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 16, proto, 0, src, dst) + udp


def test_every_program_is_a_module_with_a_main() -> None:
    names = [m.name for m in pkgutil.iter_modules(progs.__path__)]
    assert {"forger", "ping", "at_go", "tcp_sender", "tcp_receiver", "api_call"} <= set(names)
    for name in names:
        assert callable(importlib.import_module(f"mcp2p.lab.progs.{name}").main)
    assert command("ping", "x")[:3] == [sys.executable, "-m", "mcp2p.lab.progs.ping"]


def test_the_forger_keeps_the_first_datagram_of_a_gso_burst() -> None:
    first, second = _rtp(7, 1400), _rtp(8, 1400)
    assert forger.one(first) == first  # one datagram: as is
    assert forger.one(first + second) == first  # split at the repeated header
    assert forger.one(first + second + _rtp(9, 600)) == first
    odd = b"\x80" + bytes(range(1, 200)) * 10  # no header repeats: cut at one frame
    assert forger.one(odd) == odd[: forger.MAX_DATAGRAM]


def test_the_forger_takes_only_the_sessions_packets_and_forges_them_back() -> None:
    rtp = _rtp(41, 600)
    assert forger.session_packet(_ip(SN, GROUP, PORT, rtp), SN, PORT) == (GROUP, rtp)
    other = socket.inet_aton("10.9.0.2")
    assert forger.session_packet(_ip(other, GROUP, PORT, rtp), SN, PORT) is None
    assert forger.session_packet(_ip(SN, other, PORT, rtp), SN, PORT) is None  # unicast
    assert forger.session_packet(_ip(SN, GROUP, PORT + 1, rtp), SN, PORT) is None
    assert forger.session_packet(_ip(SN, GROUP, PORT, rtp, proto=6), SN, PORT) is None
    assert forger.session_packet(_ip(SN, GROUP, PORT, rtp[:21]), SN, PORT) is None
    assert forger.session_packet(b"\x45" * 27, SN, PORT) is None

    packet = forger.forge(rtp, (1 << 32) + 70000, SN, GROUP, PORT)
    found = forger.session_packet(packet, SN, PORT)
    assert found is not None and found[0] == GROUP
    fake = found[1]
    assert len(fake) == len(rtp) and fake[:2] == rtp[:2]
    assert struct.unpack("!HI", fake[2:8]) == (70000 & 0xFFFF, 70000)  # wrapped to 32 bits
    assert fake[8:22] == rtp[8:22] and fake[54:] == rtp[54:]
    assert bytes(b ^ 0xFF for b in fake[22:54]) == rtp[22:54]


def test_the_ping_checksum_of_a_checksummed_packet_is_zero() -> None:
    body = struct.pack("!HH", 0x1234, 3) + b"mcp2p-lab"
    pkt = struct.pack("!BBH", 8, 0, ping.checksum(struct.pack("!BBH", 8, 0, 0) + body)) + body
    assert ping.checksum(pkt) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
def test_ping_is_answered_on_loopback() -> None:
    for addr in ("127.0.0.1", "::1"):
        cp = subprocess.run(command("ping", addr, "1", "2"), capture_output=True, timeout=30)
        assert cp.returncode == 0, cp.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_tcp_peer_copies_a_file_to_two_receivers_on_loopback(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    port, ready = _free_port(), tmp_path / "ready"
    sender = subprocess.Popen(
        command("tcp_sender", str(source), "127.0.0.1", str(port), "2", "20", str(ready)),
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1000):
            if ready.exists() or sender.poll() is not None:
                break
            time.sleep(0.01)
        assert ready.exists(), sender.stderr.read() if sender.stderr else ""
        outs = [tmp_path / f"out{i}" for i in range(2)]
        receivers = [  # one after the other: the sender serves each as it connects
            subprocess.run(
                command("tcp_receiver", "127.0.0.1", str(port), str(out), "20"),
                capture_output=True,
                text=True,
                timeout=30,
            )
            for out in outs
        ]
        assert sender.wait(timeout=30) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    for cp, out in zip(receivers, outs, strict=True):
        assert cp.returncode == 0 and cp.stdout == f"{source.stat().st_size}\n"
        assert out.read_bytes() == source.read_bytes()


def test_at_go_waits_for_the_signal_then_execs_or_gives_up(tmp_path: Path) -> None:
    go, ready = tmp_path / "go", tmp_path / "ready"
    go.touch()
    cp = subprocess.run(
        command("at_go", str(go), str(ready), "5", sys.executable, "-c", "print('went')"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cp.returncode == 0 and cp.stdout == "went\n" and ready.exists()
    cp = subprocess.run(
        command("at_go", str(tmp_path / "never"), str(ready), "0.1", "false"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cp.returncode == 1 and "no start signal" in cp.stderr


def _lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp2p.lab", *args], capture_output=True, text=True, timeout=60
    )


def test_the_lab_lists_its_benches_and_runs_one(tmp_path: Path) -> None:
    listed = _lab("list")
    assert listed.returncode == 0
    benches = listed.stdout.split("benches")[1]
    for name in BENCHES:
        assert f"  {name}: " in benches
    (tmp_path / "bench-cpu.json").write_text("{not json")
    for name in ("summary", "bench_summary"):
        cp = _lab("bench", name, str(tmp_path))
        assert cp.returncode == 0 and "headline figures" in cp.stdout, cp.stderr
    helped = _lab("bench", "bench_summary", "--help")
    assert (
        helped.returncode == 0 and "usage: python -m mcp2p.lab.bench_summary DIR" in helped.stdout
    )
    assert _lab("bench", "codes", "--help").returncode == 0
    unknown = _lab("bench", "nope")
    assert unknown.returncode == 2 and "unknown bench 'nope'" in unknown.stderr


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_bench_without_a_name_says_what_there_is(argv: list[str]) -> None:
    cp = _lab("bench", *argv)
    assert cp.returncode == (2 if not argv else 0)
    assert "benches: " + ", ".join(BENCHES) in cp.stdout


def test_the_cn_cli_imports_everything_before_the_start_signal(tmp_path: Path) -> None:
    """What a lab CLI imports after the signal is time the fetches start apart
    (`mcp2p.lab.progs.cn_cli`): a get, run as the lab runs it up to its call
    to the daemon (here a port where none listens), imports nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ini = tmp_path / "node.ini"
    ini.write_text(node_ini(tmp_path, free_udp_port(), free_udp_port(), api={"port": str(port)}))
    go = tmp_path / "go"
    go.touch()
    argv = [str(go), str(tmp_path / "ready"), "5", "0", "--config", str(ini), "get", "x.bin"]
    code = (
        "import sys\n"
        "from mcp2p.lab.progs import cn_cli\n"
        "before = set(sys.modules)\n"
        f"cn_cli.main({argv + ['--json']!r})\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    cp = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert "no daemon answered" in cp.stderr, cp.stdout + cp.stderr
    assert cp.stdout.strip().splitlines()[-1] == "[]", cp.stdout + cp.stderr
