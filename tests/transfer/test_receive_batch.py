"""The CN's batch receive path: header split, Receiver.datagrams on views,
BatchReader on a real loopback socket (GRO), and the store's piece buffers."""

from __future__ import annotations

import errno
import os
import random
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mcp2p.errors import ProtocolError
from mcp2p.transfer.receiver import BatchReader, Receiver
from mcp2p.transfer.store import PartialFile, StoreError, buffers
from mcp2p.wire.rtp import HEADER_LEN, decode_packet, pack_header, packet_digest, split_header
from tests.transfer.test_store import block_of, crash, make_manifest

SSRC = 0x1234


def packet(seq: int, payload: bytes = b"x" * 100, ssrc: int = SSRC, piece: int = 0) -> bytes:
    return pack_header(seq & 0xFFFF, seq, ssrc, piece, seq) + payload


def receiver(batched: bool = True) -> tuple[Receiver, list[Any]]:
    got: list[Any] = []
    r = Receiver(Clock(), SSRC, lambda p, s, d: got.append((p, s, bytes(d))), lambda *a: None)
    if batched:
        # Copy the views at once, as the store does: the buffer is reused afterwards.
        r.deliver_many = lambda items: got.extend((p, s, bytes(d)) for p, s, d in items)
    return r, got


def arena(datagrams: list[bytes]) -> list[memoryview]:
    """The datagrams as views into one buffer, as BatchReader hands them over."""
    buffer = bytearray(b"".join(datagrams))
    view, out, at = memoryview(buffer), [], 0
    for d in datagrams:
        out.append(view[at : at + len(d)])
        at += len(d)
    return out


# -- header split -------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_split_header_accepts_exactly_what_decode_packet_accepts(data: bytes) -> None:
    try:
        p = decode_packet(data)
    except ProtocolError:
        assert split_header(data) is None
    else:
        assert split_header(data) == (p.timestamp, p.ssrc, p.piece, p.symbol)
        assert split_header(memoryview(bytearray(data))) == split_header(data)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_arbitrary_bytes_in_a_batch_are_counted_never_raise(batch: list[bytes]) -> None:
    r, got = receiver()
    r.datagrams(arena(batch))
    c = r.counters
    assert c["packets"] == len(batch)
    held = sum(len(v) for v in r.held.values())
    assert c["malformed"] + c["foreign"] + c["duplicate"] + held == len(batch)
    assert got == []  # nothing was announced: nothing accepted


# -- Receiver.datagrams --------------------------------------------------------


def test_a_batch_in_any_order_with_duplicates_and_forgeries_delivers_each_genuine_block_once() -> (
    None
):
    rng = random.Random(3)
    genuine = [packet(i, bytes([i]) * 50) for i in range(40)]
    forged = [g[:-1] + b"!" for g in genuine[::5]]
    foreign = [packet(100, ssrc=SSRC + 1)]
    r, got = receiver()
    # Half the notices first, the rest after the packets (TLS lags UDP).
    notices = [(i, packet_digest(g)) for i, g in enumerate(genuine)]
    r.notices(notices[:20])
    batch = genuine + genuine[:10] + forged + foreign + [b"\x80\x60short"]
    rng.shuffle(batch)
    for i in range(0, len(batch), 16):
        r.datagrams(arena(batch[i : i + 16]))
    r.notices(notices[20:])
    assert sorted(got) == [(0, i, bytes([i]) * 50) for i in range(40)]
    c = r.counters
    assert c["accepted"] == 40 and c["foreign"] == 1 and c["malformed"] == 1
    assert c["forged"] == len(forged)
    assert r.held == {} and not r.expected


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("notices"), st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=12)
        ),
        st.tuples(
            st.just("batch"),
            st.lists(
                st.tuples(
                    st.integers(0, 40), st.sampled_from(["genuine", "forged", "foreign", "junk"])
                ),
                max_size=24,
            ),
        ),
        st.tuples(st.just("advance"), st.sampled_from([0.01, 0.06, 0.35, 2.5])),
    ),
    max_size=30,
)


