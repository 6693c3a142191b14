"""QUERY/OFFER: round trips, exact sizes, and decoders that only raise ProtocolError."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.query import (
    MAX_DATAGRAM,
    MAX_PREFIX_DIGITS,
    MIN_PREFIX_DIGITS,
    Offer,
    Query,
    decode,
    encode,
    file_offer_size,
    offer_overhead,
    prefix_matches,
)
from mcp2p.wire.types import (
    CONTENT_ID_LEN,
    MAX_BLOCK_LENGTH,
    MAX_PIECE_LENGTH,
    MAX_RATE,
    MAX_SIZE,
    MIN_BLOCK_LENGTH,
    NODE_ID_LEN,
    PUBLIC_KEY_LEN,
    REQUEST_ID_LEN,
    FileOffer,
    IPAddress,
)

# -- strategies ---------------------------------------------------------------

request_ids = st.binary(min_size=REQUEST_ID_LEN, max_size=REQUEST_ID_LEN)
content_ids = st.binary(min_size=CONTENT_ID_LEN, max_size=CONTENT_ID_LEN)
node_ids = st.binary(min_size=NODE_ID_LEN, max_size=NODE_ID_LEN)
public_keys = st.binary(min_size=PUBLIC_KEY_LEN, max_size=PUBLIC_KEY_LEN)
hops = st.integers(1, 255)
ports = st.integers(1, 0xFFFF)
rates = st.integers(0, MAX_RATE)

groups_v4 = st.builds(ipaddress.IPv4Address, st.integers(0xE0000000, 0xEFFFFFFF))
groups_v6 = st.builds(ipaddress.IPv6Address, st.integers(0xFF << 120, (1 << 128) - 1))
unicast_v4 = st.builds(ipaddress.IPv4Address, st.integers(1, 0xDFFFFFFF))
unicast_v6 = st.builds(ipaddress.IPv6Address, st.integers(1, (0xFF << 120) - 1))
unicast = st.one_of(unicast_v4, unicast_v6)

_text_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
patterns = st.text(_text_chars, min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
_name_chars = st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\x7f")
names = st.text(_name_chars, min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))


@st.composite
def sessions(draw: st.DrawFn) -> tuple[IPAddress, IPAddress | None]:
    """A group and, for SSM, a unicast source of the same family."""
    if draw(st.booleans()):
        return draw(groups_v4), draw(st.none() | unicast_v4)
    return draw(groups_v6), draw(st.none() | unicast_v6)


@st.composite
def file_offers(draw: st.DrawFn) -> FileOffer:
    group, source = draw(sessions())
    block_length = draw(st.integers(MIN_BLOCK_LENGTH, MAX_BLOCK_LENGTH))
    return FileOffer(
        content_id=draw(content_ids),
        name=draw(names),
        size=draw(st.integers(0, MAX_SIZE)),
        block_length=block_length,
        piece_length=draw(st.integers(block_length, MAX_PIECE_LENGTH)),
        session_id=draw(st.integers(0, 0xFFFFFFFF)),
        group=group,
        source=source,
        port=draw(ports),
        rate=draw(rates),
        control_port=draw(ports),
    )


@st.composite
def wanted_maps(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    """Distinct sorted points paired up: sorted, disjoint, non-adjacent ranges."""
    points = sorted(draw(st.sets(st.integers(0, 0xFFFFFFFF), max_size=128)))
    if len(points) % 2:
        points.pop()
    return tuple(zip(points[::2], points[1::2], strict=True))


prefixes = st.text("0123456789abcdef", min_size=MIN_PREFIX_DIGITS, max_size=MAX_PREFIX_DIGITS)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    by = draw(st.sampled_from(["id", "pattern", "prefix"]))
    return Query(
        request_id=draw(request_ids),
        hop_limit=draw(hops),
        content_id=draw(content_ids) if by == "id" else None,
        pattern=draw(patterns) if by == "pattern" else None,
        content_id_prefix=draw(prefixes) if by == "prefix" else None,
        answers_wanted=draw(st.integers(1, 255)),
        rate=draw(rates),
        reply_to=draw(st.none() | st.tuples(unicast, ports)),
        wanted=draw(wanted_maps()),
        known=tuple(draw(st.lists(node_ids, max_size=64, unique=True))),
        padding=draw(st.integers(0, 1200)),
        repeat=draw(st.booleans()),
        cookies=tuple(
            draw(
                st.lists(
                    st.tuples(node_ids, st.binary(min_size=8, max_size=8)),
                    max_size=16,
                    unique_by=lambda c: c[0],
                )
            )
        ),
    )


def offers(max_files: int = 5) -> st.SearchStrategy[Offer]:
    # 5 entries of at most 32+1+160+24+17+17+12 bytes stay under MAX_DATAGRAM.
    return st.builds(
        Offer,
        request_id=request_ids,
        node_id=node_ids,
        public_key=public_keys,
        hop_limit=hops,
        files=st.lists(file_offers(), max_size=max_files).map(tuple),
        truncated=st.booleans(),
        more=st.booleans(),
        cookie=st.none() | st.binary(min_size=8, max_size=8),
    )


messages = st.one_of(queries(), offers())

# -- fixed examples -----------------------------------------------------------

RID = bytes(range(8))
SOURCE = ipaddress.IPv4Address("192.0.2.1")
FILE = FileOffer(
    content_id=b"c" * 32,
    name="movie.mkv",
    size=1 << 30,
    block_length=1024,
    piece_length=1 << 20,
    session_id=7,
    group=ipaddress.IPv4Address("232.1.2.3"),
    source=SOURCE,
    port=5004,
    rate=10_000_000,
    control_port=8443,
)
QUERY = Query(
    request_id=RID,
    hop_limit=4,
    content_id=None,
    pattern="*.mkv",
    reply_to=(ipaddress.IPv6Address("2001:db8::1"), 4000),
    wanted=((0, 10), (20, 30)),
    known=(b"n" * 16,),
)
OFFER = Offer(request_id=RID, node_id=b"n" * 16, public_key=b"k" * 32, hop_limit=4, files=(FILE,))


def _raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


# -- round trips and sizes ----------------------------------------------------


@given(queries())
def test_query_round_trip(q: Query) -> None:
    assert decode(encode(q)) == q


@given(offers())
def test_offer_round_trip(o: Offer) -> None:
    assert decode(encode(o)) == o


def test_fixed_examples_round_trip() -> None:
    assert decode(encode(QUERY)) == QUERY
    assert decode(encode(OFFER)) == OFFER


def test_pattern_query_is_compact() -> None:
    q = Query(request_id=RID, hop_limit=1, content_id=None, pattern="*.iso")
    assert len(encode(q)) == 29 + 5
    q = Query(request_id=RID, hop_limit=1, content_id=b"c" * 32, pattern=None)
    assert len(encode(q)) == 29 + 31


@given(st.lists(file_offers(), max_size=12))
def test_offer_sizes_are_exact(files: list[FileOffer]) -> None:
    o = Offer(request_id=RID, node_id=b"n" * 16, public_key=b"k" * 32, hop_limit=1, files=())
    assert len(encode(o)) == offer_overhead()
    o = dataclasses.replace(o, files=tuple(files))
    predicted = offer_overhead() + sum(file_offer_size(f) for f in files)
    if predicted <= MAX_DATAGRAM:
        assert len(encode(o)) == predicted
    else:
        with pytest.raises(ValueError):
            encode(o)


def test_offer_larger_than_max_datagram_is_value_error() -> None:
    n = (MAX_DATAGRAM - offer_overhead()) // file_offer_size(FILE)
    fits = dataclasses.replace(OFFER, files=(FILE,) * n)
    assert len(encode(fits)) <= MAX_DATAGRAM
    with pytest.raises(ValueError):
        encode(dataclasses.replace(OFFER, files=(FILE,) * (n + 1)))


def test_padding_is_trailing_zeros() -> None:
    base = encode(dataclasses.replace(QUERY, padding=0))
    padded = encode(dataclasses.replace(QUERY, padding=1200))
    assert padded == base + bytes(1200)
    assert decode(base + bytes(3)) == dataclasses.replace(QUERY, padding=3)
    _raises_protocol_error(base + bytes(1201))


# -- hostile input ------------------------------------------------------------


@given(st.binary())
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


@given(st.binary(max_size=200))
def test_arbitrary_bodies_after_valid_header(body: bytes) -> None:
    headers = (b"M2P\x01\x01\x00", b"M2P\x01\x01\x01", b"M2P\x01\x01\x02", b"M2P\x01\x02\x00")
    for header in headers:
        try:
            msg = decode(header + body)
        except ProtocolError:
            continue
        assert encode(msg) == header + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 4))]
    return bytes(data)


@given(mutated())
def test_mutated_encodings_fail_cleanly_or_decode_canonically(data: bytes) -> None:
    try:
        msg = decode(data)
    except ProtocolError:
        return
    # The encoding is canonical: whatever decodes re-encodes to the same bytes.
    assert isinstance(msg, (Query, Offer))
    assert encode(msg) == data


def test_bad_magic() -> None:
    _raises_protocol_error(b"M2Q" + encode(QUERY)[3:])


def test_unknown_version() -> None:
    data = encode(QUERY)
    _raises_protocol_error(data[:3] + b"\x02" + data[4:])


def test_unknown_type_and_flags() -> None:
    data = encode(OFFER)
    _raises_protocol_error(data[:4] + b"\x03" + data[5:])
    _raises_protocol_error(data[:5] + b"\x04" + data[6:])


@pytest.mark.parametrize("msg", [QUERY, OFFER], ids=["query", "offer"])
def test_truncated_at_every_length(msg: Query | Offer) -> None:
    data = encode(msg)
    for n in range(len(data)):
        _raises_protocol_error(data[:n])


def test_trailing_garbage() -> None:
    _raises_protocol_error(encode(QUERY) + b"\x00\x00\x01")
    _raises_protocol_error(encode(OFFER) + b"\x00")


def test_content_id_and_pattern_both_or_neither() -> None:
    by_id = Query(request_id=RID, hop_limit=1, content_id=b"c" * 32, pattern=None)
    data = encode(by_id)
    # neither: the flag says "pattern" but the pattern is empty
    _raises_protocol_error(data[:5] + b"\x00" + data[6:24] + b"\x00" + b"\x00" * 3)
    # both: a content id followed by a pattern is a bad address family, then garbage
    _raises_protocol_error(data[:56] + b"\x01*" + data[56:])


def test_unsorted_wanted_ranges() -> None:
    data = bytearray(encode(QUERY))
    start = data.index(bytes.fromhex("00000000 0000000a 00000014 0000001e"))
    data[start : start + 16] = bytes.fromhex("00000014 0000001e 00000000 0000000a")
    _raises_protocol_error(bytes(data))


def test_adjacent_or_empty_wanted_ranges() -> None:
    data = bytearray(encode(QUERY))
    start = data.index(bytes.fromhex("00000000 0000000a 00000014 0000001e"))
    data[start : start + 16] = bytes.fromhex("00000000 0000000a 0000000a 0000001e")
    _raises_protocol_error(bytes(data))
    data[start : start + 16] = bytes.fromhex("00000000 00000000 00000014 0000001e")
    _raises_protocol_error(bytes(data))


def test_65_known_ids() -> None:
    q = dataclasses.replace(QUERY, known=tuple(bytes([i]) * 16 for i in range(64)))
    data = encode(q)
    count = len(data) - 64 * 16 - 2  # the known count, then 64 ids, then 0 cookies
    assert data[count] == 64
    _raises_protocol_error(data[:count] + b"\x41" + data[count + 1 :] + b"\xff" * 16)


def test_group_not_multicast() -> None:
    data = encode(OFFER)
    good = b"\x04" + FILE.group.packed
    assert data.count(good) == 1
    _raises_protocol_error(data.replace(good, b"\x04" + bytes([10, 1, 2, 3])))


def test_bad_address_family() -> None:
    data = encode(OFFER)
    good = b"\x04" + FILE.group.packed
    _raises_protocol_error(data.replace(good, b"\x05" + FILE.group.packed))
    _raises_protocol_error(data.replace(good, b"\x00" + FILE.group.packed))


def test_source_of_other_family() -> None:
    data = encode(OFFER)
    good = b"\x04" + SOURCE.packed
    assert data.count(good) == 1
    _raises_protocol_error(data.replace(good, b"\x06" + bytes(15) + b"\x01"))


def test_invalid_utf8_name() -> None:
    data = encode(OFFER)
    _raises_protocol_error(data.replace(b"movie.mkv", b"movie\xff\xfekv"))


def test_invalid_utf8_pattern() -> None:
    data = encode(QUERY)
    _raises_protocol_error(data.replace(b"\x05*.mkv", b"\x05*\xc0\xafkv"))


# -- constructor validation ---------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": b"short"},
        {"hop_limit": 0},
        {"hop_limit": 256},
        {"hop_limit": True},
        {"content_id": b"c" * 32},
        {"pattern": None},
        {"pattern": ""},
        {"pattern": "a\x00b"},
        {"pattern": "x" * 256},
        {"pattern": None, "content_id": b"c" * 31},
        {"answers_wanted": 0},
        {"rate": -1},
        {"rate": MAX_RATE + 1},
        {"reply_to": (ipaddress.IPv4Address("239.1.1.1"), 5)},
        {"reply_to": (ipaddress.IPv6Address("fe80::1%eth0"), 5)},
        {"reply_to": (ipaddress.IPv4Address("192.0.2.1"), 0)},
        {"reply_to": ("192.0.2.1", 5)},
        {"wanted": ((20, 30), (0, 10))},
        {"wanted": ((0, 10), (10, 20))},
        {"wanted": ((0, 10), (5, 20))},
        {"wanted": ((5, 5),)},
        {"wanted": ((0, 1 << 32),)},
        {"wanted": [(0, 10)]},
        {"wanted": tuple((2 * i, 2 * i + 1) for i in range(65))},
        {"known": (b"n" * 15,)},
        {"known": (b"n" * 16, b"n" * 16)},
        {"known": tuple(bytes([i]) * 16 for i in range(65))},
        {"padding": -1},
        {"padding": 1201},
    ],
)
def test_query_validation(changes: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(QUERY, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": b"x" * 9},
        {"node_id": b"x" * 15},
        {"public_key": b"x" * 31},
        {"hop_limit": 0},
        {"files": [FILE]},
        {"files": (FILE,) * 256},
        {"files": ("not a file",)},
        {"truncated": 1},
        {"more": 1},
    ],
)
def test_offer_validation(changes: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(OFFER, **changes)


def test_encode_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        encode(FILE)  # type: ignore[arg-type]


# -- content id prefixes ----------------------------------------------------------

PREFIX_QUERY = Query(
    request_id=RID, hop_limit=2, content_id=None, pattern=None, content_id_prefix="0123456789a"
)


def test_prefix_query_layout() -> None:
    data = encode(PREFIX_QUERY)
    assert data[5] == 0x02
    # u8 digit count, then the digits packed two per byte, the odd one's pad nibble 0
    assert data[24:31] == bytes([11]) + bytes.fromhex("0123456789a0")
    assert len(data) == 29 + 6
    assert decode(data) == PREFIX_QUERY


@given(prefixes)
def test_prefix_round_trip_and_size(prefix: str) -> None:
    q = dataclasses.replace(PREFIX_QUERY, content_id_prefix=prefix)
    data = encode(q)
    assert len(data) == 29 + (len(prefix) + 1) // 2
    assert decode(data) == q


def test_prefix_pad_nibble_must_be_zero() -> None:
    data = bytearray(encode(PREFIX_QUERY))
    data[30] |= 0x01
    _raises_protocol_error(bytes(data))


@pytest.mark.parametrize("digits", [0, 1, 7, 64, 255])
def test_prefix_digit_count_out_of_range(digits: int) -> None:
    data = encode(PREFIX_QUERY)
    body = bytes([digits]) + b"\x11" * ((digits + 1) // 2)
    _raises_protocol_error(data[:24] + body + data[31:])


def test_prefix_and_content_id_flags_together() -> None:
    data = encode(PREFIX_QUERY)
    _raises_protocol_error(data[:5] + b"\x03" + data[6:])
    _raises_protocol_error(data[:5] + b"\x07" + data[6:])  # a repeat of that, as wrong
    _raises_protocol_error(data[:5] + b"\x0a" + data[6:])  # bit 3: unknown


def test_a_repeat_is_flags_bit_2_on_any_query() -> None:
    for query, flags in ((PREFIX_QUERY, 0x06), (QUERY, None)):
        again = dataclasses.replace(query, repeat=True)
        data = encode(again)
        assert decode(data) == again and decode(encode(query)) == query
        assert data[5] == (flags if flags is not None else encode(query)[5] | 0x04)


@pytest.mark.parametrize(
    "bad", ["0123456", "0" * 64, "0123456789ABCDEF", "0123456789abcdeg", " 01234567", b"01234567"]
)
def test_prefix_validation(bad: object) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(PREFIX_QUERY, content_id_prefix=bad)


def test_exactly_one_selector() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(PREFIX_QUERY, pattern="*")
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(PREFIX_QUERY, content_id=b"c" * 32)
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(PREFIX_QUERY, content_id_prefix=None)


@given(content_ids, st.integers(MIN_PREFIX_DIGITS, MAX_PREFIX_DIGITS))
def test_prefix_matches_is_hex_startswith(content_id: bytes, digits: int) -> None:
    own = content_id.hex()[:digits]
    assert prefix_matches(own, content_id)
    other = own[:-1] + "0123456789abcdef"[("0123456789abcdef".index(own[-1]) + 1) % 16]
    assert not prefix_matches(other, content_id)


# -- cookies (issue 12: address validation) -----------------------------------


def test_cookie_layout() -> None:
    """After the known ids: u8 count, then (node id, 8-byte cookie) pairs; then padding."""
    pairs = ((b"\x01" * 16, b"c" * 8), (b"\x02" * 16, b"d" * 8))
    q = dataclasses.replace(QUERY, cookies=pairs, padding=3)
    data = encode(q)
    tail = bytes([2]) + b"\x01" * 16 + b"c" * 8 + b"\x02" * 16 + b"d" * 8 + bytes(3)
    assert data.endswith(tail)
    assert decode(data) == q
    # a cookie count running past the datagram, and a repeated node id, are refused
    _raises_protocol_error(data[: -len(tail)] + bytes([3]) + tail[1:])
    same = ((b"\x01" * 16, b"c" * 8), (b"\x01" * 16, b"d" * 8))
    with pytest.raises(ValueError):
        dataclasses.replace(QUERY, cookies=same)
    with pytest.raises(ValueError):
        dataclasses.replace(QUERY, cookies=((b"\x01" * 16, b"short"),))
    with pytest.raises(ValueError):
        dataclasses.replace(QUERY, cookies=tuple((bytes([i]) * 16, b"c" * 8) for i in range(17)))


def test_offer_cookie_ends_the_datagram() -> None:
    plain = encode(OFFER)
    with_cookie = encode(dataclasses.replace(OFFER, cookie=b"k" * 8))
    assert with_cookie == plain[:5] + bytes([plain[5] | 0x04]) + plain[6:] + b"k" * 8
    assert decode(with_cookie) == dataclasses.replace(OFFER, cookie=b"k" * 8)
    _raises_protocol_error(with_cookie[:-1])  # flag set, cookie short
    _raises_protocol_error(plain + b"k" * 8)  # cookie bytes without the flag
