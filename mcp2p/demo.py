"""``python -m mcp2p.demo``: two nodes on this machine, one file shared and fetched.

A first run that shows something: a node never lists its own files, so a
demo needs two. This starts two real daemons (``twistd -n mcp2p``) on
loopback, each with its own state, share, downloads and API port under
``--dir`` (default ``./demo``), puts a sample file in node A's share, then
runs the ``mcp2p`` command against node B to search for it and fetch it,
and checks the copy is byte for byte the original. It prints each command
it runs, so the user can type them again.

By default both nodes keep running until Ctrl-C (then each is stopped by
its pid); with ``--once`` they are stopped after the fetch, and the exit
status says whether it worked (0) or not (1). No root, loopback only.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mcp2p.commands import MCP2P, twistd_node

SAMPLE = "mcp2p-demo-sample.bin"
SAMPLE_SIZE = 4 << 20
NODES = ("A", "B")
START_TIMEOUT = 30.0  # seconds for a node to answer on its API and finish its first scan
COMMAND_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
LOG_TAIL = 25  # lines of a node's log shown when it fails


class DemoError(Exception):
    """Something a user can act on; printed as is, exit status 1."""


def free_udp_port() -> int:
    """A UDP port free on this host, away from the defaults (7711, 9875)."""
    for _ in range(100):
        port = random.randint(20000, 60000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise DemoError("no free UDP port found in 20000-60000")


def node_ini(root: Path, query_port: int, sap_port: int) -> str:
    """One node of the demo: everything under ``root``, multicast on loopback.

    Both nodes use the same query and SAP ports (that is how they hear each
    other); control and API ports are 0 (the kernel picks; the API's is
    written to ``state/api.port``, where the ``mcp2p`` command finds it).
    """
    return (
        "[node]\n"
        f"state_dir = {root / 'state'}\n"
        "interface = 127.0.0.1\n"
        "[share]\n"
        f"paths = {root / 'share'}\n"
        "[discovery]\n"
        f"query_port = {query_port}\n"
        "ring_timeout = 0.5\n"
        "answers_wanted = 1\n"
        "[sap]\n"
        f"port = {sap_port}\n"
        "[serving]\n"
        "control_port = 0\n"
        "[fetching]\n"
        f"download_dirs = {root / 'downloads'}\n"
        "[api]\n"
        "port = 0\n"
    )


def shown(argv: list[str]) -> str:
    """A command as the user would type it: paths under the working directory made relative."""
    here = Path.cwd()
    out = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute():
            try:
                arg = str(path.relative_to(here)) or "."
            except ValueError:
                pass
        out.append(arg)
    return shlex.join(out)


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"    (no log: {e.strerror or e})"
    return "\n".join("    " + line for line in text) or "    (the log is empty)"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs an mcp2p node (a pid reused by another program does not count)."""
    try:
        return b"mcp2p" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not Path("/proc").is_dir()


