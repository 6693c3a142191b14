"""Signed key records, as the key servers keep them (pure: no Twisted, no I/O).

A record says "node NODE has Ed25519 key KEY, with these labels, from
ISSUED until EXPIRES (or: this key is revoked)", signed by that key. The
node id is the hash of the key (`mcp2p.trust.keys.node_id_of`), so only the
key's owner can make or revoke a record for its id, and a server can
check every record without trusting whoever handed it over.

Encoding: one line of canonical JSON (keys sorted, no spaces, ASCII only),
at most ``MAX_RECORD`` bytes::

    {"expires":1790000000,"issued":1780000000,"key":"<64 hex>",
     "labels":["alice"],"node":"<32 hex>","revoked":false,"sig":"<128 hex>","v":1}

The signature covers ``SIG_CONTEXT`` + the same canonical JSON without
``sig``. `decode` accepts exactly the canonical form (any other spelling of
the same content is refused, so a record has one encoding and one digest),
checks every type and range, the node id and the signature, and raises
`RecordError` (a `ProtocolError`) with a short ``reason`` otherwise.

Which record wins (`judge`): a newer ``issued`` replaces an older one; a
revocation replaces any record whatever its ``issued`` (a stolen key's
far-future record cannot block its owner's revocation) and is final:
nothing replaces it, and it never expires. An expired record is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mcp2p.errors import ProtocolError
from mcp2p.trust.keys import NodeIdentity, node_id_of
from mcp2p.wire.types import NODE_ID_LEN

VERSION = 1
SIG_CONTEXT = b"mcp2p key record v1\0"
MAX_RECORD = 1024  # bytes of one encoded record
MAX_LABELS = 8
MAX_LABEL = 64
MAX_TIME = 1 << 40  # seconds since the epoch: far beyond any real date
MAX_LIFETIME = 2 * 366 * 86400  # a record is valid at most two years
DEFAULT_LIFETIME = 365 * 86400
KEY_LEN = 32
SIG_LEN = 64
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@:/+=-]{0,63}")
_HEX = re.compile(r"[0-9a-f]*")
_FIELDS = {"v", "node", "key", "labels", "issued", "expires", "revoked", "sig"}

# Why a record is refused: the counters' labels (see KeyStore.rejected).
REASONS = (
    "malformed",  # not the canonical encoding, a bad type or range
    "oversized",  # more than MAX_RECORD bytes
    "forged",  # the node id is not the key's, or the signature does not verify
    "expired",  # expires is in the past
    "revoked",  # the node's key was revoked: nothing replaces that
    "replayed",  # not newer than the record held (an older or the same issued)
    "rate",  # the source sent more than its rate allows
    "full",  # the store holds its maximum number of records
)


class RecordError(ProtocolError):
    """A record refused; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyRecord:
    node_id: bytes
    public_key: bytes
    labels: tuple[str, ...]
    issued: int
    expires: int
    revoked: bool
    signature: bytes

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "node": self.node_id.hex(),
            "key": self.public_key.hex(),
            "labels": list(self.labels),
            "issued": self.issued,
            "expires": self.expires,
            "revoked": self.revoked,
        }

    def signed_bytes(self) -> bytes:
        return SIG_CONTEXT + _canonical(self.body())

    def encode(self) -> bytes:
        return _canonical({**self.body(), "sig": self.signature.hex()})

    def digest(self) -> bytes:
        """16 bytes naming this exact record (for the servers' summaries)."""
        return blake3.blake3(self.encode()).digest()[:16]

    def expired(self, now: float) -> bool:
        return not self.revoked and self.expires <= now

    @property
    def short(self) -> str:
        return self.node_id.hex()[:12]


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_labels(labels: Any) -> tuple[str, ...]:
    """The labels as a tuple, or ValueError saying what is allowed."""
    if not isinstance(labels, list | tuple) or len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    out = []
    for label in labels:
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ValueError(
                f"a label is 1-{MAX_LABEL} characters of letters, digits, space and ._@:/+=- "
                "starting with a letter or digit"
            )
        out.append(label)
    if len(set(out)) != len(out):
        raise ValueError("labels must be distinct")
    return tuple(out)


