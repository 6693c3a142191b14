"""Block codes: what a data packet carries for a unit the scheduler chose.

Two codes, selected per session by plugin name (``mcp2p.plugins.code_by_name``;
``mcp2p.plugins.codes`` offers them as plugins):

- ``PlainCode`` ("plain"): a unit is a block (``Layout.blocks`` units) and
  its only symbol is the block itself, ``(piece, block in piece, bytes)``.
  A receiver needs each block once; the carousel pays the coupon-collector
  tail for the last missing blocks.
- ``RaptorQCode`` ("raptorq", RFC 6330 through the ``raptorq`` package): a
  unit is a piece (``Layout.pieces`` units) cut into K source symbols of
  ``symbol_size`` bytes; the symbol id on the wire is the ESI. Symbols
  ``n < K`` are the source symbols, read straight from the file (no
  encoding, and a receiver that gets them all just joins them); later ones
  are repair symbols, each new to every receiver still needing the piece.
  Any K of them rebuild the piece with probability about 99.5%, K + 2 with
  about 1 - 1e-6 (``mcp2p.lab.bench_codes`` measures it), so a receiver's
  need is K, and one that lost x symbols needs x + ``overhead`` more
  (``repair_overhead``): a piece nobody lost a symbol of is never encoded.

RaptorQ needs its symbol size to be a multiple of 8: the symbol size is
``block_length`` rounded down to one, so K = ceil(piece size / symbol size)
may exceed ``Layout.blocks_in_piece``. A piece must fit one RFC 6330
source block of one sub-block (at most 56403 symbols and 8 MiB) and the
symbol size a u16. Every symbol but the last source symbol of a piece is
exactly the symbol size (that one is as short as the piece's end).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import raptorq
from zope.interface import implementer

from mcp2p.core.speedups import compiled
from mcp2p.interfaces import IBlockCode, IBlockDecoder, IBlockEncoder
from mcp2p.wire.layout import Layout

Read = Callable[[int, int], bytes]

MAX_SOURCE_SYMBOLS = 56403  # RFC 6330 K'max: larger pieces need several source blocks
# Past about 10 MiB the package splits a piece into sub-blocks (RFC 6330 4.4.1.2), and a
# source symbol is no longer a slice of the piece: 8 MiB keeps every symbol size below that.
MAX_PIECE_BYTES = 8 << 20
MAX_ESI = (1 << 24) - 1  # the encoding symbol id is 24 bits in RFC 6330's payload id
_ALIGN = 8  # the raptorq package rounds the symbol size down to a multiple of this
# What a payload may be. A tuple, not ``bytes | bytearray | memoryview``: that builds a
# union object each time it is evaluated, which costs more than the check on a hot path.
_BUFFERS = (bytes, bytearray, memoryview)
# A run of source symbols copied into their piece's buffer, compiled where
# mcp2p._speedups was built (the loop in add_many is its pure-Python twin).
_copy_run = compiled("copy_run")
# A batch made ahead (``RaptorQEncoder.job``) is the first K / 4 repair
# symbols (at least 64): 25% loss at every receiver; making them is a
# fifth of the cost of a whole batch (1.25 K), and the encoding the rest.
PREFETCH_MIN = 64
PREFETCH_SHARE = 4
SPARE_BUFFERS = 2  # piece buffers a RaptorQ decoder keeps for reuse (one being read, one next)


def _batch(k: int) -> int:
    """Repair symbols an encoder makes at once for a piece of ``k`` source symbols."""
    return max(64, k + k // 4)


def _read_exact(read: Read, offset: int, length: int) -> bytes:
    data = read(offset, length)
    if len(data) != length:
        raise ValueError(f"read({offset}, {length}) returned {len(data)} bytes: file changed?")
    return bytes(data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- plain -----------------------------------------------------------------------------


@implementer(IBlockCode)
class PlainCode:
    """Each block sent as it is: unit = global block index, need 1."""

    name = "plain"

    def units(self, layout: Layout) -> int:
        return layout.blocks

    def need(self, layout: Layout, unit: int) -> int:
        layout.locate(unit)
        return 1

    def needs(self, layout: Layout) -> list[int]:
        """Every unit's need at once (all 1)."""
        return [1] * layout.blocks

    def repair_overhead(self, layout: Layout, unit: int) -> int:
        return 0

    def encoder(self, layout: Layout, read: Read) -> PlainEncoder:
        return PlainEncoder(layout, read)

    def decoder(self, layout: Layout) -> PlainDecoder:
        return PlainDecoder(layout)


