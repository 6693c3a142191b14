"""Every extension point of mcp2p, in one place.

A plugin is an object provided by a module in the ``mcp2p.plugins``
package (or in the configured ``plugins_dir`` drop-in directory) that
provides ``IPlugin`` and one of the ``I*Plugin`` interfaces below; the ini
file selects implementations by their ``name`` (``[discovery] methods =
query, sap``), and settings for a plugin live in ``[plugin:NAME]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from zope.interface import Attribute, Interface


class Clock(Protocol):
    """The part of a reactor a service needs only to tell the time (the
    reactor, or ``twisted.internet.task.Clock`` in tests)."""

    def seconds(self) -> float: ...


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

    def make(host: Any) -> IDiscoveryMethod:
        """``host`` is a ``mcp2p.discovery.methods.DiscoveryHost`` (the daemon's
        ``mcp2p.app.PluginHost``): reactor, config, identity, serving."""


class ICatalog(Interface):
    """The files this node shares, by content id and by name."""

    def get(content_id: bytes) -> Any:
        """The CatalogEntry for ``content_id``, or None."""

    def match(pattern: str) -> list[Any]:
        """CatalogEntries whose name matches the fnmatch ``pattern`` (no case)."""

    def match_prefix(prefix: str) -> list[Any]:
        """CatalogEntries whose content id starts with the lowercase hex ``prefix``."""

    def entries() -> list[Any]:
        """Every CatalogEntry."""

    def subscribe(callback: Any) -> None:
        """Call ``callback(entries)`` on the reactor thread after each change."""


class IBlockScheduler(Interface):
    """Chooses the next unit to send from the subscribers' demand (issue 4).

    What ``mcp2p.transfer.session.Session`` uses of it, all of it. A *need*
    is how many more useful symbols of a unit a subscriber lacks (see
    IBlockCode); needs are given as a ``RangeSet`` of units (need 1 each) or a
    dict ``{unit: need}``. Chosen by ``[serving] scheduler`` among the
    policies of ``mcp2p.core.scheduler`` (not a plugin: they share one
    weighted-tree implementation).
    """

    units = Attribute("how many units it chooses among (0 .. units - 1)")
    total_weight = Attribute("the sum of every subscriber's needs: 0 means nothing to send")
    subscribers = Attribute("the subscribers it knows, a set-like view")

    def choose() -> int | None:
        """The next unit (not yet counted as sent), or None when nobody needs anything."""

    def take(count: int) -> list[int]:
        """Up to ``count`` units to send now, each counted as sent; fewer when
        nothing more is needed."""

    def take_run(count: int) -> tuple[int, int] | None:
        """``(unit, n)``: up to ``count`` symbols of one unit to send now, counted
        as sent (codes whose units need many symbols); None when nothing is needed."""

    def set_need(subscriber: Any, need: Any) -> None:
        """Replace everything ``subscriber`` needs (a new subscriber joins)."""

    def add_needs(subscriber: Any, units: Any) -> None:
        """``subscriber`` needs one more symbol of each unit of ``units`` (it lost them)."""

    def need_of(subscriber: Any) -> Any:
        """What ``subscriber`` still needs, in the form ``set_need`` takes; KeyError if unknown."""

    def needed_by(subscriber: Any) -> Any:
        """The units ``subscriber`` needs at least once, as a RangeSet; KeyError if unknown."""

    def remove(subscriber: Any) -> None:
        """Forget ``subscriber`` and its needs; KeyError if unknown."""

    def keep_credit(subscriber: Any, units: Any) -> None:
        """Forget what a run sent ``subscriber`` beyond its need (a fountain
        code's credit, taken off its later losses) for units outside ``units``."""

    def drop_credit(subscriber: Any, units: Any) -> None:
        """Forget ``subscriber``'s credit for ``units`` (it needs them in full again)."""


class IBlockCode(Interface):
    """Maps between the scheduler's units and the symbols packets carry (issue 4).

    The sender's scheduler works on *units*, each with a per-receiver
    *need* count: a receiver that lacks a unit needs that many more useful
    symbols of it. A packet carries ``(piece, symbol, payload)`` with
    ``piece`` and ``symbol`` u32 and at most ``block_length`` payload bytes.
    "plain" sends each block as it is (unit = global block index, need 1);
    "raptorq" sends RFC 6330 symbols of a piece (unit = piece, need = the
    piece's source symbols; a receiver that lost any needs as many repair
    symbols plus a small overhead), any enough of which rebuild the piece.
    A code holds no per-file state: it makes an encoder and decoders for a
    ``mcp2p.wire.layout.Layout``, and may raise ``ValueError`` for a layout
    it cannot code.

    Optional: ``needs(layout)``, every unit's ``need`` at once (a sequence
    of ``units(layout)`` ints): a session asks for it once instead of
    calling ``need`` per unit (RaptorQ: 4096 calls, 20 ms, for a 4 GiB file).
    """

    name = Attribute("the name the ini file and a session use to select it")

    def units(layout: Any) -> int:
        """How many units the scheduler chooses among for this layout."""

    def need(layout: Any, unit: int) -> int:
        """Useful symbols a receiver needs to get ``unit`` from scratch."""

    def repair_overhead(layout: Any, unit: int) -> int:
        """Symbols a receiver that lost some of ``unit``'s needs beyond the ones
        it lost (once per unit: a fountain code's decoding margin; 0 for codes
        where each symbol is a part of the file)."""

    def encoder(layout: Any, read: Callable[[int, int], bytes]) -> IBlockEncoder:
        """The sender's side; ``read(offset, length)`` returns file bytes."""

    def decoder(layout: Any) -> IBlockDecoder:
        """The receiver's side, one per file being fetched."""


class IBlockEncoder(Interface):
    """Makes the symbols of one file (one per session).

    Optional, used where an encoder has them: ``symbols(unit, first,
    count)``, a run of a unit's symbols at once; ``job(unit)`` and
    ``put_batch(unit, first, symbols)``, symbols made in an encode worker
    process (`mcp2p.transfer.encoding`) and handed back (RaptorQ).
    """

    def symbol(unit: int, n: int) -> tuple[int, int, bytes]:
        """``(piece, symbol, payload)`` of the ``n``-th (0, 1, 2, ...) symbol sent of ``unit``.

        Successive ``n`` of a unit give symbols that are each useful to
        every receiver still needing the unit (plain: the same block
        again). Raises ``ValueError`` for a unit outside the layout.
        """


class IBlockDecoder(Interface):
    """Turns received symbols back into file writes (one per fetched file).

    It never raises on what came off the network: a symbol that cannot be
    right (unknown piece, symbol id out of range, wrong payload length) is
    dropped and counted in ``rejected``.
    """

    rejected = Attribute("symbols dropped as impossible (garbage, forged, other layout)")
    pending_bytes = Attribute("bytes of received symbols held until their piece decodes")

    def add(piece: int, symbol: int, payload: bytes) -> list[tuple[int, bytes]]:
        """File writes ``(offset, data)`` that became ready with this symbol.

        plain: the block, at once, the first time it arrives; raptorq: the
        whole piece once enough symbols decode it, then nothing more for
        that piece until ``forget``.
        """

    def unit_of(piece: int, symbol: int) -> int:
        """The unit a symbol belongs to; ``ValueError`` if it belongs to none."""

    def forget(piece: int) -> None:
        """Drop all state of ``piece`` (its hash failed: it is fetched again)."""


class IBlockCodePlugin(Interface):
    """Makes an IBlockCode; a session names its code by the plugin's name."""

    name = Attribute("the name the ini file and a session use to select it")

    def make() -> IBlockCode:
        """A code with its default parameters."""
