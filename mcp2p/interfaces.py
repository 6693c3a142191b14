"""Every extension point of mcp2p, in one place.

A plugin is an object provided by a module in the ``mcp2p.plugins``
package (or in the configured ``plugins_dir`` drop-in directory) that
provides ``IPlugin`` and one of the ``I*Plugin`` interfaces below; the ini
file selects implementations by their ``name`` (``[discovery] methods =
query, sap``), and settings for a plugin live in ``[plugin:NAME]``.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IDiscoveryMethod(Interface):
    """A running way of finding files on the network (query, SAP, ...)."""

    name = Attribute("the plugin name that made it")

    def start() -> None:
        """Open sockets and begin; called from DiscoveryService.startService."""

    def stop() -> Any:
        """Close everything; may return a Deferred that fires when done."""

    def search(pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        """A Deferred firing with a ``mcp2p.discovery.query.SearchResult``."""

    def stats() -> dict[str, Any]:
        """Counters for the status API (datagrams, drops, answers, ...)."""


class IDiscoveryMethodPlugin(Interface):
    """Makes an IDiscoveryMethod for a node."""

    name = Attribute("the name the ini file uses to select it")

    def make(node: Any) -> IDiscoveryMethod:
        """``node`` is the ``mcp2p.app.Node``: reactor, config, identity, serving."""


class ICatalog(Interface):
    """The files this node shares, by content id and by name."""

    def get(content_id: bytes) -> Any:
        """The CatalogEntry for ``content_id``, or None."""

    def match(pattern: str) -> list[Any]:
        """CatalogEntries whose name matches the fnmatch ``pattern`` (no case)."""

    def entries() -> list[Any]:
        """Every CatalogEntry."""

    def subscribe(callback: Any) -> None:
        """Call ``callback(entries)`` on the reactor thread after each change."""


class IBlockScheduler(Interface):
    """Chooses the next block to send from the receivers' demand (issue 4)."""

    def choose() -> int | None:
        """The index of the next block, or None when nobody wants anything."""


class IBlockCode(Interface):
    """Codes a piece into symbols and back (plain, RaptorQ; issue 4)."""

    name = Attribute("the name the ini file and a session use to select it")


class IKeyStore(Interface):
    """Where public keys of other nodes are kept and trusted (issue 4+)."""