def _replay(ops: list[Any], base: int) -> Any:
    """A receiver's whole state after ``ops`` (notices, batches, time)."""
    clock = Clock()
    got: list[Any] = []
    lost: list[Any] = []
    r = Receiver(clock, SSRC, lambda *a: None, lambda gone, n: lost.append((list(gone), n)))
    r.deliver_many = lambda items: got.extend((p, s, bytes(d)) for p, s, d in items)
    r.startProtocol()

    def make(seq: int, kind: str) -> bytes:
        if kind == "foreign":
            return packet(seq, ssrc=SSRC + 1, piece=seq % 3)
        if kind == "junk":
            return b"\x80\x60" + bytes([seq % 256]) * 5
        return packet(
            seq, b"F" * 20 if kind == "forged" else bytes([seq % 256]) * 20, piece=seq % 3
        )

    for op, arg in ops:
        if op == "notices":
            r.notices(
                [
                    (base + i, packet_digest(make(base + i, "genuine")) if true else b"\x00" * 8)
                    for i, true in arg
                ]
            )
        elif op == "batch":
            r.datagrams(arena([make(base + i, kind) for i, kind in arg]))
        else:
            clock.advance(arg)
    r.stopProtocol()
    return (
        dict(r.counters),
        sorted(got),
        list(r.expected.items()),
        list(r.overdue.items()),
        sorted((k, [(bytes(d), g, t) for d, g, t in v]) for k, v in r.held.items()),
        lost,
        r.highest,
        bytes(r.accepted.digests),
        r.accepted.seqs.tobytes(),
    )


@settings(max_examples=150, deadline=None)
@given(_ops, st.sampled_from([0, (1 << 18) - 20, (1 << 32) - 41]))
def test_the_compiled_usual_case_leaves_the_receiver_as_the_python_loop_does(
    ops: list[Any], base: int
) -> None:
    """Notices, genuine packets, copies, forgeries, foreign packets and junk in
    any order and timing: the receiver ends in the same state, counters and
    deliveries with mcp2p._speedups.accept as with its Python loop alone."""
    from unittest import mock

    from mcp2p.transfer import receiver as rx_module

    if rx_module._accept is None:
        pytest.skip("mcp2p._speedups.accept was not built here")
    compiled = _replay(ops, base)
    with mock.patch.object(rx_module, "_accept", None):
        python = _replay(ops, base)
    assert compiled == python


def test_payloads_handed_on_are_views_of_the_batch_and_held_ones_are_copies() -> None:
    views: list[Any] = []
    r = Receiver(Clock(), SSRC, lambda *a: None, lambda *a: None)
    r.deliver_many = lambda items: views.extend(d for _, _, d in items)
    a, b = packet(1, b"A" * 10), packet(2, b"B" * 10)
    r.notices([(1, packet_digest(a))])
    batch = arena([a, b])
    r.datagrams(batch)  # a is announced, b is held
    assert isinstance(views[0], memoryview) and bytes(views[0]) == b"A" * 10
    batch[1].obj[:] = bytes(len(batch[1].obj))  # the reader reuses its buffer
    r.notices([(2, packet_digest(b))])
    assert bytes(views[1]) == b"B" * 10  # held as its own copy


def test_without_deliver_many_each_block_goes_to_deliver_as_bytes() -> None:
    r, got = receiver(batched=False)
    a = packet(5, b"hello")
    r.notices([(5, packet_digest(a))])
    r.datagrams(arena([a]))
    assert got == [(0, 5, b"hello")]
    assert type(got[0][2]) is bytes


