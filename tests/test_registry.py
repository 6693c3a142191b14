"""The plugin registry: built-in names, a drop-in directory, every provider verified."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from mcp2p import plugins
from mcp2p.core.blockcode import PlainCode, RaptorQCode
from mcp2p.interfaces import (
    IBlockCode,
    IBlockCodePlugin,
    IBlockDecoder,
    IBlockEncoder,
    IDiscoveryMethod,
    IDiscoveryMethodPlugin,
)
from mcp2p.wire.layout import Layout

LAYOUT = Layout(100_000, 1 << 16, 1024)


def test_builtin_names() -> None:
    assert {"query", "sap"} <= set(plugins.names("discovery"))
    assert {"plain", "raptorq"} <= set(plugins.names("code"))
    with pytest.raises(ValueError, match="no plugin kind 'scheduler'"):
        plugins.names("scheduler")


def test_unknown_name_says_what_there_is() -> None:
    with pytest.raises(ValueError, match=r"no code plugin named 'fountain' \(have .*plain"):
        plugins.code_by_name("fountain")
    with pytest.raises(ValueError, match=r"no discovery plugin named 'mdns' \(have .*query"):
        plugins.get("discovery", "mdns")


def test_every_builtin_plugin_and_code_provides_its_interface() -> None:
    for name in plugins.names("discovery"):
        plugin = plugins.get("discovery", name)
        assert verifyObject(IPlugin, plugin) and verifyObject(IDiscoveryMethodPlugin, plugin)
    for name in ("plain", "raptorq"):
        plugin = plugins.get("code", name)
        assert verifyObject(IPlugin, plugin) and verifyObject(IBlockCodePlugin, plugin)
        code = plugins.code_by_name(name)
        assert isinstance(code, {"plain": PlainCode, "raptorq": RaptorQCode}[name])
        assert verifyObject(IBlockCode, code) and code.name == name
        assert verifyObject(IBlockEncoder, code.encoder(LAYOUT, lambda o, n: bytes(n)))
        assert verifyObject(IBlockDecoder, code.decoder(LAYOUT))


def test_a_drop_in_directory_adds_names(tmp_path: Path) -> None:
    source = Path(__file__).parent / "plugins" / "mcp2p_verbatim.py"
    (tmp_path / source.name).write_text(source.read_text())
    assert "verbatim" not in plugins.names("code")
    plugins.add_dir(tmp_path)
    try:
        assert "verbatim" in plugins.names("code")
        assert verifyObject(IBlockCode, plugins.code_by_name("verbatim"))
    finally:
        plugins.__path__.remove(str(tmp_path))
    assert "verbatim" not in plugins.names("code")


def test_every_builtin_discovery_method_provides_its_interface(tmp_path: Path) -> None:
    """Made by its plugin for a built (not started: no sockets) node, as the daemon does."""
    from twisted.internet.task import Clock

    from mcp2p.app import build
    from mcp2p.discovery.methods import QueryMethod, SAPMethod
    from tests.nodes import node_config

    methods = {"methods": ", ".join(plugins.names("discovery"))}
    config = node_config(tmp_path, 1, 2, discovery=methods)
    made = build(config, Clock()).node.discovery.methods  # type: ignore[attr-defined]
    assert set(made) == set(plugins.names("discovery"))
    for name, method in made.items():
        assert verifyObject(IDiscoveryMethod, method) and method.name == name
    assert isinstance(made["query"], QueryMethod) and isinstance(made["sap"], SAPMethod)


def test_auto_is_a_code_chosen_by_mode() -> None:
    from mcp2p.plugins import AUTO_CODE, code_by_name, names

    assert names("code")[0] == AUTO_CODE and {"plain", "raptorq"} <= set(names("code"))
    assert code_by_name("auto", "multicast").name == "raptorq"
    assert code_by_name("auto", "unicast").name == "plain"
    assert code_by_name("plain", "multicast").name == "plain"  # a named code is kept
    with pytest.raises(ValueError, match="needs a mode"):
        code_by_name("auto")
