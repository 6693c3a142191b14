"""The node's long-term Ed25519 key: made on first start, kept 0600 in the state dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mcp2p.atomicfile import write_atomic
from mcp2p.wire.types import NODE_ID_LEN

KEY_FILE = "node.key"


def node_id_of(public_key: bytes) -> bytes:
    """A node's id: the first 16 bytes of BLAKE3 of its raw public key."""
    return blake3.blake3(b"mcp2p node id\0" + public_key).digest()[:NODE_ID_LEN]


@dataclass(frozen=True)
class NodeIdentity:
    private_key: Ed25519PrivateKey
    public_key: bytes
    node_id: bytes

    @property
    def short(self) -> str:
        return self.node_id.hex()[:12]


def load_or_create(state_dir: Path) -> NodeIdentity:
    """Read ``state_dir/node.key`` or make a new key there (mode 0600)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, 0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return NodeIdentity(key, public, node_id_of(public))
