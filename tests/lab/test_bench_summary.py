"""make bench's summary table from the benches' JSON, and the CPU meter the
lab measures its processes with (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mcp2p.lab import bench_summary
from mcp2p.lab.procstat import CpuMeter, cpu_seconds

CPU = {
    "size": 8 << 20,
    "rows": [
        {"tool": "mcp2p", "role": "SN", "us_per_packet": 10.0, "peak_rss_mb": 64, "ok": True},
        {"tool": "mcp2p", "role": "CN", "us_per_packet": 11.5, "peak_rss_mb": 70, "ok": True},
        {"tool": "uftp", "role": "receiver (uftpd)", "us_per_packet": 6.7, "ok": True},
        {"tool": "udpcast", "role": "receiver (udp-receiver)", "ok": False},
    ],
}
SN = {
    "cpu": {"us_per_packet": 4.25, "rate": "1G"},
    "rss": [
        {"size": 1 << 30, "sessions": 1, "rss_mb": 60.0},
        {"size": 1 << 30, "sessions": 5, "rss_mb": 61.0},
        {"size": 4 << 30, "sessions": 1, "rss_mb": 62.0},
        {"size": 4 << 30, "sessions": 5, "rss_mb": 66.0},
    ],
}


def _unshaped(tmp: Path) -> None:
    run = {"tool": "mcp2p-multicast", "ok": True, "goodput_mb_s": [50.0], "cn_cpu_s": [1.5]}
    data = {
        "params": {"size": 32 << 20, "link_mbit": 2000, "tools": ["mcp2p-multicast", "udpcast"]},
        "skipped": {},
        "runs": [run, {"tool": "udpcast", "ok": False, "goodput_mb_s": [], "cn_cpu_s": []}],
    }
    (tmp / "unshaped").mkdir()
    (tmp / "unshaped" / "unicast.json").write_text(json.dumps({"data": data}))


def test_the_summary_has_one_row_per_headline_figure(tmp_path: Path) -> None:
    (tmp_path / "bench-cpu.json").write_text(json.dumps(CPU))
    (tmp_path / "bench-sn.json").write_text(json.dumps(SN))
    _unshaped(tmp_path)
    rows = dict(bench_summary.summary(tmp_path))
    cpu = rows["CPU per data packet (8 MiB, side by side)"]
    assert "mcp2p SN 10.0 µs" in cpu and "mcp2p CN 11.5 µs" in cpu and "uftpd 6.7 µs" in cpu
    assert "udp-receiver failed" in cpu
    assert rows["SN CPU per packet, 1 unicast subscriber at 1G"] == "4.2 µs"
    assert rows["SN RSS vs file size (1 session)"] == "1 GiB 60 MB, 4 GiB 62 MB"
    assert rows["SN RSS vs sessions (4 GiB file)"] == "1: 62 MB, 5: 66 MB"
    good = rows["1 CN goodput, unshaped (2000 Mbit/s links, 32 MiB)"]
    assert good == "mcp2p-multicast 400 Mbit/s, udpcast failed"
    assert not any(k.startswith("not measured") for k in rows)


def test_what_a_bench_did_not_write_is_named_and_bad_json_is_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "bench-cpu.json").write_text("{not json")
    (tmp_path / "unshaped").mkdir()
    (tmp_path / "unshaped" / "unicast.json").write_text(json.dumps({"error": "Trace\nBoom: x"}))
    rows = dict(bench_summary.summary(tmp_path))
    assert rows["not measured (needs root, or failed)"] == "bench_cpu, bench_sn"
    assert rows["unshaped 1-CN goodput"] == "failed: Boom: x"
    out = subprocess.run(
        [sys.executable, "-m", "mcp2p.lab.bench_summary", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "headline figures" in out.stdout


def test_the_cpu_meter_keeps_the_cpu_of_a_process_that_exited() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.read()\n{busy}"], stdin=subprocess.PIPE
    )
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter([proc, idle])
        meter.start()
        assert proc.stdin is not None
        proc.stdin.close()  # now it burns 0.3 s of CPU and exits
        deadline = time.monotonic() + 30
        while meter.poll(proc) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.returncode == 0 and proc.poll() == 0
        meter.stop()
        used = meter.seconds(proc)
        assert used is not None and 0.25 <= used < 2.0
        idle_used = meter.seconds(idle)
        assert idle_used is not None and idle_used < 0.1
        assert cpu_seconds(idle.pid) >= 0
    finally:
        idle.kill()
        idle.wait()
