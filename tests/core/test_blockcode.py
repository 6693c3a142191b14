"""Block codes: plain and RaptorQ round-trip files, reject garbage, bound their memory."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import raptorq
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.core.blockcode import (
    MAX_ESI,
    MAX_PIECE_BYTES,
    MAX_SOURCE_SYMBOLS,
    PlainCode,
    RaptorQCode,
    RaptorQDecoder,
    RaptorQEncoder,
)
from mcp2p.interfaces import IBlockCode
from mcp2p.wire.layout import Layout

BLOCK = 1400
PIECE = 8 * BLOCK
# 0, 1, block - 1, block, and many pieces with a short last piece ending in a short block.
SIZES = [0, 1, BLOCK - 1, BLOCK, 5 * PIECE + 3 * BLOCK + 77]


def make_file(size: int, seed: int = 0) -> tuple[bytes, Callable[[int, int], bytes]]:
    data = random.Random(seed).randbytes(size)

    def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return data, read


def enough(code: RaptorQCode, layout: Layout, piece: int) -> int:
    """Symbols that decode a piece whatever they are: K + the repair overhead."""
    return code.need(layout, piece) + code.repair_overhead(layout, piece)


class File:
    """What a receiver writes: the decoder's writes applied to a buffer."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.written = 0

    def apply(self, writes: list[tuple[int, bytes]]) -> None:
        for offset, data in writes:
            self.buf[offset : offset + len(data)] = data
            self.written += len(data)


