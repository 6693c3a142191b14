"""The daemon's log: [node] log_level filters what twistd writes, the API's
requests are not access-log lines, the first line names the version, and
discovery logs one info line per decision."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher

from mcp2p import __version__
from mcp2p.config import config_from_string
from mcp2p.discovery.query import QueryNode
from mcp2p.tap import CHATTY_NAMESPACES, Daemon, level_filter, twistd_observer
from mcp2p.wire.types import FileOffer
from tests.discovery.test_query import offer
from tests.fakenet import FakeNetwork
from tests.nodes import free_udp_port, make_node_dir, node_ini

LEVELS = ["debug", "info", "warn", "error", "critical"]


def emit_one_of_each(observer: Any, namespace: str = "mcp2p.test") -> None:
    log = Logger(namespace=namespace, observer=observer)
    for level in LEVELS:
        log.emit(LogLevel.levelWithName(level), "{name} event", name=level)


@pytest.mark.parametrize("level", LEVELS)
def test_level_filter_drops_what_is_below_the_level(level: str) -> None:
    seen: list[dict[str, Any]] = []
    emit_one_of_each(level_filter(seen.append, level))
    assert [e["name"] for e in seen] == LEVELS[LEVELS.index(level) :]


def test_twisted_per_connection_chatter_is_written_only_at_debug() -> None:
    for namespace in CHATTY_NAMESPACES:
        at_info: list[dict[str, Any]] = []
        emit_one_of_each(level_filter(at_info.append, "info"), namespace)
        assert [e["name"] for e in at_info] == ["warn", "error", "critical"]
        at_debug: list[dict[str, Any]] = []
        emit_one_of_each(level_filter(at_debug.append, "debug"), namespace)
        assert len(at_debug) == len(LEVELS)
    # Only those: other Twisted namespaces keep their info events.
    other: list[dict[str, Any]] = []
    emit_one_of_each(level_filter(other.append, "info"), "twisted.internet.base")
    assert [e["name"] for e in other][0] == "info"


def test_legacy_observer_is_wrapped() -> None:
    """twistd --syslog gives a twisted.python.log observer; it is filtered too."""
    seen: list[dict[str, Any]] = []

    def legacy(event: dict[str, Any]) -> None:  # no ILogObserver declaration
        seen.append(event)

    emit_one_of_each(level_filter(legacy, "error"))
    assert [e["name"] for e in seen] == ["error", "critical"]
    assert all("message" in e for e in seen)  # converted to a legacy event


def test_daemon_sets_the_applications_log_observer() -> None:
    """What twistd's AppLogger.start reads: the Application's ILogObserver."""
    seen: list[dict[str, Any]] = []
    application = Application("mcp2p")
    Daemon("info", lambda: seen.append).setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert observer is not None
    emit_one_of_each(observer)
    assert [e["name"] for e in seen] == ["info", "warn", "error", "critical"]
    # Without twistd's options (a test building the service), nothing is set.
    bare = Application("mcp2p")
    Daemon("info", None).setServiceParent(bare)
    assert bare.getComponent(ILogObserver) is None


def test_only_twistd_gets_the_filtered_observer() -> None:
    from twisted.application.twist._options import TwistOptions
    from twisted.scripts.twistd import ServerOptions

    assert twistd_observer(None) is None
    assert twistd_observer(TwistOptions()) is None  # twist: its own --log-level
    assert callable(twistd_observer(ServerOptions()))


# -- discovery: one info line per decision, malformed datagrams summarized


@pytest.fixture
def query_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mcp2p.discovery.query":
            events.append(event)

    observing = cast(ILogObserver, observer)
    globalLogPublisher.addObserver(observing)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observing)


def levels_of(events: list[dict[str, Any]], needle: str) -> list[str]:
    return [e["log_level"].name for e in events if needle in e["log_format"]]


def query_nodes(
    net: FakeNetwork, files: list[FileOffer], **options: str
) -> tuple[QueryNode, QueryNode]:
    d = config_from_string("", overrides=[("discovery", k, v) for k, v in options.items()])
    node_id = os.urandom(16)
    sn = QueryNode(
        net.host("10.0.1.1", 0),
        d.discovery,
        "10.0.1.1",
        node_id=node_id,
        public_key=node_id * 2,
        lookup=lambda q: files,
        rng=random.Random(1),
    )
    sn.start()
    cn = QueryNode(net.host("10.0.0.100", 0), d.discovery, "10.0.0.100")
    cn.start(listen_group=False)
    return sn, cn


def test_malformed_datagrams_warn_on_powers_of_two(query_events: list[dict[str, Any]]) -> None:
    net = FakeNetwork()
    sn, cn = query_nodes(net, [])
    for i in range(100):
        cn.unicast_ports[2].write(b"junk %d" % i, ("239.255.77.77", 7711))
    net.run(0.5)
    assert sn.counters["malformed"] == 100
    levels = levels_of(query_events, "dropped malformed datagram")
    assert len(levels) == 100
    assert levels.count("warn") == 7  # the 1st, 2nd, 4th, ..., 64th
    assert levels.count("debug") == 93


def test_a_search_heard_at_every_ring_is_answered_in_one_info_line(
    query_events: list[dict[str, Any]],
) -> None:
    net = FakeNetwork()
    sn, cn = query_nodes(net, [offer("a.iso")], answers_wanted="3", ring_schedule="1, 2, 3, 4")
    results: list[Any] = []
    cn.search(pattern="*.iso").addCallback(results.append)
    net.run(5)
    assert results and len(results[0].servers) == 1 and results[0].rings == 4
    assert levels_of(query_events, "heard from") == ["debug"] * 4
    [line] = [e for e in query_events if "offer for query" in e["log_format"]]
    assert line["log_level"] == LogLevel.info
    assert line["hops"] == 1 and line["datagrams"] == 1
    assert {e["request"] for e in query_events if "heard from" in e["log_format"]} == {
        line["request"]
    }


# -- the real daemon


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run_daemon(root: Path, *args: str, requests: int = 20) -> list[str]:
    """``twistd -n mcp2p`` in a subprocess (``python -m twisted`` is ``twist``, which
    has its own --log-level): wait for its API, GET /api/status ``requests`` times,
    stop it with SIGTERM."""
    log_path = root / "twistd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*TWISTD, "--pidfile=", "-n", "mcp2p"] + ["--config", str(root / "node.ini"), *args],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port_file = root / "state" / "api.port"
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("daemon did not start:\n" + log_path.read_text())
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/api/status"
        token = (root / "state" / "api.token").read_text().strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        for _ in range(requests):
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    lines = log_path.read_text().splitlines()
    assert code in (0, -signal.SIGTERM), "\n".join(lines)
    return lines


ACCESS_LINE = re.compile(r'"GET /api/status HTTP/1\.[01]" 200|Python-urllib')


@pytest.fixture
def node(tmp_path: Path) -> Path:
    root = make_node_dir(tmp_path / "node", {"a.txt": b"hello\n"})
    (root / "node.ini").write_text(node_ini(root, free_udp_port(), free_udp_port()))
    return root


def test_daemon_log_at_info(node: Path) -> None:
    lines = run_daemon(node)
    assert re.search(
        rf"\[mcp2p\.tap#info\] mcp2p {re.escape(__version__)} starting: node id [0-9a-f]{{32}}, "
        rf"config {re.escape(str(node / 'node.ini'))}$",
        lines[0],
    ), lines[0]
    assert not [line for line in lines if ACCESS_LINE.search(line)]
    assert not [line for line in lines if "#debug]" in line]
    assert any("local API on http://127.0.0.1:" in line for line in lines)
    assert "Server Shut Down" in lines[-1]
    assert "Traceback" not in "\n".join(lines)


def test_daemon_log_at_debug_from_the_command_line(node: Path) -> None:
    """--log-level overrides the file ([node] log_level = error here)."""
    ini = node / "node.ini"
    ini.write_text(ini.read_text().replace("[node]\n", "[node]\nlog_level = error\n", 1))
    lines = run_daemon(node, "--log-level", "debug")
    assert "mcp2p " + __version__ + " starting" in lines[0]
    requests = [line for line in lines if "[mcp2p.api.service#debug] API GET '/api/status'" in line]
    assert len(requests) == 20
    assert not [line for line in lines if ACCESS_LINE.search(line)]


def test_daemon_log_at_error_is_quiet(node: Path) -> None:
    ini = node / "node.ini"
    ini.write_text(ini.read_text().replace("[node]\n", "[node]\nlog_level = error\n", 1))
    lines = run_daemon(node, requests=3)
    assert lines == [], lines
