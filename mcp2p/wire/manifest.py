"""The manifest: what a file is, signed by the SN that serves it (DESIGN.md 2, 5.3, 6).

A CN fetches it over the control channel and accepts it only if
``verify_manifest`` passes: the piece hashes hash up (``merkle_root``) to
the content id it asked for, and the SN's node key signed every field.

Binary, network byte order, canonical (``decode_manifest`` is the exact
inverse of ``encode_manifest``)::

    size   field
    3      magic b"M2M"
    1      version = 1
    32     content_id
    1+n    name (u8 length + UTF-8)
    8      size
    4      piece_length
    2      block_length
    4      piece count p (must equal the layout's, see ``Layout.pieces``)
    32*p   piece hashes (BLAKE3 leaf hashes, ``mcp2p.wire.merkle.hash_piece``)
    32     public_key (raw Ed25519)
    64     signature

The signature is Ed25519 over ``SIGNATURE_CONTEXT`` + every byte before the
signature, so it covers the signer's public key too, and the context keeps
a manifest signature from being valid for anything else the key signs.

A 4 GiB file in 1 MiB pieces has 4096 hashes (about 128 KiB); decoding is
one pass over the bytes.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mcp2p.errors import ProtocolError
from mcp2p.wire.layout import Layout
from mcp2p.wire.merkle import HASH_LEN, merkle_root
from mcp2p.wire.types import (
    CONTENT_ID_LEN,
    MAX_BLOCK_LENGTH,
    MAX_PIECE_LENGTH,
    MAX_SIZE,
    MIN_BLOCK_LENGTH,
    PUBLIC_KEY_LEN,
    _check_bytes,
    _check_int,
    check_name,
)

SIGNATURE_LEN = 64
SIGNATURE_CONTEXT = b"mcp2p manifest v1\0"
MAX_PIECES = 0xFFFFFFFF

_MAGIC = b"M2M"
_VERSION = 1
_HEADER = struct.Struct("!3sB32s")  # magic, version, content_id
_SIZES = struct.Struct("!QIHI")  # size, piece_length, block_length, piece count
_TAIL_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN


@dataclass(frozen=True)
class Manifest:
    content_id: bytes
    name: str
    size: int
    piece_length: int
    block_length: int
    piece_hashes: tuple[bytes, ...]
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("content_id", self.content_id, CONTENT_ID_LEN)
        check_name(self.name)
        _check_int("size", self.size, 0, MAX_SIZE)
        _check_int("block_length", self.block_length, MIN_BLOCK_LENGTH, MAX_BLOCK_LENGTH)
        _check_int("piece_length", self.piece_length, self.block_length, MAX_PIECE_LENGTH)
        if not isinstance(self.piece_hashes, tuple):
            raise ValueError("piece_hashes must be a tuple")
        pieces = self.layout.pieces
        if len(self.piece_hashes) != pieces:
            raise ValueError(
                f"{len(self.piece_hashes)} piece hashes for a layout of {pieces} pieces"
            )
        for h in self.piece_hashes:
            if not isinstance(h, bytes) or len(h) != HASH_LEN:
                raise ValueError(f"every piece hash must be {HASH_LEN} bytes")
        _check_bytes("public_key", self.public_key, PUBLIC_KEY_LEN)
        _check_bytes("signature", self.signature, SIGNATURE_LEN)

    @property
    def layout(self) -> Layout:
        return Layout(self.size, self.piece_length, self.block_length)


def _body(m: Manifest) -> bytes:
    """Every encoded byte before the signature."""
    name = m.name.encode("utf-8")
    return b"".join(
        [
            _HEADER.pack(_MAGIC, _VERSION, m.content_id),
            bytes([len(name)]),
            name,
            _SIZES.pack(m.size, m.piece_length, m.block_length, len(m.piece_hashes)),
            b"".join(m.piece_hashes),
            m.public_key,
        ]
    )


def _signed_message(body: bytes) -> bytes:
    return SIGNATURE_CONTEXT + body


def sign_manifest(
    content_id: bytes,
    name: str,
    size: int,
    piece_length: int,
    block_length: int,
    piece_hashes: Sequence[bytes],
    private_key: Ed25519PrivateKey,
) -> Manifest:
    """A manifest signed with ``private_key``.

    ValueError for a field out of range or a content id that is not the
    Merkle root of ``piece_hashes``: never sign what no one could verify.
    """
    public_key = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    unsigned = Manifest(
        content_id=content_id,
        name=name,
        size=size,
        piece_length=piece_length,
        block_length=block_length,
        piece_hashes=tuple(piece_hashes),
        public_key=public_key,
        signature=bytes(SIGNATURE_LEN),
    )
    if merkle_root(unsigned.piece_hashes) != content_id:
        raise ValueError("content_id is not the Merkle root of piece_hashes")
    signature = private_key.sign(_signed_message(_body(unsigned)))
    return replace(unsigned, signature=signature)


def encode_manifest(m: Manifest) -> bytes:
    return _body(m) + m.signature


def decode_manifest(
    data: bytes, *, max_piece_length: int = MAX_PIECE_LENGTH, max_size: int = MAX_SIZE
) -> Manifest:
    """The manifest in ``data``, or ProtocolError; never any other exception.

    Only the format is checked here; ``verify_manifest`` decides trust.
    ``max_piece_length`` and ``max_size`` are the receiver's own limits (a CN's
    ``[fetching] max_piece_length`` and ``max_file_size``): a manifest over them
    is refused before its piece hashes are looked at.
    """
    data = bytes(data)
    end = len(data)
    if end < _HEADER.size + 1:
        raise ProtocolError(f"truncated: a manifest of {end} bytes")
    magic, version, content_id = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != _VERSION:
        raise ProtocolError(f"unknown manifest version {version}")
    offset = _HEADER.size
    name_len = data[offset]
    offset += 1
    if offset + name_len + _SIZES.size > end:
        raise ProtocolError(f"truncated: a manifest of {end} bytes")
    try:
        name = data[offset : offset + name_len].decode("utf-8", "strict")
    except UnicodeDecodeError as e:
        raise ProtocolError("name is not valid UTF-8") from e
    offset += name_len
    size, piece_length, block_length, count = _SIZES.unpack_from(data, offset)
    offset += _SIZES.size
    # Check the count against the layout before trusting it for any length.
    try:
        _check_int("block_length", block_length, MIN_BLOCK_LENGTH, MAX_BLOCK_LENGTH)
        _check_int("piece_length", piece_length, block_length, MAX_PIECE_LENGTH)
        _check_int("size", size, 0, MAX_SIZE)
        pieces = Layout(size, piece_length, block_length).pieces
    except ValueError as e:
        raise ProtocolError(f"invalid Manifest: {e}") from e
    if piece_length > max_piece_length:
        raise ProtocolError(f"pieces of {piece_length} bytes, over the limit of {max_piece_length}")
    if size > max_size:
        raise ProtocolError(f"a file of {size} bytes, over the limit of {max_size}")
    if count != pieces:
        raise ProtocolError(f"{count} piece hashes for a layout of {pieces} pieces")
    hashes_end = offset + count * HASH_LEN
    if hashes_end + _TAIL_LEN != end:
        raise ProtocolError(
            f"a manifest of {count} pieces is {hashes_end + _TAIL_LEN} bytes, got {end}"
        )
    piece_hashes = tuple(data[i : i + HASH_LEN] for i in range(offset, hashes_end, HASH_LEN))
    public_key = data[hashes_end : hashes_end + PUBLIC_KEY_LEN]
    signature = data[hashes_end + PUBLIC_KEY_LEN :]
    try:
        return Manifest(
            content_id=content_id,
            name=name,
            size=size,
            piece_length=piece_length,
            block_length=block_length,
            piece_hashes=piece_hashes,
            public_key=public_key,
            signature=signature,
        )
    except ValueError as e:
        raise ProtocolError(f"invalid Manifest: {e}") from e


def verify_manifest(m: Manifest, content_id: bytes, public_key: bytes) -> None:
    """Raise ProtocolError unless ``m`` is the manifest of ``content_id`` signed by ``public_key``.

    ``content_id`` is what the CN asked for, ``public_key`` the key of the
    SN it asked (from its TLS certificate or OFFER), never the manifest's own.
    """
    if m.content_id != content_id:
        raise ProtocolError("manifest is for another content id")
    if m.public_key != public_key:
        raise ProtocolError("manifest is signed by another key")
    if merkle_root(m.piece_hashes) != content_id:
        raise ProtocolError("piece hashes do not hash up to the content id")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(m.signature, _signed_message(_body(m)))
    except (InvalidSignature, ValueError) as e:
        raise ProtocolError("bad manifest signature") from e
