"""scan: the compiled and the pure-Python scan of a batch give the same
result on any input, hostile or not, and the receiver works on either."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from hashlib import sha256

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