# -- plain -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_plain_round_trip_in_any_order(size: int) -> None:
    layout = Layout(size, PIECE, BLOCK)
    code = PlainCode()
    data, read = make_file(size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    out = File(size)
    units = list(range(code.units(layout)))
    assert len(units) == layout.blocks
    random.Random(1).shuffle(units)
    for unit in units:
        assert code.need(layout, unit) == 1
        piece, symbol, payload = enc.symbol(unit, 0)
        assert enc.symbol(unit, 5) == (piece, symbol, payload)  # the block again
        assert len(payload) <= BLOCK
        assert dec.unit_of(piece, symbol) == unit
        writes = dec.add(piece, symbol, payload)
        assert len(writes) == 1
        out.apply(writes)
        assert dec.add(piece, symbol, payload) == []  # a duplicate writes nothing
    assert bytes(out.buf) == data and out.written == size
    assert dec.redundant == len(units) and dec.rejected == 0 and dec.pending_bytes == 0


def test_plain_forget_takes_a_piece_again() -> None:
    layout = Layout(3 * PIECE, PIECE, BLOCK)
    code = PlainCode()
    _, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    for unit in range(layout.blocks):
        dec.add(*enc.symbol(unit, 0))
    dec.forget(1)
    again = [u for u in range(layout.blocks) if dec.add(*enc.symbol(u, 0))]
    assert again == list(layout.piece_blocks(1))


# -- RaptorQ ---------------------------------------------------------------------------


def send_piece(
    enc: RaptorQEncoder, dec: RaptorQDecoder, piece: int, loss: float, rng: random.Random
) -> tuple[list[tuple[int, bytes]], int]:
    """Send symbols 0, 1, 2... of ``piece``, losing some, until it decodes."""
    received = 0
    for n in range(10_000):
        p, esi, payload = enc.symbol(piece, n)
        assert p == piece and len(payload) <= enc.layout.block_length
        if rng.random() < loss:
            continue
        received += 1
        writes = dec.add(p, esi, payload)
        if writes:
            return writes, received
    raise AssertionError(f"piece {piece} never decoded")


@pytest.mark.parametrize("size", SIZES)
def test_raptorq_round_trip_from_source_symbols(size: int) -> None:
    layout = Layout(size, PIECE, BLOCK)
    code = RaptorQCode()
    data, read = make_file(size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    out = File(size)
    assert code.units(layout) == layout.pieces
    for piece in range(layout.pieces):
        k = code.source_symbols(layout, piece)
        for n in range(k):
            p, esi, payload = enc.symbol(piece, n)
            assert (p, esi) == (piece, n)
            assert payload == read(layout.piece_offset(piece) + n * BLOCK, len(payload))
            assert dec.unit_of(p, esi) == piece
            out.apply(dec.add(p, esi, payload))
    assert bytes(out.buf) == data and out.written == size
    assert enc.encodes == 0  # source symbols are read, not encoded
    assert dec.decoded == layout.pieces and dec.pending_bytes == 0 and dec.rejected == 0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("loss", [0.1, 0.2])
def test_raptorq_round_trip_with_loss(size: int, loss: float) -> None:
    layout = Layout(size, PIECE, BLOCK)
    code = RaptorQCode()
    data, read = make_file(size, seed=size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    out, rng = File(size), random.Random(size)
    for piece in range(layout.pieces):
        writes, received = send_piece(enc, dec, piece, loss, rng)
        assert writes == [(layout.piece_offset(piece), read(layout.piece_offset(piece), PIECE))]
        assert received <= enough(code, layout, piece)
        out.apply(writes)
        assert enc.symbol(piece, 0)[2] == b"" or dec.add(*enc.symbol(piece, 0)) == []
    assert bytes(out.buf) == data and out.written == size
    assert dec.pending_bytes == 0


def test_raptorq_decodes_from_any_k_plus_overhead_symbols() -> None:
    """Repair symbols only, or a random mix: K + 2 of them rebuild the piece."""
    layout = Layout(3 * PIECE + 2 * BLOCK + 5, PIECE, BLOCK)
    code = RaptorQCode()
    data, read = make_file(layout.size)
    enc = code.encoder(layout, read)
    rng = random.Random(7)
    for piece in range(layout.pieces):
        k = code.source_symbols(layout, piece)
        cycle = k + enc.repair_symbols(piece)
        symbols = [enc.symbol(piece, n) for n in range(cycle)]
        expected = read(layout.piece_offset(piece), layout.piece_size(piece))
        for trial in range(20):
            pool = symbols[k:] if trial % 2 == 0 else symbols
            dec = code.decoder(layout)
            writes: list[tuple[int, bytes]] = []
            for symbol in rng.sample(pool, enough(code, layout, piece)):
                writes += dec.add(*symbol)
            assert writes == [(layout.piece_offset(piece), expected)]


def test_raptorq_one_mib_piece_from_repair_symbols() -> None:
    layout = Layout(1 << 20, 1 << 20, 1400)
    code = RaptorQCode()
    data, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    k = code.source_symbols(layout, 0)
    assert k == 749 and code.need(layout, 0) == 749 and enough(code, layout, 0) == 751
    writes: list[tuple[int, bytes]] = []
    for n in range(k, k + enough(code, layout, 0)):
        writes += dec.add(*enc.symbol(0, n))
        if not writes:
            assert dec.pending_bytes == layout.size + (n - k + 1) * 1400  # buffer + repairs
    assert writes == [(0, data)]
    assert enc.encodes == 1 and enc.batches == 1  # a batch of 1.25 K repair symbols


def test_raptorq_symbol_size_is_a_multiple_of_8() -> None:
    layout = Layout(10_000, 4004, 1001)  # symbols of 1000 bytes: 5 per piece, not 4
    code = RaptorQCode()
    assert code.symbol_size(layout) == 1000
    assert [code.source_symbols(layout, p) for p in range(layout.pieces)] == [5, 5, 2]
    data, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    out = File(layout.size)
    for piece in range(layout.pieces):
        k = code.source_symbols(layout, piece)
        for n in range(k + 1, k + 1 + enough(code, layout, piece)):  # repair only
            out.apply(dec.add(*enc.symbol(piece, n)))
    assert bytes(out.buf) == data


def test_raptorq_layout_limits() -> None:
    code = RaptorQCode()
    with pytest.raises(ValueError, match="56403"):
        code.units(Layout(1 << 30, 1 << 30, 1400))
    assert code.units(Layout(1 << 20, MAX_SOURCE_SYMBOLS * 16, 16)) == 2
    with pytest.raises(ValueError, match="56403"):
        code.units(Layout(1 << 20, MAX_SOURCE_SYMBOLS * 16 + 1, 16))
    assert code.units(Layout(MAX_PIECE_BYTES, MAX_PIECE_BYTES, 1400)) == 1
    with pytest.raises(ValueError, match="use shorter pieces"):
        code.units(Layout(1 << 30, MAX_PIECE_BYTES + 1400, 1400))
    with pytest.raises(ValueError, match="below 8"):
        code.decoder(Layout(100, 100, 7))
    with pytest.raises(ValueError):
        RaptorQCode(overhead=-1)


@pytest.mark.parametrize("block", [16, 1400, 65528])
def test_raptorq_source_symbols_are_the_package_s(block: int) -> None:
    """Up to the largest piece allowed, the package makes one sub-block, so
    its source symbols are slices of the piece, which the encoder reads from
    the file and the decoder joins without decoding."""
    size = min(MAX_PIECE_BYTES, MAX_SOURCE_SYMBOLS * block)
    layout = Layout(size, size, block)
    code = RaptorQCode()
    data, read = make_file(size)
    enc = code.encoder(layout, read)
    k = code.source_symbols(layout, 0)
    packets = raptorq.Encoder.with_defaults(data, block).get_encoded_packets(0)
    assert len(packets) == k
    for n in (0, 1, k // 2, k - 2, k - 1):
        assert enc.symbol(0, n)[2] == packets[n][4 : 4 + len(enc.symbol(0, n)[2])]


@given(
    size=st.integers(0, 40 * PIECE),
    piece=st.integers(1, 8).map(lambda n: n * BLOCK),
    code=st.sampled_from([PlainCode(), RaptorQCode()]),
)
@settings(max_examples=100)
def test_needs_at_once_are_each_units_need(size: int, piece: int, code: IBlockCode) -> None:
    layout = Layout(size, piece, BLOCK)
    bulk = code.needs(layout)  # type: ignore[attr-defined]
    assert list(bulk) == [code.need(layout, u) for u in range(code.units(layout))]


def test_raptorq_empty_file_is_one_empty_symbol() -> None:
    layout = Layout(0, PIECE, BLOCK)
    code = RaptorQCode()
    enc, dec = code.encoder(layout, make_file(0)[1]), code.decoder(layout)
    assert code.need(layout, 0) == 1
    assert enc.symbol(0, 0) == enc.symbol(0, 9) == (0, 0, b"")
    assert dec.add(0, 1, b"x" * BLOCK) == [] and dec.rejected == 1
    assert dec.add(0, 0, b"") == [(0, b"")]
    assert dec.add(0, 0, b"") == [] and dec.redundant == 1


def test_raptorq_esis_start_again_after_a_cycle() -> None:
    layout = Layout(2 * PIECE, PIECE, BLOCK)
    code = RaptorQCode(repair_ratio=10)
    enc = code.encoder(layout, make_file(layout.size)[1])
    cycle = 8 + enc.repair_symbols(0)
    assert enc.repair_symbols(0) == 80
    assert [enc.symbol(0, n)[1] for n in (0, 8, cycle - 1, cycle, cycle + 8)] == [
        0,
        8,
        cycle - 1,
        0,
        8,
    ]
    assert enc.symbol(0, cycle + 9) == enc.symbol(0, 9)


def test_raptorq_forget_decodes_a_piece_again() -> None:
    layout = Layout(2 * PIECE, PIECE, BLOCK)
    code = RaptorQCode()
    _, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    first, _ = send_piece(enc, dec, 1, 0.0, random.Random(0))
    assert dec.add(*enc.symbol(1, 20)) == [] and dec.redundant == 1
    dec.add(*enc.symbol(0, 3))
    dec.forget(0)  # a piece in progress
    dec.forget(1)  # a decoded piece
    assert dec.pending_bytes == 0
    again, _ = send_piece(enc, dec, 1, 0.5, random.Random(1))
    assert again == first


def test_raptorq_encoder_cache_is_bounded() -> None:
    layout = Layout(20 * PIECE, PIECE, BLOCK)
    code = RaptorQCode(cache_pieces=8, repair_ratio=10)
    _, read = make_file(layout.size)
    enc = code.encoder(layout, read)
    k = 8
    for piece in range(20):
        enc.symbol(piece, k)
        assert len(enc.cached_pieces) <= 8
    assert enc.encodes == 20 and enc.cached_pieces == list(range(12, 20))
    bound = 8 * (2 * k + 64 + max(64, k + k // 4)) * BLOCK  # encoder estimate + one batch per piece
    assert 0 < enc.cached_bytes <= bound
    for n in range(k, k + enc.repair_symbols(19)):  # a whole cycle of one cached piece
        enc.symbol(19, n)
    assert enc.encodes == 20 and enc.batches == 20 + 1  # 80 repair symbols: two batches of 64
    enc.symbol(12, k)
    assert enc.encodes == 20  # still cached (and now most recent)
    enc.symbol(0, k)
    assert enc.encodes == 21 and 13 not in enc.cached_pieces and 12 in enc.cached_pieces
    assert enc.cached_bytes <= bound


def test_raptorq_repair_symbols_made_elsewhere_are_the_encoder_s_own() -> None:
    """``job`` hands out a piece; ``put_batch`` takes back its repair symbols
    (as `mcp2p.transfer.encodeworker` makes them): the encoder then sends
    them without encoding, and encodes only for a symbol past them."""
    from mcp2p.transfer.encodeworker import repair_batch

    layout = Layout(3 * PIECE + 500, PIECE, BLOCK)
    code = RaptorQCode(repair_ratio=20)  # 160 repair symbols a piece: some past the batch
    _, read = make_file(layout.size, seed=4)
    here, there = code.encoder(layout, read), code.encoder(layout, read)
    job = there.job(1)
    assert job is not None
    k, t, first, stop, offset, length = job
    assert (k, t, first, stop, offset, length) == (8, BLOCK, 0, 64, PIECE, PIECE)
    assert there.put_batch(1, first, repair_batch(read(offset, length), t, k, first, stop))
    assert there.job(1) is None  # cached now
    for n in (k, k + 1, k + stop - 1):
        assert there.symbol(1, n) == here.symbol(1, n)
    assert (there.encodes, there.prefetched) == (0, 1)
    assert there.symbols(1, k + stop, 2) == here.symbols(1, k + stop, 2)  # past the batch
    assert there.encodes == 1


def test_raptorq_put_batch_refuses_what_does_not_fit() -> None:
    layout = Layout(2 * PIECE, PIECE, BLOCK)
    code = RaptorQCode(repair_ratio=10)
    _, read = make_file(layout.size)
    enc = code.encoder(layout, read)
    t, cycle = BLOCK, enc.repair_symbols(0)
    assert not enc.put_batch(0, 0, b"")
    assert not enc.put_batch(0, 0, b"x" * (t + 1))  # not whole symbols
    assert not enc.put_batch(0, cycle - 1, b"x" * 2 * t)  # past the piece's repair symbols
    assert not enc.put_batch(0, -1, b"x" * t)
    enc.symbol(1, 8)  # piece 1 encoded here
    assert not enc.put_batch(1, 0, b"x" * t)
    assert enc.prefetched == 0 and enc.cached_pieces == [1]
    empty = code.encoder(Layout(0, PIECE, BLOCK), read)
    assert empty.job(0) is None and not empty.put_batch(0, 0, b"x" * t)


def test_raptorq_batches_made_elsewhere_cost_the_cache_little() -> None:
    """The cache is bounded in bytes (cache_pieces encoders with a batch): a
    batch without its encoder is a fraction of that, so many more fit."""
    layout = Layout(64 * PIECE, PIECE, BLOCK)
    code = RaptorQCode(cache_pieces=2)
    _, read = make_file(layout.size)
    enc = code.encoder(layout, read)
    k = 8
    bound = 2 * (2 * k + 64 + max(64, k + k // 4)) * BLOCK
    for piece in range(64):
        assert enc.put_batch(piece, 0, b"x" * 64 * BLOCK)
        assert enc.cached_bytes <= bound
    assert len(enc.cached_pieces) == 4 and enc.cached_pieces == [60, 61, 62, 63]
    enc.symbol(0, k)  # encoded here: an encoder's worth goes out
    assert enc.cached_bytes <= bound and enc.cached_pieces[-1] == 0


def test_encoders_refuse_a_short_read() -> None:
    layout = Layout(3 * BLOCK, PIECE, BLOCK)
    for code in (PlainCode(), RaptorQCode()):
        enc = code.encoder(layout, lambda offset, length: b"short")
        with pytest.raises(ValueError, match="file changed"):
            enc.symbol(0, 0)
    with pytest.raises(ValueError, match="file changed"):
        RaptorQCode().encoder(layout, lambda offset, length: b"short").symbol(0, 99)


def test_a_repair_that_cannot_read_its_piece_leaves_nothing_cached() -> None:
    """A piece cut short: its repair fails, and it stays uncached, so it is
    still a worker's job and nothing cached stands for it."""
    layout = Layout(3 * BLOCK, PIECE, BLOCK)
    enc = RaptorQCode().encoder(layout, lambda offset, length: b"short")
    with pytest.raises(ValueError, match="file changed"):
        enc.symbol(0, 99)
    assert enc.cached_pieces == [] and enc.cached_bytes == 0
    assert enc.job(0) is not None


# -- garbage ---------------------------------------------------------------------------

LAYOUT = Layout(2 * PIECE + 3 * BLOCK + 10, PIECE, BLOCK)


@pytest.mark.parametrize(
    "piece, symbol, payload",
    [
        (-1, 0, b"x" * BLOCK),
        (LAYOUT.pieces, 0, b"x" * BLOCK),
        (2**32 - 1, 0, b"x" * BLOCK),
        (0, -1, b"x" * BLOCK),
        (0, 2**32 - 1, b"x" * BLOCK),  # not an ESI (24 bits), not a block
        (0, 0, b"x" * (BLOCK + 1)),
        (0, 0, b"x" * (BLOCK - 1)),
        (0, 0, b""),
        (0, 9, b"x" * 9),  # a repair symbol must be a whole symbol
        (2, 3, b"x" * BLOCK),  # the last source symbol is 10 bytes
        (2, 3, b"x" * 11),
        (0, 0, None),
        ("0", 0, b"x" * BLOCK),
        (0, 0.0, b"x" * BLOCK),
    ],
)
@pytest.mark.parametrize("code", [PlainCode(), RaptorQCode()], ids=["plain", "raptorq"])
def test_garbage_is_rejected_not_raised(code: IBlockCode, piece, symbol, payload) -> None:
    dec = code.decoder(LAYOUT)
    assert dec.add(piece, symbol, payload) == []
    assert dec.rejected == 1 and dec.pending_bytes == 0


def test_a_panic_in_the_package_drops_the_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyo3 turns a Rust panic into PanicException, a BaseException: counted, not raised."""

    class PanicException(BaseException):
        pass

    class Panicking:
        def decode(self, packet: bytes) -> bytes | None:
            raise PanicException("index out of bounds")

    import mcp2p.core.blockcode as blockcode

    monkeypatch.setattr(blockcode.raptorq.Decoder, "with_defaults", lambda *a: Panicking())
    dec = RaptorQCode().decoder(LAYOUT)
    for esi in range(8, 16):
        assert dec.add(0, esi, b"x" * BLOCK) == []
    assert dec.rejected == 1 and dec.pending_bytes == 0
    # The same while the source symbols held are handed over (one lost, one repair).
    symbols = [(1, esi, b"y" * BLOCK) for esi in (*range(7), 8)]
    assert dec.add_many(symbols) == []
    assert dec.rejected == 2 and dec.pending_bytes == 0


def test_plain_rejects_blocks_past_a_piece() -> None:
    dec = PlainCode().decoder(LAYOUT)
    assert dec.add(0, 8, b"x" * BLOCK) == [] and dec.rejected == 1
    assert dec.add(2, 3, b"x" * 10) == [(2 * PIECE + 3 * BLOCK, b"x" * 10)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-2, LAYOUT.pieces + 1),
            st.one_of(st.integers(-2, 20), st.integers(MAX_ESI - 2, 2**32)),
            st.one_of(st.binary(max_size=20), st.binary(min_size=BLOCK, max_size=BLOCK)),
        ),
        max_size=40,
    )
)
def test_decoders_never_raise_on_garbage(symbols: list[tuple[int, int, bytes]]) -> None:
    """Forged symbols of the right shape may decode to a wrong piece (the hash
    catches that); nothing makes a decoder raise."""
    for code in (PlainCode(), RaptorQCode()):
        dec = code.decoder(LAYOUT)
        for symbol in symbols:
            for offset, data in dec.add(*symbol):
                assert 0 <= offset and offset + len(data) <= LAYOUT.size


@pytest.mark.parametrize("first,count", [(0, 8), (0, 3), (5, 10), (7, 1), (8, 4), (0, 200)])
def test_raptorq_symbols_in_a_run_are_symbol_by_symbol(first: int, count: int) -> None:
    """A run read at once (source symbols with one read) equals symbol() one
    by one, across the source/repair boundary and the ESI wrap."""
    size = 3 * PIECE - 100
    layout = Layout(size, PIECE, BLOCK)
    code = RaptorQCode(repair_ratio=0.1)
    _, read = make_file(size, seed=3)
    reads: list[int] = []

    def counting_read(offset: int, length: int) -> bytes:
        reads.append(length)
        return read(offset, length)

    one = code.encoder(layout, read)
    run = code.encoder(layout, counting_read)
    for piece in range(layout.pieces):
        reads.clear()
        expected = [one.symbol(piece, n) for n in range(first, first + count)]
        assert run.symbols(piece, first, count) == expected
        if first + count <= code.source_symbols(layout, piece):
            assert len(reads) == 1  # the source symbols of the run in one read
    with pytest.raises(ValueError):
        run.symbols(0, -1, 2)


def test_raptorq_decoder_memory_is_bounded_whatever_the_sn_sends() -> None:
    """An SN that starts every piece and finishes none makes the decoder hold
    piece buffers only up to max_pending; the rest is refused and counted."""
    layout = Layout(64 * PIECE, PIECE, BLOCK)
    code = RaptorQCode()
    _, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    dec.max_pending = 5 * PIECE
    for piece in range(layout.pieces):
        assert dec.add(*enc.symbol(piece, 0)) == []
    assert dec.pending_bytes == 5 * PIECE and dec.window_full == layout.pieces - 5
    # A piece in progress still completes, and frees its room for another.
    for n in range(1, code.source_symbols(layout, 0)):
        writes = dec.add(*enc.symbol(0, n))
    assert writes == [(0, read(0, PIECE))]
    assert dec.pending_bytes == 4 * PIECE
    assert dec.add(*enc.symbol(63, 0)) == [] and dec.pending_bytes == 5 * PIECE


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    batch=st.integers(1, 40),
)
def test_raptorq_add_many_reuses_buffers_and_lends_each_piece_until_the_next_call(
    seed: int, loss: float, batch: int
) -> None:
    """Pieces in batches, interleaved, some lost and repaired, duplicates, one
    forgotten and sent again: each piece handed back once, right, whether it
    came from the buffer (lent: a view released at the next call, its buffer
    reused) or from the package; a reused buffer never leaks its last piece."""
    from mcp2p.core.blockcode import SPARE_BUFFERS

    layout = Layout(6 * PIECE + 3 * BLOCK + 77, PIECE, BLOCK)
    code = RaptorQCode()
    data, read = make_file(layout.size, seed=seed % 1000)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    rng = random.Random(seed)
    stream: list[tuple[int, int, bytes]] = []
    for piece in range(layout.pieces):
        k = code.source_symbols(layout, piece)
        kept = [s for s in enc.symbols(piece, 0, k) if rng.random() >= loss]
        stream += kept + enc.symbols(piece, k, k - len(kept) + code.repair_overhead(layout, 0))
    stream += rng.sample(stream, 5)  # duplicates
    order = sorted(range(len(stream)), key=lambda i: i + rng.randrange(3 * 8))  # interleaved
    stream = [stream[i] for i in order] + enc.symbols(2, 0, code.source_symbols(layout, 2))
    got: dict[int, bytes] = {}
    lent: list[memoryview] = []
    forgotten = False
    for i in range(0, len(stream), batch):
        writes = dec.add_many(stream[i : i + batch])
        for view in lent:  # the last call's pieces are the decoder's again
            with pytest.raises(ValueError):
                bytes(view)
        lent = []
        for offset, piece in writes:
            index = offset // PIECE
            assert bytes(piece) == read(offset, layout.piece_size(index))
            assert index not in got
            got[index] = bytes(piece)
            if isinstance(piece, memoryview):
                lent.append(piece)
            if index == 2 and not forgotten:  # "its hash failed": taken again
                forgotten = True
                dec.forget(2)
                del got[2]
        assert len(dec._spare) <= SPARE_BUFFERS
    assert sorted(got) == list(range(layout.pieces))
    assert dec.pending_bytes == 0 and dec.rejected == 0


def test_raptorq_add_hands_back_copies() -> None:
    layout = Layout(2 * PIECE, PIECE, BLOCK)
    code = RaptorQCode()
    _, read = make_file(layout.size)
    enc, dec = code.encoder(layout, read), code.decoder(layout)
    writes = []
    for piece in range(2):
        for n in range(code.source_symbols(layout, piece)):
            writes += dec.add(*enc.symbol(piece, n))
    assert writes == [(0, read(0, PIECE)), (PIECE, read(PIECE, PIECE))]
    assert all(type(data) is bytes for _, data in writes)


# -- the compiled run (mcp2p._speedups.copy_run) and its Python twin --------------


class _Bytes(bytes):
    pass


def _shapes(payload: bytes, shape: int) -> object:
    """The same bytes as the receiver's views, or as odder objects."""
    if shape == 0:
        return memoryview(bytearray(payload))
    if shape == 1:
        return payload
    if shape == 2:
        return bytearray(payload)
    if shape == 3:
        return _Bytes(payload)  # a subclass: the Python loop takes it, the run stops
    if shape == 4 and len(payload) % 2 == 0:
        return memoryview(bytearray(payload)).cast("H")  # len() counts items, not bytes
    if shape == 5:
        released = memoryview(bytearray(payload))
        released.release()
        return released
    return memoryview(bytearray(payload))[::1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # piece
            st.integers(-1, 12),  # ESI: sources, repairs, and beyond
            st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6]),  # payload shape (_shapes)
            st.sampled_from(["genuine", "genuine", "short", "other"]),
            st.integers(1, 9),  # a run: this many ESIs from this one on
        ),
        max_size=30,
    ),
    st.lists(st.integers(1, 16), min_size=1, max_size=8),
)
def test_the_compiled_run_decodes_as_the_python_loop_does(
    stream: list[tuple[int, int, int, str, int]], cuts: list[int]
) -> None:
    """Genuine symbols, copies, short and foreign payloads, odd buffer types,
    in batches of any size: the decoder's writes and counters are the same
    with mcp2p._speedups.copy_run as with its Python loop alone."""
    from unittest import mock

    import mcp2p.core.blockcode as blockcode

    if blockcode._copy_run is None:
        pytest.skip("mcp2p._speedups.copy_run was not built here")
    size = 3 * PIECE - 100
    layout = Layout(size, PIECE, BLOCK)
    code = RaptorQCode()
    _, read = make_file(size, seed=5)
    enc = code.encoder(layout, read)

    def items() -> list[tuple[int, int, object]]:
        out: list[tuple[int, int, object]] = []
        for piece, first, shape, kind, count in stream:
            for esi in range(first, first + count):
                if esi < 0:
                    out.append((piece, esi, b"x" * BLOCK))
                    continue
                payload = enc.symbol(piece, esi)[2]
                if kind == "short":
                    payload = payload[:-1]
                elif kind == "other":
                    payload = bytes(len(payload))
                out.append((piece, esi, _shapes(payload, shape)))
        return out

    def run() -> tuple[object, ...]:
        dec = code.decoder(layout)
        batch = items()
        writes, at, k = [], 0, 0
        while at < len(batch):
            step = cuts[k % len(cuts)]
            k += 1
            try:
                got = dec.add_many(batch[at : at + step])
            except ValueError as e:  # a released view: raised alike
                writes.append(("raised", str(e)))
            else:
                writes += [(offset, bytes(data)) for offset, data in got]
            at += step
        return writes, dec.rejected, dec.redundant, dec.decoded, dec.pending_bytes

    compiled = run()
    with mock.patch.object(blockcode, "_copy_run", None):
        python = run()
    assert compiled == python


def test_the_compiled_run_refuses_what_it_cannot_write_or_index() -> None:
    import mcp2p.core.blockcode as blockcode

    copy_run = blockcode._copy_run
    if copy_run is None:
        pytest.skip("mcp2p._speedups.copy_run was not built here")
    have, buffer = bytearray(4), bytearray(4 * 3)
    items = [(0, 1, b"abc"), (0, 1, b"abc"), (0, 2, b"ab")]
    assert copy_run(items, 0, 0, 4, 10, have, buffer, 3) == (2, 1, 1)  # a copy, then too short
    assert have == b"\0\1\0\0" and buffer[3:6] == b"abc"
    assert copy_run(items, 0, 0, 4, 0, bytearray(4), buffer, 3) == (0, 0, 0)  # no room
    assert copy_run(items, 1, 0, 4, 10, bytearray(4), buffer, 0) == (1, 0, 0)  # no size
    assert copy_run(items, 3, 0, 4, 10, have, buffer, 3) == (3, 0, 0)  # at the end
    # a symbol past the buffer, or the marks, ends the run: the caller decides
    assert copy_run([(0, 3, b"abc")], 0, 0, 9, 10, bytearray(9), bytearray(9), 3) == (0, 0, 0)
    assert copy_run([(0, 3, b"abc")], 0, 0, 9, 10, bytearray(2), bytearray(99), 3) == (0, 0, 0)
    for start in (-1, 4):
        with pytest.raises(ValueError):
            copy_run(items, start, 0, 4, 10, have, buffer, 3)
    with pytest.raises(TypeError):
        copy_run(tuple(items), 0, 0, 4, 10, have, buffer, 3)  # not a list
    with pytest.raises(TypeError):
        copy_run(items, 0, 0, 4, 10, bytes(4), buffer, 3)  # read-only marks
    with pytest.raises(TypeError):
        copy_run(items, 0, 0, 4, 10, have, bytes(12), 3)  # read-only buffer
