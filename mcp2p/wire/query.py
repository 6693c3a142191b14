"""QUERY and OFFER: the expanding-ring discovery messages (DESIGN.md 4.1).

A CN multicasts a QUERY with a growing hop limit; each SN that matches
answers with an OFFER.  Both are binary, network byte order, and the
encoding is canonical: ``decode`` is the exact inverse of ``encode``, so
any bytes either decode to the one message that encodes to them or raise
``ProtocolError``.

Common header (6 bytes)::

    size  field
    3     magic b"M2P"
    1     version = 1
    1     type: 1 = QUERY, 2 = OFFER
    1     flags (bits not listed below must be 0)

QUERY (flags bit 0: by content id; bit 1: by content id prefix; neither:
by pattern; both: invalid; bit 2: a repeat of this ring's query, sent
when an SN that answered the querier before has not answered it yet: an
SN answers a repeat even where it answered the first, unless ``known``
names it)::

    size          field
    8             request_id
    1             hop_limit (1..255)
    1             answers_wanted (1..255)
    8             rate, bit/s (0 = no preference)
    32 | 1+n | 1+h  content_id | pattern (u8 length + UTF-8) | prefix (see below)
    1 [+a+2]      reply_to: address (see below), then u16 port if family != 0
    1 + 8*w       wanted: u8 count w (<= 64), then w x (u32 start, u32 end)
    1 + 16*k      known: u8 count k (<= 64), then k node ids
    1 + 24*c      cookies: u8 count c (<= 16), then c x (node id, 8-byte cookie)
    p             padding: p zero bytes (<= 1200), up to the end of the datagram

OFFER (flags bit 0: truncated, bit 1: more datagrams of this reply follow,
bit 2: a cookie ends the datagram)::

    size          field
    8             request_id
    16            node_id
    32            public_key (raw Ed25519)
    1             hop_limit (1..255)
    1             u8 count of file entries, then the entries
    8             cookie, present exactly when flags bit 2 is set; then nothing

File entry::

    size          field
    32            content_id
    1+n           name (u8 length + UTF-8)
    8             size
    2             block_length
    4             piece_length
    4             session_id
    1+a           group (address, family 4 or 6)
    1[+a]         source (address, family 0 = ASM, else the group's family)
    2             port
    8             rate, bit/s
    2             control_port

A content id prefix is its length in hex digits, u8 ``d`` (8..63), then
the ``ceil(d/2)`` bytes holding those digits, most significant first;
for odd ``d`` the last byte's low nibble is 0. An SN answers it with the
files whose content id starts with those digits, as ``git`` resolves an
abbreviated object name: a CN that printed 16 digits can fetch with them
without asking for every file a node has.

Cookies (address validation, as DNS cookies, RFC 7873, and QUIC's
tokens): an SN answers a unicast-reply QUERY with at most as many bytes
as the QUERY had, unless the QUERY carries a cookie that this SN gave to
the query's source address: an 8-byte tag (HMAC of the address and a time
window under the SN's secret) that the SN puts in a reply it truncated
for want of one. Only a querier that receives at the address learns it.
A QUERY lists the cookies it holds under the node id of the SN that gave
each; node ids do not repeat there; an SN reads only its own entry.

An address is a family byte (0 = none, 4, 6) followed by 0, 4 or 16
bytes.  A pattern query with no reply address, wanted map or known
answers is 29 bytes plus the pattern's UTF-8 (a prefix query: 29 bytes
plus ceil(d/2)).  An encoded OFFER is never
larger than ``MAX_DATAGRAM`` (encode raises ValueError, decode
ProtocolError); ``offer_overhead`` and ``file_offer_size`` let the
responder pack entries without encoding repeatedly.  A QUERY has no size
limit beyond its field limits.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Any, NoReturn, Union

from mcp2p.errors import ProtocolError
from mcp2p.wire.types import (
    CONTENT_ID_LEN,
    MAX_RATE,
    NODE_ID_LEN,
    PUBLIC_KEY_LEN,
    REQUEST_ID_LEN,
    FileOffer,
    IPAddress,
    _check_bytes,
    _check_int,
)

MAX_DATAGRAM = 1400
MAX_PATTERN_BYTES = 255
MAX_WANTED_RANGES = 64
MAX_KNOWN = 64
MAX_COOKIES = 16
COOKIE_LEN = 8
MAX_PADDING = 1200
MAX_FILES = 255
MAX_BLOCK_INDEX = 0xFFFFFFFF
MIN_PREFIX_DIGITS = 8
MAX_PREFIX_DIGITS = 2 * CONTENT_ID_LEN - 1
_PREFIX = re.compile(f"[0-9a-f]{{{MIN_PREFIX_DIGITS},{MAX_PREFIX_DIGITS}}}")

_MAGIC = b"M2P"
_VERSION = 1
_T_QUERY = 1
_T_OFFER = 2
_HEADER = struct.Struct("!3sBBB")

_Q_BY_CONTENT_ID = 0x01
_Q_BY_PREFIX = 0x02
_Q_REPEAT = 0x04
_O_TRUNCATED = 0x01
_O_MORE = 0x02
_O_COOKIE = 0x04

_QUERY_FIXED = struct.Struct("!8sBBQ")  # request_id, hop_limit, answers_wanted, rate
_OFFER_FIXED = struct.Struct("!8s16s32sBB")  # request_id, node_id, public_key, hop, count
_FILE_SIZES = struct.Struct("!QHII")  # size, block_length, piece_length, session_id
_FILE_TAIL = struct.Struct("!HQH")  # port, rate, control_port
_RANGE = struct.Struct("!II")

_ADDRESS_LEN = {4: 4, 6: 16}


def _check_unicast(field: str, value: object) -> None:
    if not isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise ValueError(f"{field} must be an IP address")
    # The unspecified address is allowed: it means "the query's source address",
    # which is where an SN replies in any case (never to an address a query names).
    if value.is_multicast:
        raise ValueError(f"{field} {value} is not a unicast address")
    if getattr(value, "scope_id", None):
        raise ValueError(f"{field} {value} has a scope id, which the wire cannot carry")


def _check_tuple(field: str, value: object, most: int) -> None:
    if not isinstance(value, tuple):
        raise ValueError(f"{field} must be a tuple, not {type(value).__name__}")
    if len(value) > most:
        raise ValueError(f"{field} has {len(value)} entries, at most {most} allowed")


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"content_id_prefix must be {MIN_PREFIX_DIGITS}-{MAX_PREFIX_DIGITS} "
            f"lowercase hex digits, got {prefix!r}"
        )


def prefix_matches(prefix: str, content_id: bytes) -> bool:
    """Whether ``content_id`` starts with the hex digits ``prefix`` (lowercase)."""
    whole = len(prefix) // 2
    if not content_id.startswith(bytes.fromhex(prefix[: 2 * whole])):
        return False
    return len(prefix) % 2 == 0 or content_id[whole : whole + 1].hex()[:1] == prefix[-1]


@dataclass(frozen=True)
class Query:
    """One ring of an expanding-ring search; every ring reuses the request id.

    Exactly one of ``content_id``, ``pattern`` and ``content_id_prefix``
    (lowercase hex, 8-63 digits) is set. ``reply_to`` None means "answer on
    the query group"; ``known`` lists SNs the CN already heard, which stay
    silent; ``cookies`` are (node id, cookie) pairs, each proving to that SN
    that the querier receives at its address (a full reply, not one capped
    at the query's size); ``padding`` zero bytes enlarge the datagram and
    so the reply an SN may send before that (anti-amplification);
    ``repeat``: this ring's query sent again (flags bit 2).
    """

    request_id: bytes
    hop_limit: int
    content_id: bytes | None
    pattern: str | None
    answers_wanted: int = 1
    rate: int = 0
    reply_to: tuple[IPAddress, int] | None = None
    wanted: tuple[tuple[int, int], ...] = ()
    known: tuple[bytes, ...] = ()
    padding: int = 0
    content_id_prefix: str | None = None
    cookies: tuple[tuple[bytes, bytes], ...] = ()
    repeat: bool = False

    def __post_init__(self) -> None:
        _check_bytes("request_id", self.request_id, REQUEST_ID_LEN)
        _check_int("hop_limit", self.hop_limit, 1, 255)
        given = (self.content_id, self.pattern, self.content_id_prefix)
        if sum(x is not None for x in given) != 1:
            raise ValueError("exactly one of content_id, pattern and content_id_prefix must be set")
        if self.content_id is not None:
            _check_bytes("content_id", self.content_id, CONTENT_ID_LEN)
        elif self.content_id_prefix is not None:
            _check_prefix(self.content_id_prefix)
        else:
            if not isinstance(self.pattern, str):
                raise ValueError("pattern must be str")
            raw = self.pattern.encode("utf-8", "strict")
            if not 1 <= len(raw) <= MAX_PATTERN_BYTES:
                raise ValueError(
                    f"pattern must be 1-{MAX_PATTERN_BYTES} UTF-8 bytes, got {len(raw)}"
                )
            if "\x00" in self.pattern:
                raise ValueError("pattern contains NUL")
        _check_int("answers_wanted", self.answers_wanted, 1, 255)
        _check_int("rate", self.rate, 0, MAX_RATE)
        if self.reply_to is not None:
            if not isinstance(self.reply_to, tuple) or len(self.reply_to) != 2:
                raise ValueError("reply_to must be an (address, port) tuple or None")
            _check_unicast("reply_to address", self.reply_to[0])
            _check_int("reply_to port", self.reply_to[1], 1, 0xFFFF)
        _check_tuple("wanted", self.wanted, MAX_WANTED_RANGES)
        previous_end = -1
        for item in self.wanted:
            if not isinstance(item, tuple) or len(item) != 2:
                raise ValueError(f"wanted range {item!r} must be a (start, end) tuple")
            start, end = item
            _check_int("wanted start", start, 0, MAX_BLOCK_INDEX)
            _check_int("wanted end", end, 0, MAX_BLOCK_INDEX)
            if start >= end:
                raise ValueError(f"wanted range [{start}, {end}) is empty")
            if start <= previous_end:
                raise ValueError("wanted ranges must be sorted, disjoint and non-adjacent")
            previous_end = end
        _check_tuple("known", self.known, MAX_KNOWN)
        for node_id in self.known:
            _check_bytes("known node id", node_id, NODE_ID_LEN)
        if len(set(self.known)) != len(self.known):
            raise ValueError("known node ids must not repeat")
        _check_tuple("cookies", self.cookies, MAX_COOKIES)
        for pair in self.cookies:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"cookie {pair!r} must be a (node id, cookie) tuple")
            _check_bytes("cookie node id", pair[0], NODE_ID_LEN)
            _check_bytes("cookie", pair[1], COOKIE_LEN)
        if len({node for node, _ in self.cookies}) != len(self.cookies):
            raise ValueError("cookie node ids must not repeat")
        _check_int("padding", self.padding, 0, MAX_PADDING)


@dataclass(frozen=True)
class Offer:
    """An SN's answer: who it is and which matching files it streams where."""

    request_id: bytes
    node_id: bytes
    public_key: bytes
    hop_limit: int
    files: tuple[FileOffer, ...]
    truncated: bool = False
    more: bool = False  # another datagram of the same reply follows
    cookie: bytes | None = None  # given to a querier whose address is not validated yet

    def __post_init__(self) -> None:
        _check_bytes("request_id", self.request_id, REQUEST_ID_LEN)
        _check_bytes("node_id", self.node_id, NODE_ID_LEN)
        _check_bytes("public_key", self.public_key, PUBLIC_KEY_LEN)
        _check_int("hop_limit", self.hop_limit, 1, 255)
        _check_tuple("files", self.files, MAX_FILES)
        for f in self.files:
            if not isinstance(f, FileOffer):
                raise ValueError(f"files must hold FileOffer, not {type(f).__name__}")
        if not isinstance(self.truncated, bool):
            raise ValueError("truncated must be a bool")
        if not isinstance(self.more, bool):
            raise ValueError("more must be a bool")
        if self.cookie is not None:
            _check_bytes("cookie", self.cookie, COOKIE_LEN)


Message = Union[Query, Offer]


# -- sizes --------------------------------------------------------------------


def _address_size(address: IPAddress | None) -> int:
    return 1 if address is None else 1 + _ADDRESS_LEN[address.version]


def offer_overhead() -> int:
    """Bytes of an encoded Offer with no files."""
    return _HEADER.size + _OFFER_FIXED.size


def file_offer_size(f: FileOffer) -> int:
    """Bytes one entry adds to an encoded Offer."""
    return (
        CONTENT_ID_LEN
        + 1
        + len(f.name.encode("utf-8"))
        + _FILE_SIZES.size
        + _address_size(f.group)
        + _address_size(f.source)
        + _FILE_TAIL.size
    )


# -- encoding -----------------------------------------------------------------


def _put_address(out: list[bytes], address: IPAddress | None) -> None:
    if address is None:
        out.append(b"\x00")
        return
    if getattr(address, "scope_id", None):
        raise ValueError(f"address {address} has a scope id, which the wire cannot carry")
    out.append(bytes([address.version]) + address.packed)


def _put_string(out: list[bytes], text: str) -> None:
    raw = text.encode("utf-8")
    out.append(bytes([len(raw)]) + raw)


def _encode_query(q: Query) -> bytes:
    flags = 0
    if q.content_id is not None:
        flags = _Q_BY_CONTENT_ID
    elif q.content_id_prefix is not None:
        flags = _Q_BY_PREFIX
    if q.repeat:
        flags |= _Q_REPEAT
    out = [
        _HEADER.pack(_MAGIC, _VERSION, _T_QUERY, flags),
        _QUERY_FIXED.pack(q.request_id, q.hop_limit, q.answers_wanted, q.rate),
    ]
    if q.content_id is not None:
        out.append(q.content_id)
    elif q.content_id_prefix is not None:
        digits = q.content_id_prefix
        out.append(bytes([len(digits)]) + bytes.fromhex(digits + "0" * (len(digits) % 2)))
    else:
        assert q.pattern is not None
        _put_string(out, q.pattern)
    if q.reply_to is None:
        _put_address(out, None)
    else:
        _put_address(out, q.reply_to[0])
        out.append(struct.pack("!H", q.reply_to[1]))
    out.append(bytes([len(q.wanted)]))
    out.extend(_RANGE.pack(start, end) for start, end in q.wanted)
    out.append(bytes([len(q.known)]))
    out.extend(q.known)
    out.append(bytes([len(q.cookies)]))
    out.extend(node + cookie for node, cookie in q.cookies)
    out.append(bytes(q.padding))
    return b"".join(out)


def _encode_file(out: list[bytes], f: FileOffer) -> None:
    out.append(f.content_id)
    _put_string(out, f.name)
    out.append(_FILE_SIZES.pack(f.size, f.block_length, f.piece_length, f.session_id))
    _put_address(out, f.group)
    _put_address(out, f.source)
    out.append(_FILE_TAIL.pack(f.port, f.rate, f.control_port))


def _encode_offer(o: Offer) -> bytes:
    flags = (_O_TRUNCATED if o.truncated else 0) | (_O_MORE if o.more else 0)
    if o.cookie is not None:
        flags |= _O_COOKIE
    out = [
        _HEADER.pack(_MAGIC, _VERSION, _T_OFFER, flags),
        _OFFER_FIXED.pack(o.request_id, o.node_id, o.public_key, o.hop_limit, len(o.files)),
    ]
    for f in o.files:
        _encode_file(out, f)
    if o.cookie is not None:
        out.append(o.cookie)
    data = b"".join(out)
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"offer is {len(data)} bytes, more than {MAX_DATAGRAM}")
    return data


