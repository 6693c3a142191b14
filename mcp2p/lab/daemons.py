"""Real mcp2p daemons on lab hosts: ``twistd -n mcp2p`` with a generated ini.

    d = Daemon(host, root / host.name, discovery={"methods": "query,sap"})
    d.start()                              # waits until its API answers
    d.api("POST", "/api/fetch", {"target": "data.bin", "out_dir": "/tmp/x"})
    d.status()["counters"]                 # GET /api/status
    d.cli("search", "*.bin", "--json")     # the mcp2p CLI, in the namespace
    d.stop()

The API listens on 127.0.0.1 inside the host's namespace, so every call
runs a short Python in that namespace (`Host.run`), as a user on that host
would. Each daemon's ini, state, share and download directories and its
log live under ``root``. Processes are started and killed by pid through
the host (`Node.popen` / `Node.kill`).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp2p.commands import MCP2P, twistd_node
from mcp2p.lab.net import Host, LabError
from mcp2p.lab.progs import command

__all__ = ["Daemon", "ini_text", "node_sections", "start_all"]

START_TIMEOUT = 60.0


def ini_text(sections: dict[str, dict[str, str]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()) + "\n"
        for name, options in sections.items()
    )


def node_sections(
    interface: str, root: Path, **overrides: dict[str, str]
) -> dict[str, dict[str, str]]:
    """A complete ini for a node on ``interface`` (its address) whose files
    live under ``root`` (state, share, downloads); ``overrides`` maps a
    section to options that replace or add to the defaults."""
    sections: dict[str, dict[str, str]] = {
        "node": {"state_dir": str(root / "state"), "interface": interface},
        "share": {"paths": str(root / "share")},
        "discovery": {"methods": "query"},
        "serving": {},
        "fetching": {"download_dirs": str(root / "downloads")},
        "api": {"port": "0"},
    }
    for name, options in overrides.items():
        sections.setdefault(name, {}).update({k: str(v) for k, v in options.items()})
    return {k: v for k, v in sections.items() if v}


class Daemon:
    """One ``twistd -n mcp2p`` on ``host``; ``sections`` as for `node_sections`."""

    def __init__(self, host: Host, root: Path, **sections: dict[str, str]) -> None:
        self.host = host
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "share").mkdir(exist_ok=True)
        self.ini = self.root / "node.ini"
        self.ini.write_text(ini_text(node_sections(host.addr(), self.root, **sections)))
        self.log_path = self.root / "twistd.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.port: int | None = None

    @property
    def share_dir(self) -> Path:
        return self.root / "share"

    def start(self, ready: str | None = None, prefix: list[str] | None = None) -> None:
        """Start and wait until the API port is written (and ``ready``, a text
        of the log such as ``"sharing 3 files"``, appears)."""
        port_file = self.root / "state" / "api.port"
        port_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(
                [*(prefix or []), *twistd_node(str(self.ini))],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or (ready and ready not in self.log()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"daemon on {self.host.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.host.kill(self.proc, timeout=10)
            self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One HTTP call to the daemon's local API, from inside its namespace."""
        if self.port is None or not self.running():
            raise LabError(f"daemon on {self.host.name} is not running:\n{self.log()[-2000:]}")
        cp = self.host.run(
            command(
                "api_call",
                str(self.root / "state"),
                str(self.port),
                method,
                path,
                json.dumps(body) if body is not None else "",
                str(timeout),
            ),
            capture_output=True,
            text=True,
            timeout=timeout + 15,
        )
        try:
            reply = json.loads(cp.stdout) if cp.stdout.strip() else None
        except ValueError:
            reply = None
        if cp.returncode != 0:
            raise LabError(f"{method} {path} on {self.host.name}: {cp.stdout or cp.stderr}"[:2000])
        return reply

    def status(self) -> Any:
        return self.api("GET", "/api/status")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``mcp2p --config INI ARGS`` in the host's namespace (it talks to
        this daemon through the API, as a user's CLI would)."""
        return self.host.run(
            [*MCP2P, "--config", str(self.ini), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def start_all(
    daemons: Sequence[tuple[Daemon, str | None]],
    *,
    prefix: list[str] | None = None,
    timeout: float = START_TIMEOUT + 60,
) -> None:
    """Start daemons at once (their imports and indexing overlap on the
    cores), each waiting for its API and its ``ready`` log text; if any
    fails, or they are not all up after ``timeout`` seconds, stop them all
    and raise a LabError naming what failed."""
    errors: list[str] = []

    def one(daemon: Daemon, ready: str | None) -> None:
        try:
            daemon.start(ready=ready, prefix=prefix)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(str(e))

    threads = [threading.Thread(target=one, args=pair) for pair in daemons]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors or any(t.is_alive() for t in threads):
        for daemon, _ in daemons:
            daemon.stop()
        raise LabError("daemons did not start: " + (" | ".join(errors) or "timeout"))
