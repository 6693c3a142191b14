"""The ``mcp2p`` command: usage errors, exit codes, content id prefixes, config --example,
and the daemon's one line for a wrong [node] interface."""

from __future__ import annotations

import configparser
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from mcp2p import cli
from mcp2p.commands import MCP2P, twistd_node
from mcp2p.config import config_from_string
from mcp2p.discovery.query import QueryNode
from mcp2p.transfer.fetch import Ambiguous, Fetch, NotFound
from mcp2p.trust.keys import node_id_of
from mcp2p.wire.query import Query, decode, prefix_matches
from mcp2p.wire.types import FileOffer
from tests.fakenet import FakeNetwork
from tests.nodes import free_udp_port, make_node_dir, node_ini
from tests.test_daemon import start_daemon, stop_daemon

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MCP2P, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MCP2P_CONFIG": ""},
    )


def quiet_ini(root: Path, **sections: dict[str, str]) -> Path:
    """A node config on a query port of its own, so no other node can answer."""
    qport, sport = free_udp_port(), free_udp_port()
    fast = {"ring_schedule": "1, 2", "ring_timeout": "0.2"}
    ini = node_ini(root, qport, sport, discovery=fast, **sections)
    root.mkdir(parents=True, exist_ok=True)
    (root / "node.ini").write_text(ini)
    return root / "node.ini"


# -- usage errors: one line, exit 2, before any network work -------------------------

USAGE_ERRORS = [
    ["get"],
    ["get", "--no-daemon"],
    ["get", "x", "--sources", "0"],
    ["get", "x", "--sources", "65"],
    ["get", "x", "--answers", "0"],
    ["get", ""],
    ["get", "   "],
    ["get", "x" * 256],
    ["get", "a\x00b"],
    ["get", "x", "--rate", "abc"],
    ["get", "x", "--rate", "100"],
    ["get", "x", "--rate", "1e400"],
    ["get", "x", "--mode", "carrier-pigeon"],
    ["get", "x", "-o", "/etc/hostname"],
    ["search", ""],
    ["search", "x", "--timeout", "-1"],
    ["search", "x", "--timeout", "nan"],
    ["search", "x", "--timeout", "soon"],
    ["search", "x", "--answers", "0"],
    ["search", "x", "--answers", "256"],
    ["search", "x", "--max-hops", "0"],
    ["search", "x", "--wait", "-1", "--method", "sap"],
    ["search", "x", "--method", "gossip"],
    ["frobnicate"],
    [],
    ["config"],
    ["config", "--example", "--state-dir", "relative/dir"],
    ["--set", "no-equals-sign", "search", "x"],
    ["--set", "discovery.ring_timeout=soon", "search", "x"],
    ["--config", "/nonexistent/mcp2p.ini", "search", "x"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=lambda a: " ".join(a) or "nothing")
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--config" not in argv:
        argv = ["--config", str(quiet_ini(tmp_path)), *argv]
    started = time.monotonic()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mcp2p: "), err
    assert "Traceback" not in err
    assert time.monotonic() - started < 2  # refused before any search ran


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    table = dict(
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"^\s+(\d+)\s+(\S.*)$", text.split("exit codes:")[1], re.M)
    )
    assert table.keys() == {0, 1, 2, 3, 4, 5, 130}
    assert "not found" in table[cli.EXIT_NOT_FOUND]
    assert "usage" in table[cli.EXIT_USAGE]
    assert "ambiguous" in table[cli.EXIT_AMBIGUOUS]
    assert "daemon" in table[cli.EXIT_DAEMON]
    assert "interrupted" in table[cli.EXIT_INTERRUPTED]


