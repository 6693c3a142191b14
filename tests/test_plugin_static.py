"""The drop-in discovery method ``static`` (tests/plugins/mcp2p_static.py), loaded
from its directory through the registry as a daemon loads it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from mcp2p import plugins
from mcp2p.discovery.query import server_json
from mcp2p.interfaces import IDiscoveryMethod, IDiscoveryMethodPlugin

PLUGINS = Path(__file__).parent / "plugins"
CID = bytes(range(32))
OFFER = {
    "content_id": CID.hex(),
    "name": "Debian-13.iso",
    "size": 300_000,
    "block_length": 1024,
    "piece_length": 65536,
    "session_id": 7,
    "group": "239.255.1.2",
    "source": None,
    "port": 4001,
    "rate": 1_000_000,
    "control_port": 4002,
}


def server(node: int, *files: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": bytes([node] * 16).hex(),
        "public_key": bytes([node] * 32).hex(),
        "address": f"127.0.0.{node}",
        "files": list(files),
    }


@pytest.fixture
def static() -> Iterator[ModuleType]:
    """The drop-in's module, found through [node] plugins_dir; the directory
    leaves the search path afterwards (other tests count the names)."""
    plugins.add_dir(PLUGINS)
    try:
        plugin = plugins.get("discovery", "static")
        yield sys.modules[type(plugin).__module__]
    finally:
        plugins.__path__.remove(str(PLUGINS))


def node(tmp_path: Path, settings: dict[str, str] | None, node_id: bytes = b"\xee" * 16) -> Any:
    config = SimpleNamespace(
        base_dir=tmp_path, plugins={} if settings is None else {"static": settings}
    )
    return SimpleNamespace(config=config, identity=SimpleNamespace(node_id=node_id))


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def found(method: Any, **kw: Any) -> list[tuple[str, list[str]]]:
    results: list[Any] = []
    method.search(kw.get("pattern"), kw.get("content_id")).addCallback(results.append)
    [result] = results
    return [(s.address, sorted(f.name for f in s.files.values())) for s in result.servers]


def test_plugin_and_method_provide_their_interfaces(static: ModuleType, tmp_path: Path) -> None:
    plugin = plugins.get("discovery", "static")
    assert verifyObject(IPlugin, plugin) and verifyObject(IDiscoveryMethodPlugin, plugin)
    write(tmp_path / "offers.json", {"servers": []})
    method = plugin.make(node(tmp_path, {"file": "offers.json"}))
    assert verifyObject(IDiscoveryMethod, method) and method.name == "static"
    method.start()
    assert method.stop() is None


def test_searches_by_pattern_and_content_id(static: ModuleType, tmp_path: Path) -> None:
    other = {**OFFER, "content_id": (b"\x01" * 32).hex(), "name": "readme.txt"}
    doc = {"servers": [server(1, OFFER, other), server(2, other), server(0xEE, OFFER)]}
    write(tmp_path / "offers.json", doc)
    method = plugins.get("discovery", "static").make(node(tmp_path, {"file": "offers.json"}))
    assert found(method, pattern="debian*") == [("127.0.0.1", ["Debian-13.iso"])]  # no case
    assert found(method, pattern="*") == [
        ("127.0.0.1", ["Debian-13.iso", "readme.txt"]),
        ("127.0.0.2", ["readme.txt"]),
    ]  # 0xEE.. is this node: left out
    assert found(method, content_id=b"\x01" * 32) == [
        ("127.0.0.1", ["readme.txt"]),
        ("127.0.0.2", ["readme.txt"]),
    ]
    assert found(method, pattern="*.mkv") == []
    assert method.stats() == {
        "searches": 4,
        "answers": 5,
        "reloads": 0,
        "reload_failed": 0,
        "servers": 3,
    }


def test_the_file_is_what_a_search_answers(static: ModuleType) -> None:
    """An /api/search answer, saved, is an offers file: the same servers come back."""
    [record] = static.parse_offers(json.dumps({"servers": [server(3, OFFER)]}).encode())
    saved = {"servers": [server_json(record)]}
    [again] = static.parse_offers(json.dumps(saved).encode())
    assert server_json(again) == server_json(record)
    assert server_json(record)["files"] == [OFFER]


def test_a_changed_file_is_read_again_and_a_bad_one_kept_out(
    static: ModuleType, tmp_path: Path
) -> None:
    path = write(tmp_path / "offers.json", {"servers": [server(1, OFFER)]})
    method = static.StaticMethod(path)
    write(path, {"servers": [server(1, OFFER), server(2, OFFER)]})
    os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
    assert len(found(method, pattern="*")) == 2
    path.write_text('{"servers": [')
    os.utime(path, ns=(2, 2))
    assert len(found(method, pattern="*")) == 2  # the last good version answers
    path.unlink()
    assert len(found(method, pattern="*")) == 2
    assert method.stats()["reloads"] == 1 and method.stats()["reload_failed"] == 2


@pytest.mark.parametrize(
    "doc,needle",
    [
        ("[]", 'a "servers" list'),
        ('{"servers": {}}', 'a "servers" list'),
        ("{", "not JSON"),
        ("[" * 100_000, "not JSON"),
        (json.dumps({"servers": [1]}), "servers[0]: must be a JSON object"),
        (json.dumps({"servers": [{**server(1), "node_id": "ab"}]}), "node_id must be 32 hex"),
        (json.dumps({"servers": [{**server(1), "address": "nowhere"}]}), "servers[0]:"),
        (json.dumps({"servers": [server(1, {**OFFER, "size": True})]}), "size must be an int"),
        (json.dumps({"servers": [server(1, {**OFFER, "group": "10.0.0.1"})]}), "not a multicast"),
        (json.dumps({"servers": [server(1, {**OFFER, "name": "a/b"})]}), "files[0]: name"),
        (json.dumps({"servers": [server(1, {**OFFER, "name": "\ud800"})]}), "files[0]:"),
        (json.dumps({"servers": [server(1, {"name": "x"})]}), "files[0]: a file has no size"),
    ],
)
def test_a_bad_file_is_one_clear_error(
    static: ModuleType, tmp_path: Path, doc: str, needle: str
) -> None:
    (tmp_path / "offers.json").write_text(doc)
    with pytest.raises(ValueError, match=r"\[plugin:static\] file .*offers.json: ") as e:
        plugins.get("discovery", "static").make(node(tmp_path, {"file": "offers.json"}))
    assert needle in str(e.value)


def test_a_missing_setting_or_file_is_one_clear_error(static: ModuleType, tmp_path: Path) -> None:
    plugin = plugins.get("discovery", "static")
    with pytest.raises(ValueError, match=r"needs \[plugin:static\] file = PATH"):
        plugin.make(node(tmp_path, None))
    with pytest.raises(ValueError, match="No such file"):
        plugin.make(node(tmp_path, {"file": "gone.json"}))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    where=st.sampled_from(["server", "file"]),
    key=st.sampled_from(sorted({*OFFER, *server(1)})),
    value=JSON,
)
def test_any_value_in_any_field_parses_or_is_a_value_error(
    where: str, key: str, value: Any
) -> None:
    plugins.add_dir(PLUGINS)
    try:
        static = sys.modules[type(plugins.get("discovery", "static")).__module__]
    finally:
        plugins.__path__.remove(str(PLUGINS))
    one = server(1, {**OFFER, key: value} if where == "file" else OFFER)
    if where == "server":
        one[key] = value
    try:
        static.parse_offers(json.dumps({"servers": [one]}).encode())
    except ValueError:
        pass
