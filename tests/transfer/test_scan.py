"""scan: the compiled and the pure-Python scan of a batch give the same
result on any input, hostile or not, and the receiver works on either."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from hashlib import sha256
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.transfer import scan as scanning
from mcp2p.transfer.scan import MAX_DATAGRAM, scan_python
from mcp2p.wire.rtp import HEADER_LEN, pack_header, pack_list

SSRC = 0x1234ABCD

compiled = pytest.mark.skipif(
    scanning.scan_compiled is None, reason="mcp2p._speedups was not built here"
)


def data_packet(seq: int, payload: bytes = b"x" * 100, ssrc: int = SSRC) -> bytes:
    return pack_header(seq & 0xFFFF, seq & 0xFFFFFFFF, ssrc, seq % 7, seq % 5) + payload


def test_the_pure_python_scan_sorts_a_batch() -> None:
    good = data_packet(7)
    batch = [
        good,
        b"\x80\x60" + b"\x00" * 10,  # too short
        data_packet(8, ssrc=SSRC ^ 1),  # another session's
        pack_list(3, SSRC, b"\x01" * 16),  # a digest list
        bytearray(data_packet(9)),
        memoryview(b"\x90\x60" + good[2:]),  # not RTP version 2 without extensions
        good[:13] + b"\x01" + good[14:],  # the reserved byte set
        b"\x00" * (MAX_DATAGRAM + 1),  # too long
    ]
    malformed, foreign, lists, candidates = scan_python(batch, SSRC)
    assert (malformed, foreign, lists) == (4, 1, [3])
    assert candidates == [
        (0, 7, sha256(good).digest()[:8], 0, 2),
        (4, 9, sha256(batch[4]).digest()[:8], 2, 4),
    ]


@pytest.mark.parametrize("ssrc", [-1, 1 << 32, (1 << 64) + 5])
def test_an_ssrc_beyond_32_bits_is_refused(ssrc: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        scan_python([], ssrc)
    if scanning.scan_compiled is not None:
        with pytest.raises((ValueError, OverflowError)):
            scanning.scan_compiled([], ssrc)


datagrams = st.one_of(
    st.binary(max_size=64),  # short and random
    st.builds(  # a header, maybe damaged, and a payload
        lambda seq, ssrc, payload, damage, at: _damaged(
            data_packet(seq, payload, ssrc), damage, at
        ),
        st.integers(0, 2**32 - 1),
        st.sampled_from([SSRC, SSRC ^ 1, 0]),
        st.binary(max_size=1500),
        st.booleans(),
        st.integers(0, HEADER_LEN - 1),
    ),
    st.builds(
        lambda first, digests: pack_list(first, SSRC, digests),
        st.integers(0, 2**32 - 1),
        st.integers(1, 20).map(lambda n: b"\x07" * 8 * n),
    ),
)


def _damaged(packet: bytes, damage: bool, at: int) -> bytes:
    if not damage:
        return packet
    return packet[:at] + bytes([packet[at] ^ 0xFF]) + packet[at + 1 :]


@compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(datagrams, max_size=40), st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_compiled_and_pure_python_scans_agree(batch: list[bytes], kind: str) -> None:
    wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind]
    wrapped = [wrap(d) for d in batch]
    assert scanning.scan_compiled is not None
    assert scanning.scan_compiled(wrapped, SSRC) == scan_python(wrapped, SSRC)


@compiled
def test_the_compiled_scan_takes_the_largest_datagram_and_refuses_one_byte_more() -> None:
    largest = data_packet(1, b"\x00" * (MAX_DATAGRAM - HEADER_LEN))
    assert scanning.scan_compiled is not None
    result = scanning.scan_compiled([largest, largest + b"\x00"], SSRC)
    assert result == scan_python([largest, largest + b"\x00"], SSRC)
    assert result[0] == 1 and len(result[3]) == 1


@compiled
@pytest.mark.parametrize("bad", [[object()], [1, 2], "not a list of buffers", None])
def test_the_compiled_scan_refuses_what_is_not_a_batch_of_buffers(bad: object) -> None:
    assert scanning.scan_compiled is not None
    with pytest.raises(TypeError):
        scanning.scan_compiled(bad, SSRC)  # type: ignore[arg-type]


def test_the_compiled_scan_is_built_in_ci() -> None:
    # CI builds it (make install has a compiler there): a build that failed
    # must not pass unseen as the pure-Python fallback.
    if os.environ.get("CI") != "true" or os.environ.get("MCP2P_PURE_PYTHON"):
        pytest.skip("only CI must have built it")
    assert scanning.COMPILED


def test_mcp2p_pure_python_chooses_the_fallback() -> None:
    code = "from mcp2p.transfer import scan; print(scan.COMPILED, scan.scan is scan.scan_python)"
    env = dict(os.environ, MCP2P_PURE_PYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True"]


def test_struct_layout_the_compiled_scan_relies_on() -> None:
    # _speedups.c reads the SSRC at byte 8, the timestamp (seq) at 4, the
    # reserved byte at 13, piece at 14 and symbol at 18, all big-endian.
    packet = data_packet(0x01020304)
    assert struct.unpack_from("!I", packet, 4)[0] == 0x01020304
    assert struct.unpack_from("!I", packet, 8)[0] == SSRC
    assert packet[13] == 0
    assert struct.unpack_from("!II", packet, 14) == (0x01020304 % 7, 0x01020304 % 5)


# -- accept: the usual case of Receiver.datagrams, compiled -----------------------


def _rings(size: int = 16) -> tuple[Any, bytearray]:
    from array import array

    return array("q", [-1]) * size, bytearray(8 * size)


def _notices(entries: dict[int, bytes], size: int = 16) -> Any:
    from mcp2p.transfer.notices import Notices

    notices = Notices(size)
    for seq, digest in entries.items():
        notices.add(seq, digest, 1.0)
    return notices


@compiled
def test_compiled_accept_takes_the_announced_and_leaves_the_rest_in_order() -> None:
    accept = scanning.accept
    assert accept is not None
    packets = [data_packet(s, bytes([s]) * 30) for s in (3, 4, 5, 6, 20)]
    batch = [memoryview(bytearray(p)) for p in packets]
    _, _, _, candidates = scan_python(batch, SSRC)
    digest = {c[1]: c[2] for c in candidates}
    # 4 announced with another digest (a forgery, or a liar); 20 shares 4's slot
    notices = _notices({3: digest[3], 4: b"\x00" * 8, 6: digest[6], 98: b"\x01" * 8})
    seqs, digests = _rings()
    items, rest, highest = accept(
        batch, candidates, notices.seqs, notices.digests, seqs, digests, 5
    )
    assert [(p, s, bytes(d)) for p, s, d in items] == [
        (3 % 7, 3 % 5, bytes([3]) * 30),
        (6 % 7, 6 % 5, bytes([6]) * 30),
    ]
    assert all(isinstance(d, memoryview) for _, _, d in items)  # views, not copies
    assert [c[1] for c in rest] == [4, 5, 20] and rest == [
        c for c in candidates if c[1] in (4, 5, 20)
    ]
    assert highest == 6
    notices.count -= len(items)  # as the receiver does
    assert [seq for seq, _, _ in notices.items()] == [4, 98] and len(notices) == 2
    assert notices.get(3) is None and notices.get(4) == b"\x00" * 8
    assert seqs[3] == 3 and seqs[6] == 6 and seqs[4] == -1
    assert digests[24:32] == digest[3] and digests[48:56] == digest[6]


@compiled
def test_compiled_accept_leaves_odd_candidates_to_the_caller() -> None:
    accept = scanning.accept
    assert accept is not None
    good = data_packet(1)
    d = sha256(good).digest()[:8]
    notices = _notices({1: d})
    odd: list[Any] = [
        (5, 1, d, 0, 0),  # no such datagram in the batch
        (-1, 1, d, 0, 0),
        (0, -1, d, 0, 0),  # a negative seq: slot 15 holds 0, which is -1 + 1
        (0, 15, d, 0, 0),  # not announced
        (0, 17, d, 0, 0),  # 1's slot, another seq
        (0, 2**32 + 1, d, 0, 0),  # beyond the sequence space, 1's slot
        (0, 2**70, d, 0, 0),  # beyond int64
        (0, 1, d[:7], 0, 0),  # a short digest
        (0, 1, bytearray(d), 0, 0),  # not bytes
        (0, 1, d, 0),  # not five fields
        [0, 1, d, 0, 0],  # not a tuple
        "junk",
    ]
    seqs, digests = _rings()
    items, rest, highest = accept([good], odd, notices.seqs, notices.digests, seqs, digests, -1)
    assert items == [] and rest == odd and highest == -1
    assert notices.get(1) == d and bytes(seqs.tobytes()) == _rings()[0].tobytes()


@compiled
@pytest.mark.parametrize(
    "seqs, digests",
    [
        ("array('q', [-1]) * 12", "bytearray(96)"),  # not a power of two
        ("array('q', [-1]) * 16", "bytearray(120)"),  # digests of another size
        ("array('i', [-1]) * 16", "bytearray(128)"),  # not int64
        ("array('d', [0.0]) * 16", "bytearray(128)"),
        ("bytearray(128)", "bytearray(128)"),
        ("array('q', [-1]) * 16", "bytes(128)"),  # read-only
    ],
)
def test_compiled_accept_refuses_rings_of_the_wrong_shape(seqs: str, digests: str) -> None:
    from array import array  # noqa: F401 - used by the eval'd parameters

    accept = scanning.accept
    assert accept is not None
    good = _rings()
    with pytest.raises((ValueError, TypeError, BufferError)):
        accept([], [], eval(seqs), eval(digests), *good, -1)
    with pytest.raises((ValueError, TypeError, BufferError)):
        accept([], [], *good, eval(seqs), eval(digests), -1)


@compiled
def test_compiled_accept_refuses_candidates_that_are_not_a_list() -> None:
    accept = scanning.accept
    assert accept is not None
    with pytest.raises(TypeError):
        accept([], (), *_rings(), *_rings(), -1)  # type: ignore[arg-type]


# -- make_packets: the SN's packets and digests, compiled ------------------------


_payloads = st.one_of(
    st.binary(max_size=1500),
    st.binary(max_size=1500).map(bytearray),
    st.binary(max_size=1500).map(memoryview),
)


@compiled
@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**40),
    st.integers(0, 2**32 - 1),
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), _payloads), max_size=40
    ),
)
def test_compiled_make_packets_agrees_with_its_python_twin(
    seq0: int, ssrc: int, symbols: list[tuple[int, int, Any]]
) -> None:
    from mcp2p.core.speedups import compiled as load
    from mcp2p.wire.rtp import decode_packet, make_packets, packet_digest

    made = load("make_packets")
    assert made is not None
    packets, digests = made(seq0, ssrc, symbols)
    assert (packets, digests) == make_packets(seq0, ssrc, symbols)
    assert all(type(p) is bytes for p in packets) and type(digests) is bytes
    for k, (packet, (piece, symbol, payload)) in enumerate(zip(packets, symbols, strict=True)):
        p = decode_packet(packet)
        seq = seq0 + k
        assert (p.seq, p.timestamp, p.ssrc) == (seq & 0xFFFF, seq & 0xFFFFFFFF, ssrc)
        assert (p.piece, p.symbol, p.payload) == (piece, symbol, bytes(payload))
        assert digests[8 * k : 8 * k + 8] == packet_digest(packet)


@compiled
@pytest.mark.parametrize(
    "seq0, ssrc, symbols",
    [
        (-1, 1, []),
        (0, 2**32, []),
        (0, 1, [(2**32, 0, b"x")]),
        (0, 1, [(0, -1, b"x")]),
        (0, 1, [(0, 0, "not a buffer")]),
        (0, 1, [(0, 0)]),
        (0, 1, [(0, 0, b"x" * 65536)]),
    ],
)
def test_compiled_make_packets_refuses_what_does_not_fit(
    seq0: int, ssrc: int, symbols: list[Any]
) -> None:
    from mcp2p.core.speedups import compiled as load

    made = load("make_packets")
    assert made is not None
    with pytest.raises((ValueError, TypeError, OverflowError)):
        made(seq0, ssrc, symbols)
