"""The data path: each authenticated packet (or batch of them: the CN's
per-packet path) written to the store or decoded, and pieces that fail
their hash blamed on the SNs that sent them and wanted again.

These methods are on ``Fetch`` itself, the top layer, so ``_deliver_many``
still asks whether ``_deliver`` is ``Fetch._deliver`` (an instance or
subclass that replaces it gets every packet through its own).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from mcp2p.core import fetchplan
from mcp2p.transfer.fetch.common import FetchError, Source, _log
from mcp2p.transfer.fetch.transfer import Transfer
from mcp2p.transfer.receiver import Items
from mcp2p.transfer.store import StoreError

_piece_of = itemgetter(0)


class Fetch(Transfer):
    """One download (see the package's docstring), built in layers (see ``state``)."""

    def _deliver(self, source: Source, piece: int, symbol: int, payload: bytes) -> None:
        if source.state != "active":
            return  # the rest of a dropped SN's burst: not trusted any more
        layout = self.layout
        try:
            if self.per_block:
                index = layout.block_index(piece, symbol)
                event = self.store.write_block(index, payload)
                events = [event] if event is not None else []
            else:
                events = []
                for offset, data in self.decoder.add(piece, symbol, payload):
                    events.append(self.store.write_piece(offset // layout.piece_length, data))
        except ValueError:
            self.counters["bad_blocks"] += 1
            return
        except StoreError as e:  # a full disk: the fetch ends, in one line
            self._fail(FetchError(str(e)))
            return
        source.blocks += 1
        source.last_progress = self.reactor.seconds()
        self.contributors.setdefault(piece, set()).add(source.name)
        self._settle(events)

    def _deliver_many(self, source: Source, items: Items) -> None:
        """The authenticated packets of one batch (payloads are views into the
        reader's buffer, valid during this call): with the plain code, written
        to the store together; with a code whose decoder takes a batch
        (``add_many``: RaptorQ), decoded together; else one by one through
        ``_deliver``."""
        if source.state != "active":
            return
        ours = type(self)._deliver is Fetch._deliver and "_deliver" not in self.__dict__
        if not ours or not (self.per_block or hasattr(self.decoder, "add_many")):
            deliver = self._deliver
            for piece, symbol, payload in items:  # a block code keeps its symbols: copied
                deliver(source, piece, symbol, bytes(payload))
                if source.state != "active":
                    return
            return
        try:
            if self.per_block:
                events, bad = self.store.write_blocks(items)
            else:  # a block code that takes a batch (RaptorQ): whole pieces out
                events, bad = self._decode_many(items)
        except StoreError as e:  # a full disk: the fetch ends, in one line
            self._fail(FetchError(str(e)))
            return
        if bad:
            self.counters["bad_blocks"] += bad
        if len(items) > bad:
            source.blocks += len(items) - bad
            source.last_progress = self.reactor.seconds()
            name = source.name
            contributors = self.contributors
            for piece in set(map(_piece_of, items)):
                senders = contributors.get(piece)
                if senders is None:
                    contributors[piece] = {name}
                else:
                    senders.add(name)
        if events:  # the file completes only with a piece verified
            self._settle(events)

    def _settle(self, events: list[Any]) -> None:
        """The store's piece events: a verified piece counted, a bad one wanted
        again (``_bad_piece``); the fetch done once the file is complete."""
        for event in events:
            if event is None:
                continue
            if event.ok:
                self.counters["pieces"] += 1
                self.contributors.pop(event.piece, None)
            else:
                self._bad_piece(event.piece)
        if self.store.complete and not self.done.called:
            self.done.callback(None)

    def _decode_many(self, items: Items) -> tuple[list[Any], int]:
        """The decoder's pieces of a batch, verified and written by the store:
        (piece events, symbols the decoder refused)."""
        decoder, store = self.decoder, self.store
        rejected = decoder.rejected
        length = self.layout.piece_length
        events = []
        for offset, data in decoder.add_many(items):
            try:
                event = store.write_piece(offset // length, data)
            except ValueError:
                rejected -= 1  # counted as a bad symbol below
                continue
            if event is not None:
                events.append(event)
        return events, decoder.rejected - rejected

    def _bad_piece(self, piece: int) -> None:
        """A piece failed its hash: every SN that sent blocks of it is counted
        against; one that reaches the limit is dropped, and the unverified
        pieces it touched are thrown away. Those pieces are wanted again.

        An SN that alone sent the piece is proven wrong: it is dropped at
        once, so nothing more of it is written. A piece shared with an SN
        already refused is blamed on that one only."""
        self.counters["bad_pieces"] += 1
        names = self.contributors.pop(piece, set())
        _log.warn(
            "piece {piece} failed verification (from {nodes})",
            piece=piece,
            nodes=", ".join(sorted(names)) or "?",
        )
        again = {piece: names}
        refused = {s.name for s in self.sources if s.refused}
        blamed = fetchplan.blamed(names, refused)
        for source in self.sources:
            if source.name not in blamed or source.state == "dropped":
                continue
            source.bad_pieces += 1
            if fetchplan.refuses(len(blamed), source.bad_pieces, self.config.fetching.bad_pieces):
                source.refused = True
                self._drop(
                    source,
                    f"{source.bad_pieces} pieces failed verification"
                    if source.bad_pieces > 1
                    else f"piece {piece} failed verification",
                )
                for other, senders in list(self.contributors.items()):
                    if source.name in senders:
                        again[other] = self.contributors.pop(other)
        for p, senders in again.items():
            self._rewant(p, senders)
        self._redistribute()

    def _rewant(self, piece: int, senders: set[str]) -> None:
        """Throw away what we hold of ``piece`` and ask one SN for all of it, one
        that did not send it if there is one, so a liar's blocks are never mixed
        into an honest SN's retry. The SN that gets it may have sent those units
        already (it thinks they are done): the request adds them again."""
        self._forget(piece)
        active = self._active()
        target = fetchplan.rewant_target([(s.name, s.bad_pieces) for s in active], senders)
        if target is None:
            return
        units = fetchplan.piece_units(self.layout, piece, self.per_block)
        for s in active:
            s.share.difference_update(units)
        active[target].share.update(units)
        self._send_wanted(active[target], units, replace=False)

    def _forget(self, piece: int) -> None:
        self.store.forget(piece)
        if hasattr(self.decoder, "forget"):
            self.decoder.forget(piece)
