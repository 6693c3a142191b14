"""CPU and memory of the lab's processes, read from /proc and ``wait4``.

    meter = CpuMeter([sender, *receivers])   # Popen objects we started
    meter.start()                            # at the start signal
    ...  meter.poll(proc)                    # instead of proc.poll(): keeps rusage
    meter.stop()                             # before killing what still runs
    meter.seconds(proc)                      # user+sys over the span, or None

A process that exits is reaped with ``os.wait4`` (by pid, never by group),
so its CPU comes from its rusage; one still running is read from
``/proc/PID/stat`` (utime + stime, in clock ticks). ``Popen.poll`` would
reap it and lose the rusage, so code that measures a process asks the
meter instead, which then sets ``returncode`` as Popen would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CpuMeter",
    "PerfCounts",
    "children",
    "cpu_seconds",
    "memory_kib",
    "parse_perf_csv",
    "peak_rss",
]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command's closing parenthesis
    (field 3, the state, is [0]; the parent's pid is [1])."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s running children (a scan of /proc: this kernel
    may lack /proc/PID/task/TID/children)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat(name)[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """user+sys of a running (or not yet reaped) process and its descendants,
    from /proc: the running ones' own, and what the ones it reaped used
    (an SN's encode workers are its children: their work is the SN's)."""
    fields = _stat(pid)
    total = sum(int(x) for x in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile: its parent's cutime has it, or soon will
    return total


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status in KiB (``VmRSS``, its peak
    ``VmHWM``, ...); ``pid`` "self" is this process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm"):
                out[key] = int(value.split()[0])
    return out


def peak_rss(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 if gone)."""
    try:
        return memory_kib(pid).get("VmHWM", 0) * 1024
    except OSError:
        return 0


class CpuMeter:
    """user+sys CPU seconds of some processes between `start` and `stop`."""

    def __init__(self, procs: Iterable[subprocess.Popen[Any]] = ()) -> None:
        self._procs: list[subprocess.Popen[Any]] = list(procs)
        self._start: dict[int, float] = {}
        self._end: dict[int, float] = {}
        self._exited: dict[int, float] = {}  # pid -> CPU from rusage, once reaped

    def add(self, proc: subprocess.Popen[Any]) -> None:
        self._procs.append(proc)

    def _read(self, proc: subprocess.Popen[Any]) -> float | None:
        if proc.pid in self._exited:
            return self._exited[proc.pid]
        self.poll(proc)
        if proc.pid in self._exited:
            return self._exited[proc.pid]
        try:
            return cpu_seconds(proc.pid)
        except (OSError, ValueError, IndexError):
            return None  # reaped by someone else: its CPU is lost

    def start(self) -> None:
        """Read every process now (the start of the measured span)."""
        for proc in self._procs:
            value = self._read(proc)
            if value is not None:
                self._start[proc.pid] = value

    def poll(self, proc: subprocess.Popen[Any]) -> int | None:
        """`Popen.poll` that keeps the exited process's rusage."""
        if proc.returncode is not None:
            return proc.returncode
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.poll()
        if not pid:
            return None
        self._exited[proc.pid] = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode

    def stop(self) -> None:
        """Read every process now (the end of the span); call it before
        killing the ones still running."""
        for proc in self._procs:
            value = self._read(proc)
            if value is not None:
                self._end[proc.pid] = value

    def seconds(self, proc: subprocess.Popen[Any]) -> float | None:
        """CPU seconds ``proc`` used between `start` and `stop` (None: not read)."""
        if proc.pid not in self._start or proc.pid not in self._end:
            return None
        return max(0.0, self._end[proc.pid] - self._start[proc.pid])


class PerfCounts:
    """Hardware counters of one running process over a span, by ``perf stat
    -p PID`` (user and kernel work of all its threads): instructions and
    cycles. Unlike CPU seconds, instructions do not change when the machine
    is slowed by its neighbours, so two tools compared by them are compared
    on their work alone (cycles are in between: they ignore the clock's
    speed, not a shared cache's misses).

        counts = PerfCounts.attach(pid)   # None: no perf, or no counters here
        ...
        counts.stop()                     # {"instructions": n, "cycles": n}

    Attaching takes perf a moment, so the span starts a little after
    `attach` returns; `attach` waits ATTACH seconds for it. The process may
    exit first: perf then ends by itself with its totals."""

    EVENTS = ("instructions", "cycles")
    ATTACH = 0.3  # seconds given to perf to attach before the span starts
    STOP = 10.0  # seconds perf may take to write its totals

    def __init__(self, proc: subprocess.Popen[Any], out: str) -> None:
        self._proc = proc
        self._out = out

    @classmethod
    def counting(cls) -> bool:
        """Whether perf is here and can count instructions: a virtual
        machine without a PMU has perf but no hardware counters."""
        import shutil

        perf = shutil.which("perf")
        if perf is None:
            return False
        try:
            cp = subprocess.run(
                [perf, "stat", "-x", ",", "-e", "instructions", "true"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return cp.returncode == 0 and bool(parse_perf_csv(cp.stderr))

    @classmethod
    def attach(cls, pid: int) -> PerfCounts | None:
        import shutil
        import tempfile
        import time

        perf = shutil.which("perf")
        if perf is None:
            return None
        fd, out = tempfile.mkstemp(prefix="mcp2p-perf-", suffix=".csv")
        os.close(fd)
        events = ",".join(cls.EVENTS)
        try:
            proc = subprocess.Popen(
                [perf, "stat", "-x", ",", "-e", events, "-p", str(pid), "-o", out],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            os.unlink(out)
            return None
        time.sleep(cls.ATTACH)
        if proc.poll() is not None and proc.returncode != 0:
            os.unlink(out)
            return None  # not allowed, or no such process
        return cls(proc, out)

    def stop(self) -> dict[str, int]:
        """End the span: the counts (an event perf could not count is left
        out, so the dict may be empty)."""
        import signal

        proc = self._proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(self.STOP)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            with open(self._out) as f:
                return parse_perf_csv(f.read())
        except OSError:
            return {}
        finally:
            try:
                os.unlink(self._out)
            except OSError:
                pass


def parse_perf_csv(text: str) -> dict[str, int]:
    """``perf stat -x ,`` output: event name -> count. Lines that are not a
    count (comments, ``<not counted>``, ``<not supported>``) are skipped; an
    event's ``:u``/``:k`` modifier is kept in its name."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        value, event = fields[0].strip(), fields[2].strip()
        if event and value.isdigit():
            out[event] = out.get(event, 0) + int(value)
    return out
