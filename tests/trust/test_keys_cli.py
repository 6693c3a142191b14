"""``mcp2p keys publish|lookup|revoke`` against a real key-server daemon on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mcp2p.commands import MCP2P, twistd_node
from mcp2p.trust.keys import load_or_create


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def key_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "ks"
    root.mkdir()
    port = free_port()
    (root / "node.ini").write_text(
        "[node]\nstate_dir = state\n[share]\npaths = share\n"
        f"[discovery]\nmethods = query\nquery_port = {free_port(socket.SOCK_DGRAM)}\n"
        "[serving]\ncontrol_port = 0\n[api]\nport = 0\n"
        f"[keys]\nserve = yes\nlisten = 127.0.0.1:{port}\n"
    )
    log = open(root / "twistd.log", "wb")
    proc = subprocess.Popen(
        twistd_node(str(root / "node.ini")), cwd=root, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while b"key server on" not in (root / "twistd.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("key server did not start:\n" + (root / "twistd.log").read_text())
        time.sleep(0.05)
    yield port, load_or_create(root / "state").node_id.hex()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def mcp2p(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MCP2P, "--config", str(cwd / "node.ini"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MCP2P_CONFIG": ""},
    )


def test_publish_lookup_revoke(tmp_path: Path, key_server: tuple[int, str]) -> None:
    port, server_id = key_server
    me = tmp_path / "me"
    me.mkdir()
    (me / "node.ini").write_text(f"[node]\nstate_dir = state\n[keys]\nservers = 127.0.0.1:{port}\n")
    cp = mcp2p(me, "keys", "publish", "--label", "me")
    assert cp.returncode == 1 and "no node key" in cp.stderr  # never made behind one's back
    node_id = load_or_create(me / "state").node_id.hex()

    cp = mcp2p(me, "keys", "publish", "--label", "me", "--days", "30")
    assert cp.returncode == 0, cp.stderr
    assert f"stored record of {node_id}" in cp.stdout
    cp = mcp2p(me, "keys", "lookup", node_id)
    assert cp.returncode == 0, cp.stderr
    shown = json.loads(cp.stdout)
    assert shown["state"] == "valid" and shown["labels"] == ["me"]
    assert shown["server"] == server_id
    assert shown["expires"] - shown["issued"] == 30 * 86400

    cp = mcp2p(me, "keys", "lookup", "ab" * 16)
    assert cp.returncode == 1 and "no record" in cp.stdout
    cp = mcp2p(me, "keys", "lookup", "xyz")
    assert cp.returncode == 2

    cp = mcp2p(me, "keys", "revoke")
    assert cp.returncode == 0, cp.stderr
    cp = mcp2p(me, "keys", "lookup", node_id)
    assert cp.returncode == 1 and json.loads(cp.stdout)["state"] == "revoked"
    time.sleep(1.1)  # a later issued: refused for the revocation, not as a replay
    cp = mcp2p(me, "keys", "publish")
    assert cp.returncode == 5 and "revoked" in cp.stderr


def test_no_server_configured_or_answering(tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text("[node]\nstate_dir = state\n")
    cp = mcp2p(tmp_path, "keys", "lookup", "ab" * 16)
    assert cp.returncode == 2 and "[keys] servers" in cp.stderr
    (tmp_path / "node.ini").write_text(
        f"[node]\nstate_dir = state\n[keys]\nservers = 127.0.0.1:{free_port()}\n"
    )
    cp = mcp2p(tmp_path, "keys", "lookup", "ab" * 16)
    assert cp.returncode == 5 and "no key server answered" in cp.stderr