def test_a_command_reads_its_config_without_the_http_client(tmp_path: Path) -> None:
    """Every command parses the config before it talks to the daemon. The
    parse checks [keys] addresses, and once imported the key servers' HTTP
    client (twisted.web.client) for that: 0.3 s of each ``mcp2p get``, and
    in the lab, eight CLIs on two cores started their fetches up to a second
    apart, so the first CN's session began before the others had queried."""
    ini = quiet_ini(tmp_path / "cn", keys={"servers": "10.9.8.7, [fd00::1]:11371"})
    probe = (
        "import sys\n"
        "import mcp2p.cli.get\n"
        "from mcp2p.config import load_config\n"
        f"config = load_config({str(ini)!r})\n"
        "assert [str(s) for s in config.keys.servers] == ['10.9.8.7:11371', '[fd00::1]:11371']\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('twisted.web', 'OpenSSL')))\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_get_with_nothing_on_the_network_is_not_found_in_bounded_time(tmp_path: Path) -> None:
    ini = quiet_ini(tmp_path / "cn")
    started = time.monotonic()
    out = run_cli("-c", str(ini), "get", "nothing.iso", "--no-daemon", cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == ["mcp2p: no node offers a file named 'nothing.iso'"]
    # A hex target: the prefix, then the name; both said in the one line.
    out = run_cli("-c", str(ini), "get", "DeadBeef00", "--no-daemon", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    [line] = out.stderr.splitlines()
    assert "content id starts with deadbeef00" in line and "'DeadBeef00'" in line
    out = run_cli("-c", str(ini), "search", "deadbeef", "--no-daemon", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "mcp2p: not found: no node offers a file whose content id starts with deadbeef" in (
        out.stderr
    )


def test_a_short_daemonless_sap_search_says_why_it_heard_nothing(tmp_path: Path) -> None:
    ini = quiet_ini(tmp_path / "cn")
    out = run_cli(
        "-c", str(ini), "search", "*", "--method", "sap", "--no-daemon", "--wait", "0.3",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "every 1 s or more ([sap] min_interval)" in out.stderr
    assert "a running daemon keeps the directory" in out.stderr


def test_status_without_a_daemon_is_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = quiet_ini(tmp_path)
    assert cli.main(["-c", str(ini), "status"]) == cli.EXIT_DAEMON
    assert capsys.readouterr().err.startswith("mcp2p: no daemon answers")


def test_wrong_interface_in_process_is_one_line_exit_2(tmp_path: Path) -> None:
    ini = quiet_ini(tmp_path, node={"interface": "192.0.2.1"})
    for argv in (["search", "*.iso"], ["get", "a.iso"]):
        out = run_cli("-c", str(ini), *argv, "--no-daemon", cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        [line] = out.stderr.splitlines()
        assert line.startswith("mcp2p: [node] interface = 192.0.2.1 is not an address of")
        assert "127.0.0.1 (lo)" in line


# -- the daemon: a wrong interface, a taken port -----------------------------------------


def run_daemon(root: Path, ini: str) -> subprocess.CompletedProcess[str]:
    (root / "node.ini").write_text(ini)
    return subprocess.run(
        twistd_node(str(root / "node.ini")), cwd=root, capture_output=True, text=True, timeout=30
    )


def test_daemon_on_an_address_this_host_lacks_says_so_in_one_line(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no host: bind fails with EADDRNOTAVAIL, nothing is sent.
    ini = node_ini(tmp_path, free_udp_port(), free_udp_port(), node={"interface": "192.0.2.1"})
    out = run_daemon(tmp_path, ini)
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.splitlines()
    assert "[node] interface = 192.0.2.1 is not an address of this host" in line
    assert "127.0.0.1 (lo)" in line
    assert "another program" not in line and "control_port" not in line
    assert "Traceback" not in out.stdout + out.stderr


def test_daemon_on_a_taken_port_blames_the_other_program(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        ini = node_ini(
            tmp_path, free_udp_port(), free_udp_port(), serving={"control_port": str(port)}
        )
        out = run_daemon(tmp_path, ini)
    finally:
        taken.close()
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "another program has it; change [serving] control_port" in line


# -- config --example ---------------------------------------------------------------


def test_config_example_is_the_packaged_ini_with_installed_paths(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["config", "--example"]) == 0
    text = capsys.readouterr().out
    config = config_from_string(text, "/nonexistent-base")
    assert config.node.state_dir == Path("/var/lib/mcp2p")
    assert list(config.share.paths) == [Path("/var/lib/mcp2p/share")]
    assert config.fetching.download_dirs == (Path("/var/lib/mcp2p/downloads"),)
    assert config.node.plugins_dir == Path("/etc/mcp2p/plugins")
    shipped = (REPO / "etc" / "mcp2p.ini").read_text()

    def comments(t: str) -> list[str]:
        return [line for line in t.splitlines() if line.lstrip().startswith("#")]

    assert comments(text) == comments(shipped)
    # Every other option keeps the shipped value.
    a, b = configparser.ConfigParser(), configparser.ConfigParser()
    a.read_string(text)
    b.read_string(shipped)
    changed = {(s, k) for s in b.sections() for k in b[s] if a[s][k] != b[s][k]}
    assert changed == set(cli.EXAMPLE_PATHS)


def test_config_example_options_and_raw(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["config", "--example", "--state-dir", "/srv/m/state", "--share", "/srv/m/share"]
    argv += ["--download-dir", "/srv/m/dl", "--plugins-dir", "/srv/m/plugins"]
    assert cli.main(argv) == 0
    config = config_from_string(capsys.readouterr().out, "/")
    assert config.node.state_dir == Path("/srv/m/state")
    assert list(config.share.paths) == [Path("/srv/m/share")]
    assert config.fetching.download_dirs == (Path("/srv/m/dl"),)
    assert config.node.plugins_dir == Path("/srv/m/plugins")
    assert cli.main(["config", "--example", "--raw"]) == 0
    assert capsys.readouterr().out == (REPO / "etc" / "mcp2p.ini").read_text()


def test_config_example_needs_no_config_file(tmp_path: Path) -> None:
    out = run_cli("config", "--example", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "state_dir = /var/lib/mcp2p\n" in out.stdout


def test_example_rewrite_is_by_section_and_key() -> None:
    text = cli.example_config({("node", "log_level"): "debug", ("share", "paths"): "/s"})
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["node"]["log_level"] == "debug"
    assert parsed["share"]["paths"] == "/s"
    with pytest.raises(cli.CliError):
        cli.example_config({("node", "no_such_key"): "x"})


# -- resolving a content id prefix (Fetch._find on a fake network) ----------------------


def offer(content_id: str, name: str, size: int = 1000) -> FileOffer:
    import ipaddress

    return FileOffer(
        content_id=bytes.fromhex(content_id),
        name=name,
        size=size,
        block_length=1400,
        piece_length=1 << 20,
        session_id=1,
        group=ipaddress.ip_address("232.1.2.3"),
        source=ipaddress.ip_address("10.0.0.1"),
        port=7712,
        rate=10**8,
        control_port=7713,
    )


def sn(
    net: FakeNetwork,
    address: str,
    position: int,
    files: list[FileOffer],
    d: Any,
    lie: bool = False,
) -> bytes:
    """An SN offering ``files``; a liar answers a prefix query with all of them."""
    import fnmatch

    def lookup(q: Query) -> list[FileOffer]:
        if q.content_id is not None:
            return [f for f in files if f.content_id == q.content_id]
        if q.content_id_prefix is not None:
            return [f for f in files if lie or prefix_matches(q.content_id_prefix, f.content_id)]
        assert q.pattern is not None
        return [f for f in files if fnmatch.fnmatch(f.name, q.pattern)]

    public_key = os.urandom(32)
    node = QueryNode(
        net.host(address, position),
        d,
        address,
        node_id=node_id_of(public_key),
        public_key=public_key,
        lookup=lookup,
        rng=random.Random(position),
    )
    node.start()
    return node.node_id  # type: ignore[return-value]


def find(net: FakeNetwork, target: str, tmp_path: Path) -> tuple[Any, list[dict[str, Any]]]:
    config = config_from_string(
        "[discovery]\nring_schedule = 1, 2, 3\nanswers_wanted = 3\n", str(tmp_path)
    )
    cn = QueryNode(net.host("10.0.0.100", 0), config.discovery, "10.0.0.100")
    cn.start(listen_group=False)
    events: list[dict[str, Any]] = []
    reactor = net.host("10.0.0.100", 0)
    fetch = Fetch(reactor, config, None, cn.search, target, tmp_path, on_event=events.append)
    results: list[Any] = []
    defer.ensureDeferred(fetch._find()).addBoth(results.append)
    net.run(10)
    assert results, "the search did not finish"
    return results[0], events


A = "ab12cd34" + "00" * 28
B = "ab12cd34" + "ff" * 28
C = "77" * 32


def test_a_unique_prefix_resolves_to_the_whole_id(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    first = sn(net, "10.0.1.1", 0, [offer(A, "a.iso"), offer(C, "c.iso")], d)
    second = sn(net, "10.0.1.2", 1, [offer(A, "a-again.iso")], d)
    result, events = find(net, "AB12CD3400", tmp_path)
    assert result == bytes.fromhex(A)
    [found] = [e for e in events if e["event"] == "found"]
    assert found["content_id"] == A
    assert {s["node"] for s in found["sources"]} == {first.hex()[:12], second.hex()[:12]}


def test_an_ambiguous_prefix_is_refused_with_the_candidates(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    one = sn(net, "10.0.1.1", 0, [offer(A, "a.iso", 10)], d)
    two = sn(net, "10.0.1.2", 1, [offer(B, "b.iso", 20), offer(A, "a.iso", 10)], d)
    result, events = find(net, "ab12cd34", tmp_path)
    assert isinstance(result.value, Ambiguous)
    assert "ab12cd34 is ambiguous: 2 files match" in str(result.value)
    [ambiguous] = [e for e in events if e["event"] == "ambiguous"]
    assert ambiguous["candidates"] == [
        {"content_id": A, "size": 10, "name": "a.iso", "nodes": sorted([one.hex(), two.hex()])},
        {"content_id": B, "size": 20, "name": "b.iso", "nodes": [two.hex()]},
    ]
    # What the command prints: the reason, then one line per candidate; exit 3.
    show = cli.Progress(False, io.StringIO(), err := io.StringIO())
    for event in events:
        show(event)
    show({"event": "failed", "error": str(result.value)})
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("mcp2p: content id prefix ab12cd34 is ambiguous")
    assert A in lines[1] and "a.iso" in lines[1] and B in lines[2]
    assert show.exit_code() == cli.EXIT_AMBIGUOUS


def test_hex_digits_that_no_id_starts_with_are_a_name(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    sn(net, "10.0.1.1", 0, [offer(C, "cafebabe")], d)
    result, events = find(net, "cafebabe", tmp_path)
    assert result == bytes.fromhex(C)


def test_an_offer_that_does_not_match_the_prefix_is_ignored(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    sn(net, "10.0.1.1", 0, [offer(C, "c.iso")], d, lie=True)
    result, events = find(net, "ab12cd34", tmp_path)
    offered = [decode(data) for host, data, _, _ in net.sent if host == "10.0.1.1"]
    assert any(o.files for o in offered)  # type: ignore[union-attr]
    assert isinstance(result.value, NotFound)
    assert [e["event"] for e in events] == ["not_found"]
    show = cli.Progress(True, io.StringIO())
    for event in [*events, {"event": "failed", "error": str(result.value)}]:
        show(event)
    assert show.exit_code() == cli.EXIT_NOT_FOUND
    assert json.loads(show.stream.getvalue().splitlines()[-1])["event"] == "failed"


# -- end to end: the digits search prints, fetched ------------------------------------


def test_get_by_the_16_digits_search_prints(tmp_path: Path) -> None:
    qport, sport = free_udp_port(), free_udp_port()
    sn_dir = make_node_dir(tmp_path / "sn", {"debian-13.iso": 200_000, "notes.txt": b"hi\n"})
    rings = {"ring_schedule": "1, 2"}
    proc = start_daemon(sn_dir, node_ini(sn_dir, qport, sport, discovery=rings))
    try:
        cn = tmp_path / "cn"
        cn.mkdir()
        (cn / "mcp2p.ini").write_text(node_ini(cn, qport, sport, discovery=rings))
        listed = run_cli("search", "*.iso", "--no-daemon", cwd=cn)
        assert listed.returncode == 0, listed.stderr
        short = listed.stdout.splitlines()[1].split()[0]
        assert re.fullmatch(r"[0-9a-f]{16}", short)
        by_prefix = run_cli("search", short, "--json", "--no-daemon", cwd=cn)
        assert by_prefix.returncode == 0, by_prefix.stderr
        [line] = [json.loads(x) for x in by_prefix.stdout.splitlines()]
        assert line["name"] == "debian-13.iso" and line["content_id"].startswith(short)
        got = run_cli("get", short.upper(), "-o", str(cn / "got"), "--no-daemon", cwd=cn)
        assert got.returncode == 0, got.stdout + got.stderr
        assert (cn / "got" / "debian-13.iso").read_bytes() == (
            sn_dir / "share" / "debian-13.iso"
        ).read_bytes()
        # Through a daemon: the SN's own never answers itself, so not found (exit 1).
        own = run_cli("-c", str(sn_dir / "node.ini"), "get", short, cwd=cn)
        assert own.returncode == 1, own.stdout + own.stderr
        assert f"content id starts with {short}" in own.stderr
        via = run_cli("-c", str(sn_dir / "node.ini"), "search", short, "--max-hops", "1", cwd=cn)
        assert via.returncode == 1 and "Traceback" not in via.stderr
        # A CN daemon resolves the prefix for search and get (the API path).
        cn_daemon = start_daemon(cn, (cn / "mcp2p.ini").read_text())
        try:
            found = run_cli("search", short, "--json", cwd=cn)
            assert found.returncode == 0, found.stderr
            assert json.loads(found.stdout)["content_id"] == line["content_id"]
            via_dir = cn / "downloads" / "via"  # the daemon writes only in its download_dirs
            fetched = run_cli("get", short, "-o", str(via_dir), "--json", cwd=cn)
            assert fetched.returncode == 0, fetched.stdout + fetched.stderr
            events = [json.loads(x)["event"] for x in fetched.stdout.splitlines()]
            assert events[0] == "found" and events[-1] == "done"
            assert (via_dir / "debian-13.iso").stat().st_size == 200_000
            status = json.loads(run_cli("status", cwd=cn).stdout)
            assert status["discovery"]["query"]["searches"] == 2
        finally:
            stop_daemon(cn_daemon)
    finally:
        stop_daemon(proc)


@pytest.mark.parametrize("argv", [["get", "nothing.iso"], ["search", "nothing"]])
def test_ctrl_c_is_exit_130_without_a_traceback(tmp_path: Path, argv: list[str]) -> None:
    import signal

    root = tmp_path / "cn"
    ini = quiet_ini(root)
    slow = ini.read_text().replace("ring_timeout = 0.2", "ring_timeout = 5")
    ini.write_text(slow)
    proc = subprocess.Popen(
        [*MCP2P, "-c", str(ini), *argv, "--no-daemon"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (``cmd &``
        # in a script) has SIGINT ignored, and a child inherits that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(2.5)  # imported and searching: the first ring alone lasts 5 s
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "mcp2p: interrupted" in err


# -- the API's validation of prefixes -------------------------------------------------


def test_api_search_options_take_a_content_id_prefix() -> None:
    from mcp2p.api.service import BadRequest, search_options

    method, kwargs = search_options({"content_id_prefix": "ABCDEF0123"}, (1, 2))
    assert method == "query" and kwargs["content_id_prefix"] == "abcdef0123"
    assert kwargs["pattern"] is None and kwargs["content_id"] is None
    for bad in (
        {"content_id_prefix": "abcdef0"},  # 7 digits
        {"content_id_prefix": "a" * 64},  # a whole id is content_id
        {"content_id_prefix": "abcdefgh"},
        {"content_id_prefix": 12345678},
        {"content_id_prefix": "abcdef01", "pattern": "*"},
        {"content_id_prefix": "abcdef01", "method": "sap"},
        {"pattern": "a\x00b"},
        {},
    ):
        with pytest.raises(BadRequest):
            search_options(bad, (1, 2))


def test_api_fetch_options_refuse_what_no_node_could_have() -> None:
    from mcp2p.api.service import BadRequest, fetch_options

    assert fetch_options({"target": "abcdef01"}) == {}
    for bad in ({"target": ""}, {"target": "x" * 256}, {"target": "a\x00"}, {"target": 7}):
        with pytest.raises(BadRequest):
            fetch_options(bad)


# -- names are not votes; mcp2p trust (issue 14) -----------------------------------------


def test_a_name_of_several_files_is_ambiguous_with_trust_and_hops_shown(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    sn(net, "10.0.1.1", 0, [offer(A, "file.bin", 10)], d)
    for i in range(3):  # sybils: one file of their own under the same name
        sn(net, f"10.0.2.{i}", 1 + i, [offer(C, "file.bin", 20)], d)
    result, events = find(net, "file.bin", tmp_path)
    assert isinstance(result.value, Ambiguous)
    assert "name 'file.bin' is ambiguous: 2 different files" in str(result.value)
    [ambiguous] = [e for e in events if e["event"] == "ambiguous"]
    assert [c["content_id"] for c in ambiguous["candidates"]] == [C, A]  # most nodes first
    assert all(c["trust"] == "unknown" for c in ambiguous["candidates"])
    hops = [c["hops"] for c in ambiguous["candidates"]]
    assert all(isinstance(h, int) and h >= 1 for h in hops)
    show = cli.Progress(False, io.StringIO(), err := io.StringIO())
    for event in [*events, {"event": "failed", "error": str(result.value)}]:
        show(event)
    lines = err.getvalue().splitlines()
    assert "--pick" in lines[0]
    assert C in lines[1] and f"unknown, 0 trusted; {hops[0]} hops" in lines[1] and A in lines[2]
    assert show.exit_code() == cli.EXIT_AMBIGUOUS


def test_a_trusted_node_settles_a_name_and_pick_chooses(tmp_path: Path) -> None:
    from mcp2p.trust.known import KnownNodes
    from mcp2p.trust.policy import remember

    net = FakeNetwork()
    d = config_from_string("").discovery
    key = os.urandom(32)
    real = QueryNode(
        net.host("10.0.1.1", 0),
        d,
        "10.0.1.1",
        node_id=node_id_of(key),
        public_key=key,
        lookup=lambda q: [offer(A, "file.bin", 10)],
        rng=random.Random(0),
    )
    real.start()
    for i in range(3):
        sn(net, f"10.0.2.{i}", 1 + i, [offer(C, "file.bin", 20)], d)
    KnownNodes(tmp_path / "state").update(
        lambda s: remember(s, node_id_of(key), key, 1.0, origin="operator")
    )
    config = config_from_string(
        f"[node]\nstate_dir = {tmp_path / 'state'}\n"
        "[discovery]\nring_schedule = 1, 2, 3\nanswers_wanted = 4\n",
        str(tmp_path),
    )
    cn = QueryNode(net.host("10.0.0.100", 0), config.discovery, "10.0.0.100")
    cn.start(listen_group=False)
    events: list[dict[str, Any]] = []
    reactor = net.host("10.0.0.100", 0)
    fetch = Fetch(reactor, config, None, cn.search, "file.bin", tmp_path, on_event=events.append)
    results: list[Any] = []
    defer.ensureDeferred(fetch._find()).addBoth(results.append)
    net.run(10)
    assert results == [bytes.fromhex(A)]
    [found] = [e for e in events if e["event"] == "found"]
    assert [s["node"] for s in found["sources"]] == [node_id_of(key).hex()[:12]]


def test_pick_most_is_the_old_vote(tmp_path: Path) -> None:
    net = FakeNetwork()
    d = config_from_string("").discovery
    sn(net, "10.0.1.1", 0, [offer(A, "file.bin", 10)], d)
    for i in range(2):
        sn(net, f"10.0.2.{i}", 1 + i, [offer(C, "file.bin", 20)], d)
    config = config_from_string(
        "[discovery]\nring_schedule = 1, 2, 3\nanswers_wanted = 3\n", str(tmp_path)
    )
    cn = QueryNode(net.host("10.0.0.100", 0), config.discovery, "10.0.0.100")
    cn.start(listen_group=False)
    reactor = net.host("10.0.0.100", 0)
    fetch = Fetch(reactor, config, None, cn.search, "file.bin", tmp_path, pick="most")
    results: list[Any] = []
    defer.ensureDeferred(fetch._find()).addBoth(results.append)
    net.run(10)
    assert results == [bytes.fromhex(C)]
    with pytest.raises(ValueError):
        Fetch(reactor, config, None, cn.search, "file.bin", tmp_path, pick="first")


def test_pick_goes_to_the_api_and_is_checked() -> None:
    from mcp2p.api.service import BadRequest, fetch_options

    args = cli.parser().parse_args(["get", "file.bin", "--pick", "nearest"])
    assert cli.fetch_body(args) == {"target": "file.bin", "pick": "nearest"}
    assert fetch_options(cli.fetch_body(args)) == {"pick": "nearest"}
    assert "pick" not in cli.fetch_body(cli.parser().parse_args(["get", "file.bin"]))
    with pytest.raises(BadRequest):
        fetch_options({"target": "file.bin", "pick": "random"})


def test_trust_add_list_show_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = quiet_ini(tmp_path / "node")
    key = os.urandom(32)
    node = node_id_of(key).hex()
    base = ["--config", str(ini), "trust"]
    assert cli.main([*base, "list"]) == cli.EXIT_OK
    assert "0 nodes, [trust] policy = tofu" in capsys.readouterr().out
    add = [*base, "add", node, key.hex(), "--label", "mirror", "--address", "127.0.0.1:7713"]
    assert cli.main(add) == cli.EXIT_OK
    known = tmp_path / "node" / "state" / "known_nodes"
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert cli.main([*base, "list", "--json"]) == cli.EXIT_OK
    [line] = capsys.readouterr().out.splitlines()[1:]
    entry = json.loads(line)
    assert entry["node"] == node and entry["label"] == "mirror" and entry["origin"] == "operator"
    assert entry["address"] == "127.0.0.1:7713"
    assert cli.main([*base, "show", "mirror"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["key"] == key.hex()
    assert cli.main([*base, "show", node[:8]]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main([*base, "remove", "nobody"]) == cli.EXIT_NOT_FOUND
    assert cli.main([*base, "remove", node[:8]]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main([*base, "show", node]) == cli.EXIT_NOT_FOUND
    # Without NODE, show prints this node's own id and key, ready for another's trust add.
    assert cli.main([*base, "show"]) == cli.EXIT_OK
    out = capsys.readouterr()
    own = json.loads(out.out)
    assert node_id_of(bytes.fromhex(own["key"])).hex() == own["node_id"]
    assert f"mcp2p trust add {own['node_id']} {own['key']}" in out.err


def test_trust_add_refuses_what_is_not_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = quiet_ini(tmp_path / "node")
    key, other = os.urandom(32), os.urandom(32)
    base = ["--config", str(ini), "trust", "add"]
    assert cli.main([*base, node_id_of(other).hex(), key.hex()]) == cli.EXIT_USAGE
    assert f"that key's node id is {node_id_of(key).hex()}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([*base, "abcd", key.hex()])
    assert e.value.code == cli.EXIT_USAGE
    with pytest.raises(SystemExit):
        cli.main([*base, node_id_of(key).hex(), key.hex(), "--address", "example.org:80"])
    # A hostile known_nodes: reported in one line, never a traceback.
    known = tmp_path / "node" / "state" / "known_nodes"
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text("garbage\n")
    known.chmod(0o600)
    assert cli.main(["--config", str(ini), "trust", "list"]) == cli.EXIT_OK
    assert "1 lines skipped" in capsys.readouterr().err
    known.chmod(0o666)
    assert cli.main(["--config", str(ini), "trust", "list"]) == cli.EXIT_FAILED
    assert "writable by group or others" in capsys.readouterr().err


def test_hex_digits_with_a_plugin_method_are_a_pattern_of_that_method() -> None:
    """Only the query knows content id prefixes; another method gets the digits as a name."""
    assert cli.search_attempts("deadbeef00", "static") == [
        ({"method": "static", "pattern": "deadbeef00"}, None)
    ]
    attempts = cli.search_attempts("deadbeef00", "query")
    assert [a[0] for a in attempts] == [
        {"method": "query", "content_id_prefix": "deadbeef00"},
        {"method": "query", "pattern": "deadbeef00"},
    ]
