"""procstat: perf's counters of a running process, and its CSV parsed; CPU
seconds of a process with its children."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mcp2p.lab.procstat import PerfCounts, children, cpu_seconds, parse_perf_csv


def test_perf_csv_counts_are_read_and_the_rest_skipped() -> None:
    text = (
        "# started on Thu Nov 26 19:31:02 2026\n"
        "\n"
        "4498970100,,instructions,1483212000,100.00,1.27,insn per cycle\n"
        "3546974719,,cycles,1483212000,100.00,2.392,GHz\n"
        "<not counted>,,branch-misses,0,0.00,,\n"
        "<not supported>,,stalled-cycles-frontend,0,100.00,,\n"
        "1393.27,msec,task-clock,1393270000,100.00,0.95,CPUs utilized\n"
        "garbage\n"
        "12,,instructions:u,1,100.00,,\n"
    )
    assert parse_perf_csv(text) == {
        "instructions": 4498970100,
        "cycles": 3546974719,
        "instructions:u": 12,
    }
    assert parse_perf_csv("") == {}


def test_counts_of_a_process_grow_with_its_work() -> None:
    """More work in the span, more instructions counted; nothing outside it."""
    if not PerfCounts.counting():
        pytest.skip("perf or its hardware counters are not available here")
    spin = (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    n = int(line)\n"
        "    sum(range(n))\n"
        "    print(n, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        results = []
        for n in (10**5, 10**7):
            counts = PerfCounts.attach(proc.pid)
            assert counts is not None
            proc.stdin.write(f"{n}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == str(n)
            results.append(counts.stop())
        small, large = results
        assert set(large) >= {"instructions", "cycles"}
        # sum(range(10**7)) is at least 10**7 instructions; 100x the work, far more counted
        assert large["instructions"] > 10**7
        assert large["instructions"] > 10 * small.get("instructions", 0)
    finally:
        proc.kill()
        proc.wait()


def test_attach_to_no_such_process_is_none() -> None:
    if shutil.which("perf") is None:
        pytest.skip("no perf here")
    assert PerfCounts.attach(2**22 + 12345) is None


BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4:\n    pass\n"


@pytest.mark.parametrize("reaped", [False, True], ids=["running-child", "reaped-child"])
def test_a_process_s_cpu_includes_its_children_s(reaped: bool) -> None:
    """An SN's encode workers are its children: the lab counts their CPU as
    the SN's, whether they still run or their parent reaped them."""
    child = f"{sys.executable} -c '{BUSY}'" + ("" if reaped else " &")
    parent = subprocess.Popen(["sh", "-c", f"{child}\nsleep 30"])
    try:

        def reaped_cpu() -> float:  # the parent's cutime + cstime
            with open(f"/proc/{parent.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cpu_seconds(parent.pid) >= 0.35 and (not reaped or reaped_cpu() >= 0.35):
                break
            time.sleep(0.05)
        assert cpu_seconds(parent.pid) >= 0.35
        assert children(parent.pid)  # the busy child, or sleep after it
    finally:
        for pid in children(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
