"""kill -9 half-way through ``mcp2p get``, run it again: it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.nodes import free_udp_port, make_node_dir, node_ini
from tests.test_daemon import MCP2P, start_daemon, stop_daemon

SIZE = 20_000_000


def test_fetch_killed_half_way_resumes_and_fetches_less_than_60_percent(tmp_path: Path) -> None:
    qport, sport = free_udp_port(), free_udp_port()
    sn = make_node_dir(tmp_path / "sn", {"movie.mkv": SIZE})
    serving = {"rate": "16M", "max_rate": "16M", "data_port": str(free_udp_port())}
    proc = start_daemon(sn, node_ini(sn, qport, sport, serving=serving))
    cn = tmp_path / "cn"
    cn.mkdir()
    (cn / "mcp2p.ini").write_text(node_ini(cn, qport, sport, discovery={"answers_wanted": "1"}))
    out = tmp_path / "out"
    command = [*MCP2P, "get", "movie.mkv", "-o", str(out), "--json", "--no-daemon"]
    env = {**os.environ, "MCP2P_CONFIG": ""}
    try:
        first = subprocess.Popen(command, cwd=cn, stdout=subprocess.PIPE, text=True, env=env)
        killed_at = None
        assert first.stdout is not None
        for line in first.stdout:
            event = json.loads(line)
            if event["event"] == "progress" and event["bytes"] >= SIZE // 2:
                first.send_signal(signal.SIGKILL)
                killed_at = event["bytes"]
                break
        first.wait(timeout=30)
        assert killed_at is not None, "the fetch ended before it was half-way"
        assert not (out / "movie.mkv").exists()
        second = subprocess.run(
            command, cwd=cn, capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        stop_daemon(proc)
    assert second.returncode == 0, second.stderr
    events = [json.loads(x) for x in second.stdout.splitlines()]
    done = events[-1]
    assert done["event"] == "done"
    fetched = done["store"]["written"] * 1400
    print(f"killed at {killed_at / SIZE:.0%}, fetched {fetched / SIZE:.0%} the second time")
    assert fetched < 0.6 * SIZE, (fetched / SIZE, killed_at / SIZE)
    assert (out / "movie.mkv").read_bytes() == (sn / "share" / "movie.mkv").read_bytes()
