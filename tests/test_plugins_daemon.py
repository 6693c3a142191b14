"""Drop-in plugins in real daemons: a block code and a discovery method found
only in ``[node] plugins_dir`` (tests/plugins), enabled by name in the config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mcp2p.commands import TWISTD
from tests.nodes import free_udp_port, make_node_dir, node_ini
from tests.test_daemon import mcp2p, start_daemon, stop_daemon

PLUGINS = Path(__file__).parent / "plugins"
ELSEWHERE = {
    "node_id": "99" * 16,
    "public_key": "98" * 32,
    "address": "127.0.0.9",
    "files": [
        {
            "content_id": "ab" * 32,
            "name": "archive-2019.tar",
            "size": 5_000_000,
            "block_length": 1024,
            "piece_length": 65536,
            "session_id": 12,
            "group": "239.255.7.7",
            "source": None,
            "port": 4100,
            "rate": 2_000_000,
            "control_port": 4101,
        }
    ],
}


def test_a_daemon_fetches_with_a_drop_in_code_and_searches_with_a_drop_in_method(
    tmp_path: Path,
) -> None:
    qport, sport = free_udp_port(), free_udp_port()
    drop_ins = {"plugins_dir": str(PLUGINS)}
    code = {"code": "verbatim"}
    sn = make_node_dir(tmp_path / "sn", {"film.mkv": 200_000})
    sn_proc = start_daemon(sn, node_ini(sn, qport, sport, node=drop_ins, fetching=code))
    try:
        cn = tmp_path / "cn"
        cn.mkdir()
        (cn / "offers.json").write_text(json.dumps({"servers": [ELSEWHERE]}))
        ini = node_ini(
            cn,
            qport,
            sport,
            node=drop_ins,
            fetching=code,
            discovery={"methods": "query, static", "answers_wanted": "1"},
        )
        cn_proc = start_daemon(cn, ini + "[plugin:static]\nfile = offers.json\n")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return mcp2p("--config", str(cn / "node.ini"), *args, cwd=cn)

        try:
            got = cli("get", "film.mkv", "--json")
            assert got.returncode == 0, got.stdout + got.stderr
            assert json.loads(got.stdout.splitlines()[-1])["event"] == "done"
            fetched = (cn / "downloads" / "film.mkv").read_bytes()
            assert fetched == (sn / "share" / "film.mkv").read_bytes()

            found = cli("search", "ARCHIVE*", "--method", "static", "--json")
            assert found.returncode == 0, found.stderr
            [line] = [json.loads(x) for x in found.stdout.splitlines()]
            assert line["name"] == "archive-2019.tar" and line["content_id"] == "ab" * 32
            assert line["address"] == "127.0.0.9" and line["distance"] is None
            none = cli("search", "film*", "--method", "static")
            assert none.returncode == 1  # the SN's file is not in the offers file
            state = json.loads(cli("status").stdout)
            assert state["discovery"]["static"]["searches"] == 2
            assert state["discovery"]["static"]["servers"] == 1
            assert state["discovery"]["query"]["searches"] >= 1  # the get searched by query
        finally:
            stop_daemon(cn_proc)
    finally:
        stop_daemon(sn_proc)
    sn_log = (sn / "twistd.log").read_text()
    # The SN's session encoded with the drop-in's code (its encoder says so).
    assert "verbatim code encoding 200000 bytes" in sn_log, sn_log
    cn_log = (cn / "twistd.log").read_text()
    assert "static offers from" in cn_log and "1 servers" in cn_log
    assert "Traceback" not in sn_log + cn_log


@pytest.mark.parametrize(
    "sections,needle",
    [
        ({"fetching": {"code": "verbatim"}}, "[fetching] code = 'verbatim': expected one of"),
        (
            {"node": {"plugins_dir": str(PLUGINS)}, "discovery": {"methods": "query, static"}},
            "discovery method static needs [plugin:static] file = PATH",
        ),
        (
            {
                "node": {"plugins_dir": str(PLUGINS)},
                "discovery": {"methods": "static"},
                "plugin:static": {"file": "missing.json"},
            },
            "[plugin:static] file ",
        ),
    ],
)
def test_a_plugin_the_config_cannot_have_stops_the_daemon_with_one_line(
    tmp_path: Path, sections: dict[str, dict[str, str]], needle: str
) -> None:
    """Without plugins_dir a drop-in's name is unknown; a drop-in's own setting
    missing or wrong is the same one line."""
    port = free_udp_port()
    (tmp_path / "bad.ini").write_text(node_ini(tmp_path, port, port, **sections))
    out = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "mcp2p", "--config", str(tmp_path / "bad.ini")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(tmp_path / "bad.ini") in lines[0] and needle in lines[0]