def make_record(
    identity: NodeIdentity,
    issued: int,
    *,
    lifetime: int = DEFAULT_LIFETIME,
    labels: tuple[str, ...] | list[str] = (),
    revoked: bool = False,
) -> KeyRecord:
    """A record for ``identity``'s own key, signed with it."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime must be in (0, {MAX_LIFETIME}] seconds")
    if not 0 <= issued < MAX_TIME - lifetime:
        raise ValueError("issued out of range")
    unsigned = KeyRecord(
        identity.node_id,
        identity.public_key,
        check_labels(list(labels)),
        int(issued),
        int(issued) + int(lifetime),
        bool(revoked),
        b"",
    )
    signature = identity.private_key.sign(unsigned.signed_bytes())
    record = replace(unsigned, signature=signature)
    if len(record.encode()) > MAX_RECORD:
        raise ValueError(f"record over {MAX_RECORD} bytes")
    return record


def make_revocation(identity: NodeIdentity, issued: int) -> KeyRecord:
    """A signed revocation of ``identity``'s key: final once a server holds it."""
    return make_record(identity, issued, lifetime=MAX_LIFETIME, revoked=True)


def _hex(obj: dict[str, Any], name: str, length: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str) or len(value) != 2 * length or not _HEX.fullmatch(value):
        raise RecordError("malformed", f"{name} is not {length} bytes of lowercase hex")
    return bytes.fromhex(value)


def _int(obj: dict[str, Any], name: str) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value < MAX_TIME:
        raise RecordError("malformed", f"{name} is not an integer in [0, 2^40)")
    return value


def decode(data: bytes) -> KeyRecord:
    """A verified record from its canonical encoding, or RecordError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RecordError("malformed", "not bytes")
    data = bytes(data)
    if len(data) > MAX_RECORD:
        raise RecordError("oversized", f"{len(data)} bytes > {MAX_RECORD}")
    try:
        obj = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RecordError("malformed", "not ASCII JSON") from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        raise RecordError("malformed", "not an object with exactly the record's fields")
    if type(obj["v"]) is not int or obj["v"] != VERSION:
        raise RecordError("malformed", "unknown version")
    node_id = _hex(obj, "node", NODE_ID_LEN)
    key = _hex(obj, "key", KEY_LEN)
    signature = _hex(obj, "sig", SIG_LEN)
    issued, expires = _int(obj, "issued"), _int(obj, "expires")
    if not issued < expires <= issued + MAX_LIFETIME:
        raise RecordError("malformed", "expires must be after issued, within two years")
    if type(obj["revoked"]) is not bool:
        raise RecordError("malformed", "revoked is not a boolean")
    try:
        labels = check_labels(obj["labels"])
    except ValueError as e:
        raise RecordError("malformed", str(e)) from None
    record = KeyRecord(node_id, key, labels, issued, expires, obj["revoked"], signature)
    if record.encode() != data:
        raise RecordError("malformed", "not the canonical encoding")
    if node_id_of(key) != node_id:
        raise RecordError("forged", "the node id is not the key's")
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, record.signed_bytes())
    except (InvalidSignature, ValueError):
        raise RecordError("forged", "bad signature") from None
    return record


def judge(held: KeyRecord | None, new: KeyRecord, now: float) -> None:
    """Raise RecordError when ``new`` must not replace ``held`` (both verified)."""
    if held is not None and held.revoked:
        raise RecordError("revoked", f"{new.short} was revoked")
    if new.expired(now):
        raise RecordError("expired", f"{new.short} expired at {new.expires}")
    if held is not None and new.issued <= held.issued and not new.revoked:
        raise RecordError("replayed", f"{new.short} issued {new.issued} <= held {held.issued}")


def parse_node_id(text: str) -> bytes:
    """A node id from 32 hex digits (``0x`` allowed, case ignored), or ValueError."""
    value = text.strip().lower()
    value = value[2:] if value.startswith("0x") else value
    if len(value) != 2 * NODE_ID_LEN or not _HEX.fullmatch(value):
        raise ValueError(f"a node id is {2 * NODE_ID_LEN} hex digits")
    return bytes.fromhex(value)
