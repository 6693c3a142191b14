"""Running the tools and processes the lab needs, and stopping them by pid.

Every command (``ip``, ``tc``, ``nft``, ...) runs with a timeout and fails
with a `LabError` that quotes it; a process we started is stopped by pid
(SIGTERM, then SIGKILL after a timeout), never by name. A pid with its
start time (`process_start_time`) names one process even after the pid is
reused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "CMD_TIMEOUT",
    "KILL_TIMEOUT",
    "LabError",
    "is_zombie",
    "missing_requirements",
    "pid_alive",
    "process_start_time",
    "run_tool",
    "stop_process",
]

KILL_TIMEOUT = 2.0
CMD_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A command that builds or changes the emulated network failed."""


def run_tool(
    args: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = CMD_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run one command, output captured as text; `LabError` on a timeout or
    (with ``check``) a non-zero exit."""
    try:
        cp = subprocess.run(
            list(args), capture_output=True, text=True, input=input, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip()
        raise LabError(f"{' '.join(args)} failed ({cp.returncode}): {detail}")
    return cp


def stop_process(proc: subprocess.Popen[Any], timeout: float = KILL_TIMEOUT) -> None:
    """Stop one process we started, by pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def missing_requirements(tools: Iterable[str] = ("ip", "smcrouted")) -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks after boot),
    or None if there is no such process. With the pid it names one process:
    a pid reused later has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command may contain spaces
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie, or gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True
