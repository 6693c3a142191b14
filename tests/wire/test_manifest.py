"""Manifests: round trips, signatures, and a decoder that only raises ProtocolError."""

from __future__ import annotations

import dataclasses
import struct
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.layout import Layout
from mcp2p.wire.manifest import (
    SIGNATURE_CONTEXT,
    Manifest,
    decode_manifest,
    encode_manifest,
    sign_manifest,
    verify_manifest,
)
from mcp2p.wire.merkle import hash_piece, merkle_root
from mcp2p.wire.types import MAX_BLOCK_LENGTH, MIN_BLOCK_LENGTH

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_PUBLIC = OTHER_KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)

_name_chars = st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\x7f")
names = st.text(_name_chars, min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))


def hashes_for(layout: Layout) -> list[bytes]:
    return [hash_piece(i.to_bytes(4, "big")) for i in range(layout.pieces)]


def make(size: int = 10_000, piece_length: int = 4096, block_length: int = 1024) -> Manifest:
    layout = Layout(size, piece_length, block_length)
    hashes = hashes_for(layout)
    return sign_manifest(
        merkle_root(hashes), "file.bin", size, piece_length, block_length, hashes, KEY
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    block_length = draw(st.integers(MIN_BLOCK_LENGTH, MAX_BLOCK_LENGTH))
    piece_length = draw(st.integers(block_length, 1 << 30))
    size = draw(st.integers(0, piece_length * 40))
    layout = Layout(size, piece_length, block_length)
    hashes = draw(
        st.lists(
            st.binary(min_size=32, max_size=32),
            min_size=layout.pieces,
            max_size=layout.pieces,
        )
    )
    return sign_manifest(
        merkle_root(hashes), draw(names), size, piece_length, block_length, hashes, KEY
    )


# -- round trips and format ---------------------------------------------------


@given(manifests())
@settings(max_examples=50)
def test_round_trip_and_verify(m: Manifest) -> None:
    data = encode_manifest(m)
    assert decode_manifest(data) == m
    verify_manifest(decode_manifest(data), m.content_id, PUBLIC)


def test_layout_and_fields() -> None:
    m = make()
    assert m.layout == Layout(10_000, 4096, 1024)
    assert m.layout.pieces == len(m.piece_hashes) == 3
    assert m.public_key == PUBLIC
    assert len(m.signature) == 64
    assert isinstance(m.piece_hashes, tuple)


def test_exact_layout_of_the_bytes() -> None:
    m = make()
    data = encode_manifest(m)
    assert data[:4] == b"M2M\x01"
    assert data[4:36] == m.content_id
    assert data[36] == len(b"file.bin") and data[37:45] == b"file.bin"
    assert struct.unpack("!QIHI", data[45:63]) == (10_000, 4096, 1024, 3)
    assert data[63 : 63 + 96] == b"".join(m.piece_hashes)
    assert data[-96:-64] == PUBLIC
    assert data[-64:] == m.signature
    assert len(data) == 63 + 96 + 96
    # The signature covers every byte before it, under the context string.
    KEY.public_key().verify(m.signature, SIGNATURE_CONTEXT + data[:-64])


def test_empty_file_has_one_piece() -> None:
    h = hash_piece(b"")
    m = sign_manifest(h, "empty", 0, 1 << 20, 1024, [h], KEY)
    assert decode_manifest(encode_manifest(m)) == m
    verify_manifest(m, h, PUBLIC)


def test_large_manifest_decodes_in_one_pass() -> None:
    """4 GiB in 1 MiB pieces, then 16x that: decoding time grows linearly."""
    timings = []
    for size in (4 << 30, 64 << 30):
        layout = Layout(size, 1 << 20, 1024)
        hashes = [i.to_bytes(32, "big") for i in range(layout.pieces)]
        m = sign_manifest(merkle_root(hashes), "big", size, 1 << 20, 1024, hashes, KEY)
        data = encode_manifest(m)
        start = time.perf_counter()
        assert decode_manifest(data) == m
        timings.append(time.perf_counter() - start)
    assert len(m.piece_hashes) == 65536
    # Quadratic slicing would make the second 256x slower; linear is ~16x.
    assert timings[1] < 100 * timings[0] + 0.05


# -- the decoder --------------------------------------------------------------


@given(st.binary(max_size=400))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        m = decode_manifest(data)
    except ProtocolError:
        return
    assert encode_manifest(m) == data


@given(st.binary(max_size=300))
def test_decode_arbitrary_tail(tail: bytes) -> None:
    try:
        decode_manifest(b"M2M\x01" + tail)
    except ProtocolError:
        pass


def test_every_truncation_is_refused() -> None:
    data = encode_manifest(make())
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_manifest(data[:n])
    with pytest.raises(ProtocolError):
        decode_manifest(data + b"\x00")


@given(st.data())
@settings(max_examples=200)
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    """A changed byte fails to decode, or the result fails to verify."""
    m = make()
    raw = bytearray(encode_manifest(m))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ProtocolError):
        verify_manifest(decode_manifest(bytes(raw)), m.content_id, PUBLIC)