class Node:
    """One daemon of the demo, in its own directory, started and stopped by pid."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.ini = root.parent / f"{name}.ini"
        self.log = root / "twistd.log"
        self.pidfile = root / "node.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def check_not_running(self) -> None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        if alive(pid):
            raise DemoError(
                f"node {self.name} of an earlier demo still runs in {self.root} (pid {pid}):"
                f" stop it (Ctrl-C in its terminal, or kill {pid}) or use another --dir"
            )

    def start(self, ini: str) -> None:
        (self.root / "share").mkdir(parents=True, exist_ok=True)
        (self.root / "downloads").mkdir(parents=True, exist_ok=True)
        self.ini.write_text(ini)
        try:
            (self.root / "state" / "api.port").unlink(missing_ok=True)  # a stale one misleads
        except OSError:
            pass
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                twistd_node(str(self.ini)),
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C reaches the demo only, which stops
                # each node once, by pid.
                start_new_session=True,
            )
        self.pidfile.write_text(f"{self.proc.pid}\n")

    def status(self) -> dict[str, Any] | None:
        from mcp2p.cli import call_daemon
        from mcp2p.config import load_config

        try:
            answer = call_daemon(load_config(self.ini), "/api/status", timeout=2)
        except SystemExit:
            return None
        return answer if isinstance(answer, dict) else None

    def wait_ready(self, files: int, deadline: float) -> dict[str, Any]:
        """Wait until the node answers on its API and shares ``files`` files."""
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise DemoError(
                    f"node {self.name} exited with status {code} while starting;"
                    f" the end of {self.log}:\n{tail(self.log)}"
                )
            state = self.status()
            if state is not None and state.get("shared_files", 0) >= files:
                return state
            if time.monotonic() > deadline:
                what = "answer on its API" if state is None else f"share {files} file(s)"
                raise DemoError(
                    f"node {self.name} did not {what} within {START_TIMEOUT:.0f}s;"
                    f" the end of {self.log}:\n{tail(self.log)}"
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT`` s; the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(
                    f"node {self.name} (pid {proc.pid}) did not stop; killing it", file=sys.stderr
                )
                proc.kill()
                proc.wait()
        self.pidfile.unlink(missing_ok=True)
        return proc.returncode


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    print(f"\n$ {shown(argv)}", flush=True)
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "MCP2P_CONFIG": ""},
        )
    except subprocess.TimeoutExpired as e:
        raise DemoError(f"{shown(argv)} did not finish within {COMMAND_TIMEOUT:.0f}s") from e
    for line in (out.stdout + out.stderr).splitlines():
        print("  " + line)
    return out


def sample_file(share: Path) -> Path:
    """The sample in A's share; an earlier demo's is kept (its hash is reused)."""
    path = share / SAMPLE
    if not (path.is_file() and path.stat().st_size == SAMPLE_SIZE):
        tmp = share / f".{SAMPLE}.tmp"
        tmp.write_bytes(os.urandom(SAMPLE_SIZE))
        os.replace(tmp, path)
    return path


def demo(directory: Path, once: bool) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    nodes = [Node(name, directory / name) for name in NODES]
    a, b = nodes
    for node in nodes:
        node.check_not_running()
    query_port = free_udp_port()
    sap_port = free_udp_port()
    while sap_port == query_port:
        sap_port = free_udp_port()
    (a.root / "share").mkdir(parents=True, exist_ok=True)
    sample = sample_file(a.root / "share")
    got = b.root / "downloads" / SAMPLE
    got.unlink(missing_ok=True)
    print(f"mcp2p demo in {directory}: nodes A and B on loopback (query port {query_port})")
    try:
        for node in nodes:
            node.start(node_ini(node.root, query_port, sap_port))
            print(f"  node {node.name}: pid {node.proc.pid if node.proc else '?'}, {node.ini}")
        deadline = time.monotonic() + START_TIMEOUT
        a.wait_ready(1, deadline)
        b.wait_ready(0, deadline)
        print(f"  node A shares {sample} ({SAMPLE_SIZE >> 20} MiB of random bytes)")

        search = [*MCP2P, "--config", str(b.ini), "search", SAMPLE]
        found = run_command(search)
        if found.returncode != 0:
            raise DemoError(
                f"node B did not find {SAMPLE} (exit status {found.returncode});"
                f" the end of {a.log}:\n{tail(a.log)}"
            )
        get = [*MCP2P, "--config", str(b.ini), "get", SAMPLE, "-o", str(got.parent)]
        fetched = run_command(get)
        if fetched.returncode != 0:
            raise DemoError(
                f"node B could not fetch {SAMPLE} (exit status {fetched.returncode});"
                f" the end of {b.log}:\n{tail(b.log)}"
            )
        if not got.is_file() or got.read_bytes() != sample.read_bytes():
            raise DemoError(f"{got} is not a copy of {sample}")
        print(f"\nOK: {got} is byte for byte {sample}.")
        if once:
            return 0

        py = [*MCP2P, "--config", str(b.ini)]
        print("\nBoth nodes keep running. Try, in another terminal:")
        print(f"  {shown([*py, 'search', '*'])}          # what the network shares")
        into = shown([str(got.parent)])
        print(f"  {shown([*py, 'get', SAMPLE])}   # into B's first download dir, {into}")
        print(f"  {shown([*py, 'status'])}")
        print(f"  cp SOMEFILE {shown([str(a.root / 'share')])}/   # node A shares it at once")
        print(f"  {shown([*MCP2P, '--config', str(a.ini), 'status'])}")
        pids = " ".join(str(n.proc.pid) for n in nodes if n.proc)
        print(f"Logs: {shown([str(a.log)])}, {shown([str(b.log)])}")
        print(f"Press Ctrl-C here to stop both nodes (pids {pids}).", flush=True)
        while True:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise DemoError(
                        f"node {node.name} exited (status {node.proc.returncode});"
                        f" the end of {node.log}:\n{tail(node.log)}"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the nodes", flush=True)
        return 0
    except DemoError as e:
        print(f"mcp2p demo: {e}", file=sys.stderr)
        return 1
    finally:
        for node in nodes:
            code = node.stop()
            if code is not None and code not in (0, -signal.SIGTERM):
                print(f"node {node.name} exited with status {code}; see {node.log}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mcp2p.demo",
        description="Start two mcp2p nodes on this machine, share a file on one, fetch it"
        " with the other.",
    )
    p.add_argument("--dir", default="demo", help="where the nodes live (default: ./demo)")
    p.add_argument(
        "--once", action="store_true", help="stop the nodes after the fetch; exit 0 if it worked"
    )
    args = p.parse_args(argv)
    # A terminal closed or a kill stops the nodes as Ctrl-C does; SIGINT is
    # set too, since a shell starts background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        return demo(Path(args.dir), args.once)
    except DemoError as e:
        print(f"mcp2p demo: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mcp2p demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