def encode(msg: Query | Offer) -> bytes:
    """The datagram for ``msg``; ValueError if an Offer exceeds MAX_DATAGRAM."""
    if isinstance(msg, Query):
        return _encode_query(msg)
    if isinstance(msg, Offer):
        return _encode_offer(msg)
    raise TypeError(f"cannot encode {type(msg).__name__}")


# -- padding ------------------------------------------------------------------

GROUP_FACTOR = 3  # an SN's reply to the group: at most this many bytes per query byte
# The largest one-file OFFER entry: 255-byte name, IPv6 group and source.
_LARGEST_ENTRY = 32 + 1 + 255 + 24 + 17 + 17 + 12
# A unicast-reply query is padded to the largest one-file OFFER with its
# cookie, so that an SN that has not validated the searcher's address yet
# (it answers with at most the query's size) still sends any one file at
# once: a search by content id never needs a follow-up.
ONE_OFFER_QUERY = offer_overhead() + _LARGEST_ENTRY + COOKIE_LEN
# A multicast-reply query: the group reply is at most GROUP_FACTOR times it.
ONE_OFFER_GROUP_QUERY = -(-(offer_overhead() + _LARGEST_ENTRY) // GROUP_FACTOR)
_COOKIE_ENTRY = NODE_ID_LEN + COOKIE_LEN


def padding_for(q: Query, pad: int) -> int:
    """The ``padding`` a searcher gives ``q`` (sent without padding so far).

    ``pad`` bytes of room for offers (a pattern query's ``[discovery]
    query_padding``, 0 by content id), less what its cookies already add;
    at least up to ``ONE_OFFER_QUERY`` (a unicast reply) or
    ``ONE_OFFER_GROUP_QUERY`` (a reply to the group); at most MAX_PADDING.
    """
    bare = len(_encode_query(dataclasses.replace(q, padding=0)))
    target = bare + max(0, pad - _COOKIE_ENTRY * len(q.cookies))
    target = max(target, ONE_OFFER_QUERY if q.reply_to is not None else ONE_OFFER_GROUP_QUERY)
    return min(MAX_PADDING, target - bare)


# -- decoding -----------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor over a datagram; running short is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, n: int) -> bytes:
        end = self._offset + n
        if end > len(self._data):
            raise ProtocolError(
                f"truncated: wanted {n} bytes at offset {self._offset}, "
                f"datagram is {len(self._data)} bytes"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def string(self, field: str) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("utf-8", "strict")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{field} is not valid UTF-8") from e

    def address(self, field: str) -> IPAddress:
        return self._address(field, self.u8())

    def optional_address(self, field: str) -> IPAddress | None:
        family = self.u8()
        return None if family == 0 else self._address(field, family)

    def _address(self, field: str, family: int) -> IPAddress:
        if family == 4:
            return ipaddress.IPv4Address(self.take(4))
        if family == 6:
            return ipaddress.IPv6Address(self.take(16))
        raise ProtocolError(f"{field}: bad address family {family}")

    def rest(self) -> bytes:
        chunk = self._data[self._offset :]
        self._offset = len(self._data)
        return chunk


def _bad(cls: type, e: ValueError) -> NoReturn:
    raise ProtocolError(f"invalid {cls.__name__}: {e}") from e


def _decode_query(r: _Reader, flags: int) -> Query:
    if flags & ~(_Q_BY_CONTENT_ID | _Q_BY_PREFIX | _Q_REPEAT):
        raise ProtocolError(f"unknown QUERY flags {flags:#04x}")
    if flags & (_Q_BY_CONTENT_ID | _Q_BY_PREFIX) == _Q_BY_CONTENT_ID | _Q_BY_PREFIX:
        raise ProtocolError("QUERY flags say both content id and content id prefix")
    request_id, hop_limit, answers_wanted, rate = r.unpack(_QUERY_FIXED)
    content_id: bytes | None = None
    pattern: str | None = None
    prefix: str | None = None
    if flags & _Q_BY_CONTENT_ID:
        content_id = r.take(CONTENT_ID_LEN)
    elif flags & _Q_BY_PREFIX:
        prefix = _read_prefix(r)
    else:
        pattern = r.string("pattern")
    reply_to = None
    address = r.optional_address("reply_to")
    if address is not None:
        reply_to = (address, r.u16())
    wanted = tuple(r.unpack(_RANGE) for _ in range(r.u8()))
    known = tuple(r.take(NODE_ID_LEN) for _ in range(r.u8()))
    cookies = tuple((r.take(NODE_ID_LEN), r.take(COOKIE_LEN)) for _ in range(r.u8()))
    padding = r.rest()
    if any(padding):
        raise ProtocolError("QUERY has non-zero trailing bytes")
    try:
        return Query(
            request_id=request_id,
            hop_limit=hop_limit,
            content_id=content_id,
            pattern=pattern,
            answers_wanted=answers_wanted,
            rate=rate,
            reply_to=reply_to,
            wanted=wanted,
            known=known,
            padding=len(padding),
            content_id_prefix=prefix,
            cookies=cookies,
            repeat=bool(flags & _Q_REPEAT),
        )
    except ValueError as e:
        _bad(Query, e)


def _read_prefix(r: _Reader) -> str:
    digits = r.u8()
    if not MIN_PREFIX_DIGITS <= digits <= MAX_PREFIX_DIGITS:
        raise ProtocolError(
            f"content id prefix of {digits} digits, not {MIN_PREFIX_DIGITS}-{MAX_PREFIX_DIGITS}"
        )
    text = r.take((digits + 1) // 2).hex()
    if text[digits:] not in ("", "0"):
        raise ProtocolError("content id prefix has a non-zero pad nibble")
    return text[:digits]


def _decode_file(r: _Reader) -> FileOffer:
    content_id = r.take(CONTENT_ID_LEN)
    name = r.string("name")
    size, block_length, piece_length, session_id = r.unpack(_FILE_SIZES)
    group = r.address("group")
    source = r.optional_address("source")
    port, rate, control_port = r.unpack(_FILE_TAIL)
    try:
        return FileOffer(
            content_id=content_id,
            name=name,
            size=size,
            block_length=block_length,
            piece_length=piece_length,
            session_id=session_id,
            group=group,
            source=source,
            port=port,
            rate=rate,
            control_port=control_port,
        )
    except ValueError as e:
        _bad(FileOffer, e)


def _decode_offer(r: _Reader, flags: int, length: int) -> Offer:
    if length > MAX_DATAGRAM:
        raise ProtocolError(f"OFFER is {length} bytes, more than {MAX_DATAGRAM}")
    if flags & ~(_O_TRUNCATED | _O_MORE | _O_COOKIE):
        raise ProtocolError(f"unknown OFFER flags {flags:#04x}")
    request_id, node_id, public_key, hop_limit, count = r.unpack(_OFFER_FIXED)
    files = tuple(_decode_file(r) for _ in range(count))
    cookie = r.take(COOKIE_LEN) if flags & _O_COOKIE else None
    if r.rest():
        raise ProtocolError("OFFER has trailing bytes")
    try:
        return Offer(
            request_id=request_id,
            node_id=node_id,
            public_key=public_key,
            hop_limit=hop_limit,
            files=files,
            truncated=bool(flags & _O_TRUNCATED),
            more=bool(flags & _O_MORE),
            cookie=cookie,
        )
    except ValueError as e:
        _bad(Offer, e)


def decode(data: bytes) -> Query | Offer:
    """The message in ``data``, or ProtocolError; never any other exception."""
    data = bytes(data)
    r = _Reader(data)
    magic, version, kind, flags = r.unpack(_HEADER)
    if magic != _MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != _VERSION:
        raise ProtocolError(f"unknown version {version}")
    if kind == _T_QUERY:
        return _decode_query(r, flags)
    if kind == _T_OFFER:
        return _decode_offer(r, flags, len(data))
    raise ProtocolError(f"unknown message type {kind}")