def test_a_late_packet_in_a_batch_is_accepted_and_no_longer_lost() -> None:
    clock = Clock()
    got: list[Any] = []
    reports: list[Any] = []
    r = Receiver(clock, SSRC, lambda *a: got.append(a), lambda lost, n: reports.append(n))
    r.startProtocol()
    a = packet(9)
    r.notices([(9, packet_digest(a))])
    clock.advance(0.5)  # LOSS_AFTER passed: reported lost
    assert r.counters["lost"] == 1
    r.datagrams(arena([a, a]))
    assert (r.counters["lost"], r.counters["late"], r.counters["duplicate"]) == (0, 1, 1)
    assert len(got) == 1
    r.stopProtocol()


# -- BatchReader on a real socket -------------------------------------------------


MODES = ["compiled", "ctypes", "single"]  # recvmmsg in C, through ctypes, or recvmsg one by one


def reader_for(
    rx: socket.socket, sink: Any, mode: str, monkeypatch: pytest.MonkeyPatch
) -> BatchReader:
    from mcp2p.transfer import receiver as rx_module

    if mode == "compiled" and rx_module._recv_batch is None:
        pytest.skip("mcp2p._speedups.recv_batch was not built here")
    if mode == "ctypes":
        monkeypatch.setattr(rx_module, "_recv_batch", None)
    reader = BatchReader(rx, sink, mmsg=mode != "single")
    assert (reader._recv is not None) == (mode == "compiled")
    if mode == "single":
        assert not reader.mmsg
    return reader


def sockets() -> tuple[socket.socket, socket.socket, Any]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return rx, tx, rx.getsockname()


