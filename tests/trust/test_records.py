"""Key records: canonical round trip, strict decode, signatures, and which record wins."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.trust import records
from mcp2p.trust.keys import NodeIdentity, load_or_create
from mcp2p.trust.records import KeyRecord, RecordError

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> NodeIdentity:
    return load_or_create(tmp_path_factory.mktemp("alice"))


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> NodeIdentity:
    return load_or_create(tmp_path_factory.mktemp("mallory"))


def _identity() -> NodeIdentity:
    import tempfile

    return load_or_create(Path(tempfile.mkdtemp()))


IDENTITY = _identity()
labels = st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9 ._@-]{0,20}", fullmatch=True), max_size=8, unique=True
)


@given(
    issued=st.integers(0, 2**39),
    lifetime=st.integers(1, records.MAX_LIFETIME),
    labels=labels,
    revoked=st.booleans(),
)
def test_round_trip(issued: int, lifetime: int, labels: list[str], revoked: bool) -> None:
    record = records.make_record(
        IDENTITY, issued, lifetime=lifetime, labels=labels, revoked=revoked
    )
    data = record.encode()
    assert len(data) <= records.MAX_RECORD and b"\n" not in data
    assert records.decode(data) == record
    assert record.node_id == IDENTITY.node_id


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_record_or_protocol_error(data: bytes) -> None:
    try:
        record = records.decode(data)
    except ProtocolError as e:
        assert isinstance(e, RecordError) and e.reason in records.REASONS
    else:
        assert isinstance(record, KeyRecord)


@given(st.data())
def test_any_change_to_a_record_is_refused(data: st.DataObject) -> None:
    encoded = bytearray(records.make_record(IDENTITY, NOW, labels=["alice"]).encode())
    i = data.draw(st.integers(0, len(encoded) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[i]))
    encoded[i] = new
    with pytest.raises(RecordError) as e:
        records.decode(bytes(encoded))
    assert e.value.reason in ("malformed", "forged")


def test_forged_signature_and_foreign_key(alice: NodeIdentity, mallory: NodeIdentity) -> None:
    good = records.make_record(alice, NOW)
    # Mallory signs a record for Alice's node id with her own key
    body = {**good.body(), "key": mallory.public_key.hex()}
    forged = replace(good, public_key=mallory.public_key)
    sig = mallory.private_key.sign(forged.signed_bytes())
    data = json.dumps({**body, "sig": sig.hex()}, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(RecordError, match="node id") as e:
        records.decode(data)
    assert e.value.reason == "forged"
    # Alice's key and id, but a later expiry signed by nobody
    stretched = replace(good, expires=good.expires + 1).encode()
    with pytest.raises(RecordError, match="signature") as e:
        records.decode(stretched)
    assert e.value.reason == "forged"


def test_non_canonical_spellings_are_refused(alice: NodeIdentity) -> None:
    good = records.make_record(alice, NOW)
    obj = json.loads(good.encode())
    for bad in (
        json.dumps(obj, sort_keys=True).encode(),  # spaces
        json.dumps(dict(reversed(obj.items())), separators=(",", ":")).encode(),  # unsorted
        good.encode() + b"\n",
        good.encode().replace(good.node_id.hex().encode(), good.node_id.hex().upper().encode()),
        json.dumps(
            {**obj, "issued": float(obj["issued"])}, sort_keys=True, separators=(",", ":")
        ).encode(),
        json.dumps({**obj, "revoked": 0}, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps({**obj, "extra": 1}, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps({**obj, "labels": ["-bad"]}, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps(
            {**obj, "expires": obj["issued"]}, sort_keys=True, separators=(",", ":")
        ).encode(),
    ):
        with pytest.raises(RecordError) as e:
            records.decode(bad)
        assert e.value.reason == "malformed", bad


def test_oversized(alice: NodeIdentity) -> None:
    with pytest.raises(RecordError) as e:
        records.decode(b" " * (records.MAX_RECORD + 1))
    assert e.value.reason == "oversized"
    with pytest.raises(ValueError):
        records.make_record(alice, NOW, labels=["x" * 65])
    with pytest.raises(ValueError):
        records.make_record(alice, NOW, labels=[f"l{i}" for i in range(9)])
    # the largest record that can be made still fits
    big = records.make_record(alice, NOW, labels=[f"{i}" + "x" * 63 for i in range(8)])
    assert len(big.encode()) <= records.MAX_RECORD


def test_newer_replaces_older_revocation_is_final_expired_refused(alice: NodeIdentity) -> None:
    old = records.make_record(alice, NOW - 100)
    new = records.make_record(alice, NOW)
    records.judge(None, old, NOW)
    records.judge(old, new, NOW)
    for held, offered in ((new, old), (new, new)):
        with pytest.raises(RecordError) as e:
            records.judge(held, offered, NOW)
        assert e.value.reason == "replayed"
    expired = records.make_record(alice, NOW - 1000, lifetime=10)
    with pytest.raises(RecordError) as e:
        records.judge(None, expired, NOW)
    assert e.value.reason == "expired"
    revocation = records.make_revocation(alice, NOW)
    records.judge(new, revocation, NOW)
    assert not revocation.expired(NOW + 10 * records.MAX_LIFETIME)  # never expires
    later = records.make_record(alice, NOW + 10)
    with pytest.raises(RecordError) as e:
        records.judge(revocation, later, NOW)
    assert e.value.reason == "revoked"


def test_parse_node_id() -> None:
    assert records.parse_node_id("0x" + "AB" * 16) == b"\xab" * 16
    for bad in ("", "ab" * 15, "zz" * 16, "ab" * 17):
        with pytest.raises(ValueError):
            records.parse_node_id(bad)
