"""Our namespaces on this host: their names, and that none outlives its owner.

Every namespace the lab makes is named ``mcp2p-<6 hex>-NODE``; the 6 hex
digits are its `Network`'s id, whose state directory
(``STATE_ROOT/<id>/``) records the owner pid. A network still up is taken
down at exit and on SIGTERM (`watch`); one whose owner died anyway (SIGKILL)
is removed by `reap_orphans`, unless it was left up on purpose
(``detached.json`` in its state directory, see `mcp2p.lab.net.detached`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from typing import TYPE_CHECKING

from mcp2p.lab.net.process import pid_alive, run_tool

if TYPE_CHECKING:
    from mcp2p.lab.net.network import Network

__all__ = [
    "DETACHED_FILE",
    "NS_PREFIX",
    "OWNED_NS_RE",
    "STATE_ROOT",
    "delete_namespace",
    "forget",
    "list_namespaces",
    "reap_orphans",
    "watch",
]

NS_PREFIX = "mcp2p-"
STATE_ROOT = os.path.join(tempfile.gettempdir(), "mcp2p-lab")
DETACHED_FILE = "detached.json"  # in a network's state dir while it is detached
OWNED_NS_RE = re.compile(r"^mcp2p-([0-9a-f]{6})-")


def list_namespaces() -> list[str]:
    """Every network namespace on the host (``ip netns list``)."""
    cp = run_tool(["ip", "-j", "netns", "list"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(cp.stdout)]


def delete_namespace(ns: str) -> None:
    """Kill whatever still runs inside one of *our* namespaces, then delete it."""
    cp = run_tool(["ip", "netns", "pids", ns], check=False)
    for word in cp.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)
    run_tool(["ip", "netns", "del", ns], check=False)


def reap_orphans() -> list[str]:
    """Remove namespaces left by `Network`s whose owning process died.

    Only namespaces named ``mcp2p-<6 hex>-*`` whose state directory still
    records an owner pid that no longer exists are touched, and never those
    of a network left up with `Network.detach()`. Returns them.
    """
    reaped = []
    for ns in list_namespaces():
        m = OWNED_NS_RE.match(ns)
        if not m:
            continue
        if os.path.exists(os.path.join(STATE_ROOT, m.group(1), DETACHED_FILE)):
            continue  # left up on purpose; destroy_detached() removes it
        owner_file = os.path.join(STATE_ROOT, m.group(1), "owner")
        try:
            with open(owner_file) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        delete_namespace(ns)
        reaped.append(ns)
    for ns in reaped:
        m = OWNED_NS_RE.match(ns)
        assert m
        shutil.rmtree(os.path.join(STATE_ROOT, m.group(1)), ignore_errors=True)
    return reaped


# --------------------------------------------------------------------------
# taken down at exit and on SIGTERM

_live: set[Network] = set()  # strong refs: an unreferenced Network still gets cleaned
_hooks_lock = threading.Lock()
_hooks_installed = False


def watch(net: Network) -> None:
    """Take ``net`` down when this process exits or gets SIGTERM."""
    _install_hooks()
    _live.add(net)


def forget(net: Network) -> None:
    """No longer take ``net`` down at exit (it is down, or detached)."""
    _live.discard(net)


def _cleanup_all() -> None:
    for net in list(_live):
        with contextlib.suppress(Exception):
            net.down()


def _on_sigterm(signum: int, frame: object) -> None:
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_cleanup_all)
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _on_sigterm)