@pytest.mark.parametrize(
    "offset, value, match",
    [
        (0, b"M2X", "magic"),
        (3, b"\x02", "version"),
        (37, b"\xff", "UTF-8"),
        (61, b"\x00\x04", "4 piece hashes"),  # wrong count for the layout
        (57, b"\x00\x08", "block_length"),  # 8 < MIN_BLOCK_LENGTH
    ],
)
def test_decode_refuses(offset: int, value: bytes, match: str) -> None:
    raw = bytearray(encode_manifest(make()))
    raw[offset : offset + len(value)] = value
    with pytest.raises(ProtocolError, match=match):
        decode_manifest(bytes(raw))


def test_decode_refuses_an_empty_name() -> None:
    raw = encode_manifest(make())
    with pytest.raises(ProtocolError, match="name"):
        decode_manifest(raw[:36] + b"\x00" + raw[45:])


def test_huge_claimed_count_is_refused_before_reading() -> None:
    # A layout of 2**32 - 1 pieces, and no bytes for them.
    body = (
        b"M2M\x01"
        + bytes(32)
        + b"\x01a"
        + struct.pack("!QIHI", 0xFFFFFFFF * 16, 16, 16, 0xFFFFFFFF)
    )
    with pytest.raises(ProtocolError, match="bytes"):
        decode_manifest(body + bytes(96))


# -- verification -------------------------------------------------------------


def test_verify_refuses_another_content_id() -> None:
    m = make()
    with pytest.raises(ProtocolError, match="content id"):
        verify_manifest(m, bytes(32), PUBLIC)


def test_verify_refuses_another_key() -> None:
    m = make()
    with pytest.raises(ProtocolError, match="another key"):
        verify_manifest(m, m.content_id, OTHER_PUBLIC)


def test_verify_refuses_hashes_that_do_not_make_the_root() -> None:
    m = make()
    forged = dataclasses.replace(m, piece_hashes=(bytes(32),) + m.piece_hashes[1:])
    with pytest.raises(ProtocolError, match="hash up"):
        verify_manifest(forged, m.content_id, PUBLIC)


def test_verify_refuses_a_bad_signature() -> None:
    m = make()
    forged = dataclasses.replace(m, signature=bytes(64))
    with pytest.raises(ProtocolError, match="signature"):
        verify_manifest(forged, m.content_id, PUBLIC)


def test_verify_refuses_changed_fields() -> None:
    m = make()
    for changes in ({"name": "other.bin"}, {"size": 9999}, {"block_length": 2048}):
        forged = dataclasses.replace(m, **changes)
        with pytest.raises(ProtocolError, match="signature"):
            verify_manifest(forged, m.content_id, PUBLIC)


def test_verify_refuses_a_re_signed_manifest_under_the_claimed_key() -> None:
    """Another signer's manifest cannot be passed off by swapping in the key."""
    m = make()
    theirs = sign_manifest(
        m.content_id, m.name, m.size, m.piece_length, m.block_length, m.piece_hashes, OTHER_KEY
    )
    verify_manifest(theirs, m.content_id, OTHER_PUBLIC)
    with pytest.raises(ProtocolError):
        verify_manifest(dataclasses.replace(theirs, public_key=PUBLIC), m.content_id, PUBLIC)


def test_verify_refuses_an_invalid_public_key() -> None:
    m = make()
    bogus = b"\xff" * 32
    with pytest.raises(ProtocolError):
        verify_manifest(dataclasses.replace(m, public_key=bogus), m.content_id, bogus)


# -- construction -------------------------------------------------------------


def test_sign_refuses_a_content_id_that_is_not_the_root() -> None:
    layout = Layout(100, 64, 16)
    with pytest.raises(ValueError, match="Merkle root"):
        sign_manifest(bytes(32), "x", 100, 64, 16, hashes_for(layout), KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"content_id": bytes(31)},
        {"name": ""},
        {"name": "a/b"},
        {"size": -1},
        {"block_length": 8},
        {"block_length": 8192},  # > piece_length
        {"piece_length": 1 << 31},
        {"piece_hashes": ()},
        {"piece_hashes": [bytes(32)] * 3},  # not a tuple
        {"piece_hashes": (bytes(32), bytes(32), bytes(31))},
        {"public_key": bytes(31)},
        {"signature": bytes(63)},
    ],
)
def test_manifest_validates(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(make(), **changes)  # type: ignore[arg-type]