@implementer(IBlockEncoder)
class PlainEncoder:
    def __init__(self, layout: Layout, read: Read) -> None:
        self.layout = layout
        self._read = read

    def symbol(self, unit: int, n: int) -> tuple[int, int, bytes]:
        """The block ``unit``, whatever ``n``: each copy helps whoever lacks it."""
        piece, block = self.layout.locate(unit)
        offset, length = self.layout.block_span(unit)
        return piece, block, _read_exact(self._read, offset, length)


@implementer(IBlockDecoder)
class PlainDecoder:
    """Hands each block back once (until its piece is forgotten); one byte per block."""

    pending_bytes = 0

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._have = bytearray(layout.blocks)
        self.rejected = 0
        self.redundant = 0  # blocks that arrived again

    def add(self, piece: int, symbol: int, payload: bytes) -> list[tuple[int, bytes]]:
        layout = self.layout
        if not (
            _is_int(piece)
            and _is_int(symbol)
            and isinstance(payload, _BUFFERS)
            and 0 <= piece < layout.pieces
            and 0 <= symbol < layout.blocks_in_piece(piece)
        ):
            self.rejected += 1
            return []
        index = piece * layout.blocks_per_piece + symbol
        offset, length = layout.block_span(index)
        if len(payload) != length:
            self.rejected += 1
            return []
        if self._have[index]:
            self.redundant += 1
            return []
        self._have[index] = 1
        return [(offset, bytes(payload))]

    def unit_of(self, piece: int, symbol: int) -> int:
        return self.layout.block_index(piece, symbol)

    def forget(self, piece: int) -> None:
        blocks = self.layout.piece_blocks(piece)
        self._have[blocks.start : blocks.stop] = bytes(len(blocks))


# -- RaptorQ ---------------------------------------------------------------------------


