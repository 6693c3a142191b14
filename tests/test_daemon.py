"""The real daemon: ``twistd -n mcp2p`` in a subprocess, the ``mcp2p`` command in another."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mcp2p.commands import MCP2P, TWISTD
from mcp2p.core.sapinterval import JITTER_HIGH, announcement_interval
from tests.nodes import free_udp_port, make_node_dir, node_ini

SAP_LIMIT = 64_000  # bit/s: enough that min_interval (1 s), not the limit, sets the interval


def sap_listen_time(ads: int, ad_size: int = 1000) -> float:
    """How long a cold SAP listener needs to hear each of ``ads`` announcements.

    Each repeats within 4/3 of the RFC 2974 interval, max(min_interval,
    8*ads*size/limit): at the default 4000 bit/s, two 700-byte ads repeat
    every 2.7 s, up to 3.6 s apart, and a 2.5 s listen missed one about
    one time in ten.  Twice the longest gap, so that a timer late on a
    loaded machine still falls inside.
    """
    return 2 * JITTER_HIGH * announcement_interval(ad_size, ads, SAP_LIMIT, min_interval=1.0)


def start_daemon(root: Path, ini: str) -> subprocess.Popen[bytes]:
    (root / "node.ini").write_text(ini)
    log = open(root / "twistd.log", "wb")
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "mcp2p", "--config", str(root / "node.ini")],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not (root / "state" / "api.port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("daemon did not start:\n" + (root / "twistd.log").read_text())
        time.sleep(0.05)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def mcp2p(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MCP2P, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MCP2P_CONFIG": ""},
    )


def test_daemon_answers_search_from_another_process_and_stops_on_sigterm(tmp_path: Path) -> None:
    qport, sport = free_udp_port(), free_udp_port()
    sn = make_node_dir(tmp_path / "sn", {"debian-13.iso": 300_000, "readme.txt": b"hi\n"})
    proc = start_daemon(sn, node_ini(sn, qport, sport, sap={"bandwidth_limit": str(SAP_LIMIT)}))
    try:
        cn = tmp_path / "cn"
        cn.mkdir()
        (cn / "mcp2p.ini").write_text(node_ini(cn, qport, sport, discovery={"answers_wanted": "1"}))
        # Found through ./mcp2p.ini of the working directory.
        out = mcp2p("search", "*.iso", "--json", cwd=cn)
        assert out.returncode == 0, out.stderr
        [line] = [json.loads(x) for x in out.stdout.splitlines()]
        assert line["name"] == "debian-13.iso"
        assert line["size"] == 300_000
        assert line["distance"] == 1
        human = mcp2p("search", "debian*", cwd=cn)
        assert human.returncode == 0, human.stderr
        assert "debian-13.iso" in human.stdout and "hop limits 1" in human.stderr
        by_id = mcp2p("search", line["content_id"], "--json", cwd=cn)
        assert json.loads(by_id.stdout)["name"] == "debian-13.iso"
        missing = mcp2p("search", "nothing-like-this*", "--max-hops", "2", cwd=cn)
        assert missing.returncode == 1
        # Garbage on the query group and on the SAP group: dropped, counted, logged.
        garbage = [b"", b"M2P\x01\x01", b"\xff" * 64, b"M2P\x01\x02\x00" + bytes(100)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for data in garbage:
            sock.sendto(data, ("239.255.77.77", qport))
            sock.sendto(data, ("239.255.77.78", sport))
        sock.close()
        time.sleep(0.3)
        again = mcp2p("search", "*.iso", "--json", cwd=cn)
        assert again.returncode == 0 and "debian-13.iso" in again.stdout
        status = mcp2p("--config", str(sn / "node.ini"), "status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["shared_files"] == 2
        assert state["discovery"]["query"]["malformed"] == len(garbage)
        assert state["discovery"]["sap"]["dropped"] == len(garbage)
        # The SAP directory, from a process without a daemon: it listens a while,
        # and hears each announcement at its next repeat.
        wait = f"{sap_listen_time(ads=2):.2f}"
        sap = mcp2p("search", "*.iso", "--method", "sap", "--wait", wait, "--json", cwd=cn)
        assert sap.returncode == 0, sap.stderr
        [heard] = [json.loads(x) for x in sap.stdout.splitlines()]
        assert heard["content_id"] == line["content_id"] and heard["distance"] is None
        # With a daemon of its own, the command asks it (the daemon searches).
        cn_daemon = start_daemon(cn, (cn / "mcp2p.ini").read_text())
        try:
            via = mcp2p("search", "*.iso", "--json", cwd=cn)
            assert via.returncode == 0 and "debian-13.iso" in via.stdout, via.stderr
            cn_state = json.loads(mcp2p("status", cwd=cn).stdout)
            assert cn_state["discovery"]["query"]["searches"] == 1
            # The daemon fetches too: mcp2p get follows its progress through the API.
            # Without -o, into the daemon's first [fetching] download_dirs entry.
            got = mcp2p("get", "debian-13.iso", "--json", cwd=cn)
            assert got.returncode == 0, got.stdout + got.stderr
            assert json.loads(got.stdout.splitlines()[-1])["event"] == "done"
            assert (cn / "downloads" / "debian-13.iso").read_bytes() == (
                sn / "share" / "debian-13.iso"
            ).read_bytes()
        finally:
            stop_daemon(cn_daemon)
    finally:
        code = stop_daemon(proc)
    log = (sn / "twistd.log").read_text()
    # twistd re-raises the signal that stopped it once shutdown is complete.
    assert code in (0, -signal.SIGTERM), log
    assert "Server Shut Down" in log
    assert "Traceback" not in log
    assert log.count("dropped malformed datagram") >= 1
    assert not (sn / "state" / "api.port").exists()


@pytest.mark.parametrize(
    "ini,needle",
    [
        ("[discovery]\nring_timeout = soon\n", "[discovery] ring_timeout = 'soon'"),
        ("[discovery]\nfrobnicate = 1\n", "[discovery] unknown key 'frobnicate'"),
        ("[serving]\nssm_pool = 239.1.0.0/16\n", "[serving] ssm_pool = '239.1.0.0/16'"),
    ],
)
def test_bad_config_stops_the_daemon_with_one_line(tmp_path: Path, ini: str, needle: str) -> None:
    (tmp_path / "bad.ini").write_text(ini)
    out = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "mcp2p", "--config", str(tmp_path / "bad.ini")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(tmp_path / "bad.ini") in lines[0] and needle in lines[0]


def test_cli_reports_a_missing_config_in_one_line(tmp_path: Path) -> None:
    out = mcp2p("search", "*", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no config file" in out.stderr
