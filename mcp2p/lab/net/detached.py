"""Networks left up after their process exits, and taking them down later.

``python -m mcp2p.lab topo ... up`` builds a network and exits: `Network.detach`
calls `write_state`, which records in ``STATE_ROOT/<id>/detached.json`` the
prefix, the namespaces, every node's interfaces and addresses, and each
running process's pid with its start time from ``/proc/PID/stat``.
`destroy_detached(state_file)`, in any later process, kills those pids that
are still the processes we started and deletes the namespaces;
`reap_orphans` leaves such a network alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from typing import TYPE_CHECKING, Any

from mcp2p.lab.net.namespaces import (
    DETACHED_FILE,
    OWNED_NS_RE,
    STATE_ROOT,
    delete_namespace,
    list_namespaces,
)
from mcp2p.lab.net.process import KILL_TIMEOUT, LabError, is_zombie, process_start_time

if TYPE_CHECKING:
    from mcp2p.lab.net.network import Network

__all__ = ["destroy_detached", "detached_networks", "write_state"]


def write_state(net: Network, extra: dict[str, Any] | None = None) -> str:
    """Write ``net``'s detached state file (plus ``extra``, which must be
    JSON) atomically; returns its path."""
    processes = []
    for node in net.nodes.values():
        for proc in node.processes:
            start = process_start_time(proc.pid)
            if proc.poll() is None and start is not None:
                args = proc.args if isinstance(proc.args, list) else [proc.args]
                processes.append({
                    "node": node.name, "pid": proc.pid, "start": start,
                    "argv": [str(a) for a in args],
                })  # fmt: skip
    namespaces = sorted({n.ns for n in net.nodes.values()} | set(net.namespaces()))
    state: dict[str, Any] = {
        **(extra or {}),
        "id": net.id,
        "prefix": net.prefix,
        "owner": os.getpid(),
        "detached_at": time.time(),
        "namespaces": namespaces,
        "nodes": {
            n.name: {
                "kind": n.kind,
                "ns": n.ns,
                "interfaces": {
                    i.name: {
                        "ip4": str(i.ip4) if i.ip4 else None,
                        "ip6": str(i.ip6) if i.ip6 else None,
                        "peer": f"{i.peer.node.name}:{i.peer.name}",
                    }
                    for i in n.interfaces.values()
                },
            }
            for n in net.nodes.values()
        },
        "processes": processes,
    }
    path = os.path.join(net.state_dir, DETACHED_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)
    return path


def detached_networks() -> list[str]:
    """State files of every network currently left up by `Network.detach`."""
    try:
        ids = sorted(os.listdir(STATE_ROOT))
    except OSError:
        return []
    files = (os.path.join(STATE_ROOT, i, DETACHED_FILE) for i in ids)
    return [f for f in files if os.path.exists(f)]


def destroy_detached(state_file: str, timeout: float = KILL_TIMEOUT) -> list[str]:
    """Take down a network left up by `Network.detach`, from any process.

    Each recorded process is signalled only while ``/proc/PID/stat`` still
    shows the start time recorded when it was detached (so a reused pid is
    never hit): SIGTERM, then SIGKILL after ``timeout``. Then the network's
    namespaces (recorded, or named with its prefix) are deleted, and its
    state directory. Returns the namespaces deleted. Idempotent.
    """
    try:
        with open(state_file) as f:
            state = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise LabError(f"{state_file}: unreadable state file: {e}") from e
    prefix = str(state.get("prefix", ""))
    if not OWNED_NS_RE.match(prefix):
        raise LabError(f"{state_file}: not a state file of ours (prefix {prefix!r})")

    def ours(p: dict[str, Any]) -> bool:
        return process_start_time(int(p["pid"])) == p.get("start")

    procs = [p for p in state.get("processes", []) if ours(p)]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(p["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if ours(p) and not is_zombie(int(p["pid"]))]
        if procs:
            time.sleep(0.05)
    for p in procs:
        if ours(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p["pid"]), signal.SIGKILL)
    namespaces = {ns for ns in state.get("namespaces", []) if ns.startswith(prefix)}
    namespaces.update(ns for ns in list_namespaces() if ns.startswith(prefix))
    existing = set(list_namespaces())
    for ns in sorted(namespaces):
        with contextlib.suppress(Exception):
            delete_namespace(ns)
    state_dir = os.path.dirname(os.path.abspath(state_file))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_file)
    if os.path.dirname(state_dir) == os.path.abspath(STATE_ROOT):
        shutil.rmtree(state_dir, ignore_errors=True)
    return sorted(namespaces & existing)