@implementer(IBlockCode)
class RaptorQCode:
    """RFC 6330 per piece: unit = piece, need = K source symbols + ``overhead``.

    ``repair_ratio``: distinct repair symbols per piece, as a multiple of K
    (at least 64); after K + repair symbols the ESIs start again at 0, which
    only a receiver that lost most of a whole cycle notices (it gets
    symbols it already holds). ``cache_pieces``: how many pieces' worth of
    memory an encoder keeps encoded (least recently used go first; a batch
    made by another process, ``put_batch``, holds no encoder and costs less).
    """

    name = "raptorq"

    def __init__(self, overhead: int = 2, repair_ratio: float = 3.0, cache_pieces: int = 8) -> None:
        if overhead < 0 or repair_ratio <= 0 or cache_pieces < 1:
            raise ValueError("overhead >= 0, repair_ratio > 0 and cache_pieces >= 1 are needed")
        self.overhead = overhead
        self.repair_ratio = repair_ratio
        self.cache_pieces = cache_pieces

    def symbol_size(self, layout: Layout) -> int:
        """Bytes per symbol: ``block_length`` rounded down to a multiple of 8."""
        if layout.block_length > 0xFFFF:
            raise ValueError(f"raptorq: block length {layout.block_length} exceeds 65535")
        size = layout.block_length - layout.block_length % _ALIGN
        if size < _ALIGN:
            raise ValueError(f"raptorq: block length {layout.block_length} is below {_ALIGN}")
        if -(-layout.piece_size(0) // size) > MAX_SOURCE_SYMBOLS:
            raise ValueError(
                f"raptorq: a piece of {layout.piece_length} bytes is more than "
                f"{MAX_SOURCE_SYMBOLS} symbols of {size} bytes; use longer blocks or shorter pieces"
            )
        if layout.piece_size(0) > MAX_PIECE_BYTES:
            raise ValueError(
                f"raptorq: a piece of {layout.piece_length} bytes is over {MAX_PIECE_BYTES} bytes"
                " (a receiver holds a piece in memory until it decodes); use shorter pieces"
            )
        return size

    def source_symbols(self, layout: Layout, piece: int) -> int:
        """K of ``piece``: 1 for an empty file's only (empty) piece."""
        return max(1, -(-layout.piece_size(piece) // self.symbol_size(layout)))

    def units(self, layout: Layout) -> int:
        self.symbol_size(layout)
        return layout.pieces

    def need(self, layout: Layout, unit: int) -> int:
        """K: a receiver that loses none of the source symbols joins them, and
        the sender encodes nothing (``repair_overhead`` for one that lost some)."""
        return self.source_symbols(layout, unit)

    def needs(self, layout: Layout) -> list[int]:
        """Every piece's K at once: all but the last piece have the same size."""
        last = layout.pieces - 1
        return [self.need(layout, 0)] * last + [self.need(layout, last)]

    def repair_overhead(self, layout: Layout, unit: int) -> int:
        """``overhead``: a receiver that lost x symbols of a piece decodes from
        its K - x and x + overhead repair symbols (K alone fail 0.5% of the time)."""
        return self.overhead if layout.piece_size(unit) else 0

    def encoder(self, layout: Layout, read: Read) -> RaptorQEncoder:
        return RaptorQEncoder(self, layout, read)

    def decoder(self, layout: Layout) -> RaptorQDecoder:
        return RaptorQDecoder(self, layout)


class _Encoded:
    """A piece's raptorq encoder and a window of its repair symbols."""

    __slots__ = ("encoder", "first", "repair", "estimate")

    def __init__(self, encoder: Any, estimate: int) -> None:
        self.encoder = encoder
        self.first = 0  # repair index (ESI - K) of repair[0]
        self.repair: list[bytes] = []
        self.estimate = estimate  # bytes the encoder holds: source and intermediate symbols


@implementer(IBlockEncoder)
class RaptorQEncoder:
    """Source symbols from the file; repair symbols from a small LRU of encoded pieces.

    Encoding a piece (reading it and solving for its intermediate symbols)
    costs about 5 ms per MiB. Repair symbols then come in batches of 1.25 K
    (the package makes them from ESI K on: about 2 microseconds a symbol,
    so the batch starting at repair index i costs 2 us x (K + i + 1.25 K)).
    A sender that sends repair symbols of random pieces of a file with more
    than ``cache_pieces`` pieces re-encodes a piece for nearly every one:
    send runs of symbols of a piece instead.
    """

    def __init__(self, code: RaptorQCode, layout: Layout, read: Read) -> None:
        self.layout = layout
        self.symbol_size = code.symbol_size(layout)
        self._code = code
        self._read = read
        self._cache: OrderedDict[int, _Encoded] = OrderedDict()
        self.encodes = 0  # pieces encoded here (cache misses)
        self.batches = 0  # batches of repair symbols made here
        self.prefetched = 0  # batches made elsewhere and taken (``put_batch``)

    @property
    def cached_bytes(self) -> int:
        """About how much memory the cached pieces hold."""
        return sum(e.estimate + len(e.repair) * self.symbol_size for e in self._cache.values())

    @property
    def cached_pieces(self) -> list[int]:
        return list(self._cache)

    def repair_symbols(self, piece: int) -> int:
        """Distinct repair symbols of ``piece`` before its ESIs start again at 0."""
        k = self._code.source_symbols(self.layout, piece)
        return min(max(64, int(k * self._code.repair_ratio)), MAX_ESI + 1 - k)

    def symbol(self, unit: int, n: int) -> tuple[int, int, bytes]:
        if not _is_int(n) or n < 0:
            raise ValueError(f"symbol number {n!r} is not a non-negative integer")
        layout, t = self.layout, self.symbol_size
        size = layout.piece_size(unit)
        if size == 0:
            return unit, 0, b""
        k = -(-size // t)
        esi = n % (k + self.repair_symbols(unit))
        if esi < k:
            start = esi * t
            offset = layout.piece_offset(unit) + start
            return unit, esi, _read_exact(self._read, offset, min(t, size - start))
        return unit, esi, self._repair(unit, k, esi - k)

    def symbols(self, unit: int, first: int, count: int) -> list[tuple[int, int, bytes]]:
        """``symbol(unit, n)`` for n in first .. first + count - 1, the source
        symbols among them read with one pread."""
        if not _is_int(first) or first < 0 or not _is_int(count) or count < 0:
            raise ValueError(f"symbols {first!r} + {count!r} are not non-negative integers")
        layout, t = self.layout, self.symbol_size
        size = layout.piece_size(unit)
        if size == 0:
            return [(unit, 0, b"")] * count
        k = -(-size // t)
        cycle = k + self.repair_symbols(unit)
        out: list[tuple[int, int, bytes]] = []
        n, stop = first, first + count
        while n < stop:
            esi = n % cycle
            if esi < k:
                last = min(k, esi + stop - n)  # source ESIs esi .. last - 1
                start = esi * t
                data = _read_exact(
                    self._read, layout.piece_offset(unit) + start, min(last * t, size) - start
                )
                view = memoryview(data)
                out += [
                    (unit, e, bytes(view[(e - esi) * t : (e - esi + 1) * t]))
                    for e in range(esi, last)
                ]
                n += last - esi
            else:
                out.append((unit, esi, self._repair(unit, k, esi - k)))
                n += 1
        return out

    def _evict(self, keep: int | None = None) -> None:
        """Drop the least recently used pieces past ``cache_pieces`` pieces'
        worth of memory (an encoder and a whole batch each): a batch made
        elsewhere (K/4 symbols, no encoder) takes a small part of that."""
        t = self.symbol_size
        k = -(-self.layout.piece_size(0) // t)
        budget = self._code.cache_pieces * ((2 * k + 64) * t + _batch(k) * t)
        cache = self._cache
        held = self.cached_bytes
        while held > budget and len(cache) > 1:
            piece = next(iter(cache))
            if piece == keep:
                cache.move_to_end(piece)
                continue
            entry = cache.pop(piece)
            held -= entry.estimate + len(entry.repair) * t

    def job(self, piece: int) -> tuple[int, int, int, int, int, int] | None:
        """What another process needs to make ``piece``'s first batch of repair
        symbols from the file (`mcp2p.transfer.encodeworker`): ``(K, symbol
        size, first, stop, the piece's offset, its length)``; None when the
        piece is cached here already or has no repair symbols. ``put_batch``
        takes the result."""
        size = self.layout.piece_size(piece)
        if size == 0 or piece in self._cache:
            return None
        k = -(-size // self.symbol_size)
        stop = min(self.repair_symbols(piece), max(PREFETCH_MIN, k // PREFETCH_SHARE))
        return k, self.symbol_size, 0, stop, self.layout.piece_offset(piece), size

    def put_batch(self, piece: int, first: int, symbols: bytes) -> bool:
        """Repair symbols ``first``, ``first + 1``, ... of ``piece``, joined, made
        elsewhere (``job``): cached as if encoded here, unless the piece is
        cached already. A batch past them is encoded here. False if not taken."""
        t = self.symbol_size
        if piece in self._cache or not symbols or len(symbols) % t:
            return False
        size = self.layout.piece_size(piece)
        if not size or not 0 <= first or first + len(symbols) // t > self.repair_symbols(piece):
            return False
        entry = _Encoded(None, 0)  # no encoder: the next batch makes one (``_repair``)
        entry.first = first
        entry.repair = [symbols[i : i + t] for i in range(0, len(symbols), t)]
        self._cache[piece] = entry
        self.prefetched += 1
        self._evict()
        return True

    def _repair(self, piece: int, k: int, index: int) -> bytes:
        entry = self._cache.get(piece)
        if entry is None:
            # Cached once its piece is read: a piece that cannot be read (the
            # file cut short) leaves no entry behind, so it stays a worker's job.
            entry = _Encoded(None, 0)
        else:
            self._cache.move_to_end(piece)
        if not entry.first <= index < entry.first + len(entry.repair):
            if entry.encoder is None:  # a batch made elsewhere, or none yet
                data = _read_exact(
                    self._read, self.layout.piece_offset(piece), self.layout.piece_size(piece)
                )
                entry.encoder = raptorq.Encoder.with_defaults(data, self.symbol_size)
                entry.estimate = (2 * k + 64) * self.symbol_size
                self._cache[piece] = entry  # at the end; in place if it was there
                self.encodes += 1
            # The package only makes repair symbols from ESI K on: make up to
            # index + a batch, keep the batch. A batch of 1.25 K covers a
            # receiver that got no source symbol, losing 20% of the rest.
            stop = min(self.repair_symbols(piece), index + _batch(k))
            entry.repair = []  # free the old batch before making the next
            packets = entry.encoder.get_encoded_packets(stop)
            if len(packets) != k + stop:
                raise RuntimeError(f"raptorq made {len(packets)} packets, not {k} + {stop}")
            entry.repair = [p[4:] for p in packets[k + index :]]
            entry.first = index
            self.batches += 1
            self._evict(keep=piece)
        return entry.repair[index - entry.first]


class _Receiving:
    """A piece being received: its source symbols in place in a piece-sized
    buffer (so a piece whose source symbols all came is that buffer, with no
    decoding), its repair symbols by ESI, and a raptorq decoder once K
    symbols are there but some source symbols are missing. ``view`` is the
    buffer's memoryview: symbols are copied in through it (a slice
    assignment to a bytearray copies a view's bytes twice)."""

    __slots__ = ("size", "k", "buf", "view", "have", "sources", "repair", "decoder")

    def __init__(self, size: int, k: int, buf: bytearray) -> None:
        self.size = size
        self.k = k
        self.buf = buf  # exactly size bytes
        self.view = memoryview(buf)
        self.have = bytearray(k)  # 1 for each source symbol in buf
        self.sources = 0
        self.repair: dict[int, bytes] = {}  # ESI -> repair symbol
        self.decoder: Any = None


@implementer(IBlockDecoder)
class RaptorQDecoder:
    """Holds each piece's symbols until K of them arrived, then decodes it.

    Source symbols are copied once, into the piece's buffer at their place;
    a piece with every source symbol is that buffer. Otherwise, at K symbols
    the piece is handed to a raptorq decoder, which tries again with every
    further symbol (RFC 6330 fails at K with probability about 0.5%).
    ``add_many`` takes a batch (payloads may be views, valid during the
    call), as the receiver hands them on, and hands a piece that needed no
    decoding back as a view of its buffer, valid until the next call (the
    buffer is then reused: no piece-sized copy, no fresh pages per piece);
    ``add`` hands back copies.

    Memory: each piece in progress holds a piece-sized buffer from its first
    symbol, so at most ``max_pending`` bytes of buffers are made (the fetch
    sets its [fetching] max_in_flight): a symbol that would start one more
    piece beyond that is refused (``window_full``), whatever an SN sends. An
    honest session sends a piece's symbols together, so few are in progress.
    """

    max_pending = 256 << 20

    def __init__(self, code: RaptorQCode, layout: Layout) -> None:
        self.layout = layout
        self.symbol_size = code.symbol_size(layout)
        self._code = code
        self._pieces: dict[int, _Receiving] = {}
        self._npieces = layout.pieces
        self._done: set[int] = set()
        self.rejected = 0
        self.redundant = 0  # duplicates, and symbols of pieces already decoded
        self.decoded = 0  # pieces handed back
        self.window_full = 0  # symbols refused: a new piece past max_pending
        self._buffers = 0  # bytes of the buffers of the pieces in progress
        self._spare: list[bytearray] = []  # piece_length buffers to reuse
        self._lent: list[_Receiving] = []  # pieces handed back as views by the last call

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the pieces in progress: their buffers and repair symbols."""
        repair = sum(len(r.repair) for r in self._pieces.values())
        return self._buffers + repair * self.symbol_size

    def add(self, piece: int, symbol: int, payload: bytes) -> list[tuple[int, bytes]]:
        writes = [
            (offset, bytes(data)) for offset, data in self.add_many([(piece, symbol, payload)])
        ]
        self._reclaim()
        return writes

    def add_many(self, items: Any) -> list[tuple[int, bytes | memoryview]]:
        """File writes ``(offset, piece)`` that became ready with the symbols
        ``(piece, ESI, payload)`` of ``items``; a piece may be a view valid
        until the next call (see the class)."""
        if self._lent:
            self._reclaim()
        layout, t = self.layout, self.symbol_size
        pieces, done = self._pieces, self._done
        npieces = self._npieces
        buffers = _BUFFERS
        out: list[tuple[int, bytes | memoryview]] = []
        # The run: a piece in progress, not decoding, whose source symbols but the
        # last (full size) and short of completing it take the first branch alone.
        current: int | None = None
        last = need = 0  # its last source symbol's ESI; symbols that make it complete
        run: Any = None  # its state, have and view (None while there is no run)
        have: Any = None
        view: Any = None
        copy_run = _copy_run
        if type(items) is not list:
            items = list(items)
        i, n = 0, len(items)
        while i < n:
            if current is not None and copy_run is not None:
                # The run's symbols, compiled (as the first branch below takes them).
                i, taken, redundant = copy_run(
                    items, i, current, last, need - 1 - run.sources, have, view, t
                )
                run.sources += taken
                self.redundant += redundant
                if i >= n:
                    break
            piece, symbol, payload = items[i]
            i += 1
            if (
                piece == current
                and type(piece) is int
                and type(symbol) is int
                and 0 <= symbol < last
                and isinstance(payload, buffers)
                and len(payload) == t
                and run.sources + 1 < need
            ):
                if have[symbol]:
                    self.redundant += 1
                    continue
                have[symbol] = 1
                view[symbol * t : symbol * t + t] = payload
                run.sources += 1
                continue
            current = None
            if type(piece) is not int:
                self.rejected += 1
                continue
            state = pieces.get(piece)
            if state is None:
                if not 0 <= piece < npieces:
                    self.rejected += 1
                    continue
                if piece in done:
                    self.redundant += 1
                    continue
                size = layout.piece_size(piece)
                k = max(1, -(-size // t))
            else:
                size, k = state.size, state.k
            if type(symbol) is not int or not 0 <= symbol <= MAX_ESI:
                self.rejected += 1
                continue
            if symbol < k:
                expected = t if symbol < k - 1 else size - symbol * t
            else:
                expected = t if size else -1  # the empty piece has no repair symbols
            if not isinstance(payload, buffers) or len(payload) != expected:
                self.rejected += 1
                continue
            if state is None:
                if self._buffers + size > self.max_pending:
                    self.window_full += 1
                    continue
                state = pieces[piece] = _Receiving(size, k, self._new_buffer(size))
                self._buffers += size
            data: bytes | memoryview | None = None
            if symbol < k:
                if state.have[symbol]:
                    self.redundant += 1
                    continue
                state.have[symbol] = 1
                state.sources += 1
                state.view[symbol * t : symbol * t + expected] = payload
                if state.sources == k:
                    data = state.view  # the buffer itself, lent until the next call
                    self._lent.append(state)
                elif state.decoder is not None:
                    data = self._decode(piece, state, symbol, payload)
            else:
                if symbol in state.repair:
                    self.redundant += 1
                    continue
                sym = bytes(payload)
                state.repair[symbol] = sym
                if state.decoder is not None:
                    data = self._decode(piece, state, symbol, sym)
            if data is None and state.decoder is None and state.sources + len(state.repair) >= k:
                data = self._start_decoding(piece, state)
            if data is None:
                if state.decoder is None:
                    current, last, need = piece, k - 1, k - len(state.repair)
                    run, have, view = state, state.have, state.view
                continue
            self._finish(piece, state)
            self.decoded += 1
            out.append((layout.piece_offset(piece), data))
        return out

    def _new_buffer(self, size: int) -> bytearray:
        if self._spare and size == self.layout.piece_length:
            return self._spare.pop()
        return bytearray(size)

    def _recycle(self, state: _Receiving) -> None:
        """A piece no longer in progress: its view released (a lent piece used
        after the next call fails loudly), its buffer kept for the next piece
        (only a full piece's, and only SPARE_BUFFERS of them)."""
        try:
            state.view.release()
        except BufferError:  # something still uses the view: leave the buffer to it
            return
        if len(self._spare) < SPARE_BUFFERS and state.size == self.layout.piece_length:
            self._spare.append(state.buf)

    def _reclaim(self) -> None:
        """The pieces lent by the last call are the caller's no more."""
        for state in self._lent:
            self._recycle(state)
        self._lent.clear()

    def _start_decoding(self, piece: int, state: _Receiving) -> bytes | None:
        """K symbols with some source symbols missing: a decoder gets them all."""
        t = self.symbol_size
        state.decoder = raptorq.Decoder.with_defaults(state.size, t)
        view = state.view
        data: bytes | None = None
        # The full-sized source symbols in one loop (this runs for nearly every
        # piece under loss): packet = payload id (SBN 0, ESI: 4 bytes) + symbol.
        full = state.k if state.size % t == 0 else state.k - 1
        decode = state.decoder.decode
        try:
            for esi in itertools.compress(range(full), state.have):
                data = decode(esi.to_bytes(4, "big") + view[esi * t : esi * t + t])
                if data is not None:
                    return self._checked(piece, data)
        except BaseException as e:
            self._panicked(piece, state, e)
            return None
        for esi in range(full, state.k):  # the last source symbol, if short: padded
            if state.have[esi]:
                data = self._decode(piece, state, esi, view[esi * t : state.size])
                if data is not None or state.decoder is None:
                    return data
        for esi, sym in list(state.repair.items()):
            data = self._decode(piece, state, esi, sym)
            if data is not None or state.decoder is None:
                return data
        return None

    def _finish(self, piece: int, state: _Receiving) -> None:
        self._drop(piece)
        self._done.add(piece)

    def _decode(self, piece: int, state: _Receiving, esi: int, sym: Any) -> bytes | None:
        t = self.symbol_size
        head = b"\0" + esi.to_bytes(3, "big")  # RFC 6330 payload id: SBN 0, ESI
        if len(sym) < t:  # the last source symbol, as the encoder pads it
            packet = head + bytes(sym) + bytes(t - len(sym))
        else:
            packet = head + sym
        try:
            data = state.decoder.decode(packet)
        except BaseException as e:
            self._panicked(piece, state, e)
            return None
        return None if data is None else self._checked(piece, data)

    def _checked(self, piece: int, data: bytes) -> bytes | None:
        return data if len(data) == self.layout.piece_size(piece) else None

    def _panicked(self, piece: int, state: _Receiving, e: BaseException) -> None:
        """The package panicked on ``piece``: a Rust panic arrives as pyo3's
        PanicException, a BaseException; it is counted and the piece dropped
        (anything else is raised again)."""
        if type(e).__name__ != "PanicException":
            raise e
        self.rejected += 1
        self._drop(piece)
        state.decoder = None

    def unit_of(self, piece: int, symbol: int) -> int:
        self.layout.piece_size(piece)
        if not 0 <= symbol <= MAX_ESI:
            raise ValueError(f"symbol {symbol} is not an RFC 6330 ESI")
        return piece

    def forget(self, piece: int) -> None:
        self.layout.piece_size(piece)
        self._drop(piece)
        self._done.discard(piece)

    def _drop(self, piece: int) -> None:
        state = self._pieces.pop(piece, None)
        if state is not None:
            self._buffers -= state.size
            if not self._lent or state not in self._lent:
                self._recycle(state)