@pytest.mark.parametrize("mode", MODES)
def test_batch_reader_drains_every_waiting_datagram_in_order(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rx, tx, addr = sockets()
    with rx, tx:
        sent = [os.urandom(random.Random(i).randint(0, 1500)) for i in range(50)]
        got: list[bytes] = []
        reader = reader_for(
            rx, lambda views: got.extend(bytes(v) for v in views), mode, monkeypatch
        )
        for d in sent:
            tx.sendto(d, addr)
        assert reader.read() == 50
        assert got == sent
        assert reader.read() == 0  # nothing left: EAGAIN is the end of a read
        assert reader.rcvbuf > 0
        assert reader.mmsg == (mode != "single" and sys.platform.startswith("linux"))
        if reader.mmsg:
            assert reader.reads <= 3  # 50 datagrams in two recvmmsg calls, then EAGAIN


def test_batch_reader_falls_back_when_recvmmsg_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mcp2p.transfer import receiver as rx_module

    rx, tx, addr = sockets()
    with rx, tx:
        got: list[bytes] = []
        reader = reader_for(
            rx, lambda views: got.extend(bytes(v) for v in views), "ctypes", monkeypatch
        )
        if not reader.mmsg:
            pytest.skip("no recvmmsg here")

        def refuse(fd: int) -> int:
            raise rx_module._NoMMsg(38)

        monkeypatch.setattr(reader._mm, "receive", refuse)
        for i in range(3):
            tx.sendto(bytes([i]) * 100, addr)
        assert reader.read() == 3 and not reader.mmsg
        assert got == [bytes([i]) * 100 for i in range(3)]


def test_the_compiled_recvmmsg_refuses_what_it_cannot_fill() -> None:
    from mcp2p.transfer import receiver as rx_module

    recv = rx_module._recv_batch
    if recv is None:
        pytest.skip("mcp2p._speedups.recv_batch was not built here")
    rx, tx, addr = sockets()
    with rx, tx:
        fd, view = rx.fileno(), memoryview(bytearray(4 * 2048))
        assert recv(fd, view, 2048, 4) == ([], 0, 0, 0)  # nothing waiting
        for count, slot in ((0, 2048), (65, 64), (4, 0), (5, 2048)):  # 5 slots do not fit
            with pytest.raises(ValueError):
                recv(fd, view, slot, count)
        with pytest.raises(BufferError):
            recv(fd, memoryview(bytes(8192)), 2048, 4)  # read-only
        with pytest.raises(TypeError):
            recv(fd, bytearray(8192), 2048, 4)  # not a memoryview
        with pytest.raises(OSError):
            recv(-1, view, 2048, 4)  # EBADF is raised, not taken for "nothing waiting"


def test_the_compiled_reader_falls_back_to_ctypes_when_recvmmsg_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rx, tx, addr = sockets()
    with rx, tx:
        got: list[bytes] = []
        reader = reader_for(
            rx, lambda views: got.extend(bytes(v) for v in views), "compiled", monkeypatch
        )

        def refuse(*args: Any) -> Any:
            raise OSError(errno.ENOSYS, "Function not implemented")

        reader._recv = refuse
        for i in range(3):
            tx.sendto(bytes([i]) * 100, addr)
        assert reader.read() == 3 and reader.mmsg and reader._mm is not None
        assert got == [bytes([i]) * 100 for i in range(3)]

        def broken(*args: Any) -> Any:
            raise OSError(errno.EBADF, "Bad file descriptor")

        reader._recv, reader._mm = broken, None
        with pytest.raises(OSError):
            reader.read()  # any other error is the caller's, as recvmsg's would be


@pytest.mark.parametrize("mode", MODES)
def test_batch_reader_splits_a_gso_burst_by_its_segment_size(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rx, tx, addr = sockets()
    with rx, tx:
        reader = reader_for(rx, None, mode, monkeypatch)
        segments = [bytes([i]) * 1000 for i in range(7)] + [b"tail" * 10]
        try:
            tx.sendmsg([b"".join(segments)], [(17, 103, (1000).to_bytes(2, "little"))], 0, addr)
        except OSError:
            pytest.skip("no UDP GSO on this kernel")
        got: list[bytes] = []
        reader.sink = lambda views: got.extend(bytes(v) for v in views)
        assert reader.read() == len(segments)
        assert got == segments
        if reader.gro:
            assert reader.reads == 1  # the burst came whole


@pytest.mark.parametrize("mode", MODES)
def test_batch_reader_stops_before_its_buffer_overflows(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from mcp2p.transfer import receiver as rx_module

    monkeypatch.setattr(rx_module, "ARENA", rx_module.ROOM + 3000)
    rx, tx, addr = sockets()
    with rx, tx:
        got: list[bytes] = []
        reader = reader_for(
            rx, lambda views: got.extend(bytes(v) for v in views), mode, monkeypatch
        )
        for i in range(5):
            tx.sendto(bytes([i]) * 1400, addr)
        first = reader.read()
        assert 1 <= first < 5  # the buffer holds a few; the rest waits for the next read
        while reader.read():
            pass
        assert got == [bytes([i]) * 1400 for i in range(5)]


@pytest.mark.parametrize("mode", MODES)
def test_batch_reader_counts_a_datagram_larger_than_its_room_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A datagram cut short by the kernel (MSG_TRUNC) is a counted drop; the
    datagrams around it are read whole."""
    from mcp2p.transfer import receiver as rx_module

    monkeypatch.setattr(rx_module, "ROOM", 4096)
    monkeypatch.setattr(rx_module, "ARENA", 4 * 4096)
    rx, tx, addr = sockets()
    with rx, tx:
        got: list[bytes] = []
        reader = reader_for(
            rx, lambda views: got.extend(bytes(v) for v in views), mode, monkeypatch
        )
        sent = [b"a" * 1400, b"b" * 5000, b"c" * 1400]
        for d in sent:
            tx.sendto(d, addr)
        while reader.read():
            pass
        assert got == [sent[0], sent[2]]
        assert reader.truncated == 1


# -- the store's piece buffers ----------------------------------------------------

BLOCK, PIECE = 16, 64  # as tests/transfer/test_store.py


def open_store(tmp: str, data: bytes) -> tuple[PartialFile, Any]:
    manifest = make_manifest(data)
    Path(tmp, "dl").mkdir(exist_ok=True)
    return PartialFile.open(Path(tmp, "dl"), Path(tmp, "st"), manifest), manifest


def items_of(manifest: Any, data: bytes, indices: list[int]) -> list[tuple[int, int, bytes]]:
    bpp = manifest.layout.blocks_per_piece
    return [(i // bpp, i % bpp, block_of(manifest, data, i)) for i in indices]


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 9 * PIECE),
    seed=st.integers(0, 2**32),
    window=st.integers(0, 4),
    junk=st.lists(
        st.tuples(st.integers(-2, 12), st.integers(-2, 6), st.binary(min_size=BLOCK + 1))
    ),
)
def test_write_blocks_in_any_order_with_junk_completes_the_file(
    size: int, seed: int, window: int, junk: list[tuple[int, int, bytes]]
) -> None:
    """Any order, duplicates, arbitrary (piece, block, bytes) mixed in, and a window
    of 0 to 4 piece buffers (spilling whenever it is full): the file comes out whole
    and each refused item is counted."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    old = buffers.BUFFER_BYTES
    buffers.BUFFER_BYTES = window * PIECE if window else 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            partial, manifest = open_store(tmp, data)
            order = list(range(manifest.layout.blocks)) * 2
            rng.shuffle(order)
            items: list[Any] = items_of(manifest, data, order)
            items += junk  # longer than any block, or no such block: each refused
            rng.shuffle(items)
            failed: set[int] = set()
            refused = 0
            for i in range(0, len(items), 7):
                events, bad = partial.write_blocks(items[i : i + 7])
                failed |= {e.piece for e in events if not e.ok}
                refused += bad
            layout = manifest.layout
            nowhere = [
                j
                for j in junk
                if not (0 <= j[0] < layout.pieces and 0 <= j[1] < layout.blocks_in_piece(j[0]))
            ]
            # a long copy of a block already held is counted a duplicate instead
            assert not failed and len(nowhere) <= refused <= len(junk)
            assert partial.complete
            assert partial.finalize().read_bytes() == data
    finally:
        buffers.BUFFER_BYTES = old


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 7 * 60),
    seed=st.integers(0, 2**32),
    window=st.integers(0, 3),
    batch=st.integers(1, 40),
    junk=st.lists(
        st.tuples(st.integers(-2, 9), st.integers(-2, 5), st.binary(max_size=2 * BLOCK)),
        max_size=30,
    ),
)
def test_write_blocks_in_runs_with_short_last_blocks_and_junk_completes_the_file(
    size: int, seed: int, window: int, batch: int, junk: list[tuple[int, int, bytes]]
) -> None:
    """Blocks mostly in piece order (runs of one piece, as a session sends them)
    with junk of any length between them, pieces of 60 bytes in 16-byte blocks
    (each piece ends in a short block, the file's last piece shorter still):
    every block is stored once, junk never, and the file comes out whole."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    old = buffers.BUFFER_BYTES
    buffers.BUFFER_BYTES = window * 4 * 60 if window else 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "dl").mkdir()
            manifest = make_manifest(data, piece_length=60, block_length=BLOCK)
            partial = PartialFile.open(Path(tmp, "dl"), Path(tmp, "st"), manifest)
            layout = manifest.layout
            blocks = layout.blocks
            order = sorted(range(blocks), key=lambda i: i + rng.randrange(6))
            items: list[Any] = items_of(manifest, data, order + order[: rng.randrange(blocks)])

            def fits(piece: int, block: int, payload: bytes) -> bool:
                if not (0 <= piece < layout.pieces and 0 <= block < layout.blocks_in_piece(piece)):
                    return False
                return len(payload) == layout.block_span(layout.block_index(piece, block))[1]

            junk = [j for j in junk if not fits(*j)]  # what could be a block is not junk
            for j in junk:
                items.insert(rng.randrange(len(items) + 1), j)
            events, refused = [], 0
            for i in range(0, len(items), batch):
                got, bad = partial.write_blocks(items[i : i + batch])
                events += got
                refused += bad
            assert [e.ok for e in events] == [True] * layout.pieces
            assert sorted(e.piece for e in events) == list(range(layout.pieces))
            counters = partial.counters
            assert counters["written"] == blocks and counters["bad_pieces"] == 0
            assert refused + counters["duplicates"] == len(items) - blocks
            assert refused >= sum(
                not (0 <= p < layout.pieces and 0 <= b < layout.blocks_in_piece(p))
                for p, b, _ in junk
            )
            assert partial.finalize().read_bytes() == data
    finally:
        buffers.BUFFER_BYTES = old


def test_a_bad_piece_in_memory_never_touches_the_disk(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(3 * PIECE)
    partial, manifest = open_store(str(tmp_path), data)
    blocks = list(manifest.layout.piece_blocks(1))
    bad = [(1, b, block_of(manifest, data, i)) for b, i in enumerate(blocks)]
    bad[2] = (1, 2, b"X" * BLOCK)
    events, refused = partial.write_blocks(bad)
    assert refused == 0 and [(e.piece, e.ok) for e in events] == [(1, False)]
    part = next((tmp_path / "dl").glob(".*.part"))
    assert part.read_bytes() == bytes(3 * PIECE)  # still all holes
    assert set(blocks) <= partial.missing_blocks()  # wanted again
    partial.close()


def test_the_window_bounds_the_buffers_and_spills_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffers, "BUFFER_BYTES", 4 * PIECE)  # four pieces in memory
    data = random.Random(5).randbytes(8 * PIECE)
    partial, manifest = open_store(str(tmp_path), data)
    bpp = manifest.layout.blocks_per_piece
    # the first block of each of the 8 pieces: 4 buffered, the 4 oldest spilled
    partial.write_blocks(items_of(manifest, data, [p * bpp for p in range(8)]))
    assert partial.buffered == (4, 4)
    part = next((tmp_path / "dl").glob(".*.part"))
    on_disk = part.read_bytes()
    for p in range(8):
        spilled = on_disk[p * PIECE : p * PIECE + BLOCK] == data[p * PIECE : p * PIECE + BLOCK]
        assert spilled == (p < 4)
    # a spilled piece completes: read back into a buffer, verified, written whole
    rest = [p * bpp + b for p in range(8) for b in range(1, bpp)]
    events, _ = partial.write_blocks(items_of(manifest, data, rest))
    assert sorted(e.piece for e in events if e.ok) == list(range(8))
    assert partial.finalize().read_bytes() == data


def test_blocks_in_memory_at_a_crash_are_wanted_again_and_a_clean_close_keeps_them(
    tmp_path: Path,
) -> None:
    data = random.Random(6).randbytes(4 * PIECE)
    partial, manifest = open_store(str(tmp_path), data)
    held = [0, 1, 4, 5]  # half of pieces 0 and 1
    partial.write_blocks(items_of(manifest, data, held))
    partial.flush()
    crash(partial)  # kill -9: the buffers are gone, and the progress never claimed them
    resumed, _ = open_store(str(tmp_path), data)
    assert set(held) <= resumed.missing_blocks()
    resumed.write_blocks(items_of(manifest, data, held))
    resumed.close()  # spilled to disk and recorded
    again, _ = open_store(str(tmp_path), data)
    assert not set(held) & again.missing_blocks()
    others = [i for i in range(manifest.layout.blocks) if i not in held]
    events, _ = again.write_blocks(items_of(manifest, data, others))
    assert all(e.ok for e in events) and again.complete
    assert again.finalize().read_bytes() == data


def test_write_blocks_after_close_is_a_store_error(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(PIECE)
    partial, manifest = open_store(str(tmp_path), data)
    partial.close()
    with pytest.raises(StoreError):
        partial.write_blocks(items_of(manifest, data, [0]))
    assert HEADER_LEN == 22
