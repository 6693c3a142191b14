"""SDP (RFC 8866) descriptions of one shared file, as carried in SAP.

Pure: no Twisted, no I/O.  One ``Announcement`` is one file session of one
SN.  The description is standard SDP that Wireshark and SAP directories
understand (``m=application ... RTP/AVP 96``, RFC 4570 ``a=source-filter``
for SSM, RFC 5547 ``a=file-selector`` for the name and size); what only mcp2p
needs travels in ``a=x-mcp2p-*`` attributes.  Example (IPv4, SSM)::

    v=0
    o=- 305419896 1700000000 IN IP4 192.0.2.10
    s=ubuntu.iso
    c=IN IP4 232.1.2.3/16
    t=0 0
    a=tool:mcp2p
    m=application 5000 RTP/AVP 96
    b=AS:10000
    a=rtpmap:96 mcp2p/90000
    a=source-filter: incl IN IP4 232.1.2.3 192.0.2.10
    a=file-selector:name:"ubuntu.iso" size:123456789
    a=x-mcp2p-content-id:<64 hex digits>
    a=x-mcp2p-block-length:1400
    ...

IPv6 groups have no TTL in ``c=``; their hop limit travels in
``a=x-mcp2p-hop-limit``.  A SAP deletion carries only ``v=0`` and the
``o=`` line (RFC 2974 section 6): ``encode_deletion``/``decode_deletion``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mcp2p.errors import ProtocolError
from mcp2p.wire.types import CONTENT_ID_LEN, NODE_ID_LEN, PUBLIC_KEY_LEN, FileOffer, IPAddress

MAX_VERSION = (1 << 64) - 1
PAYLOAD_TYPE = 96
RTPMAP = f"{PAYLOAD_TYPE} mcp2p/90000"
TOOL = "mcp2p"

_X = "x-mcp2p-"
_A_CONTENT_ID = _X + "content-id"
_A_BLOCK_LENGTH = _X + "block-length"
_A_PIECE_LENGTH = _X + "piece-length"
_A_CONTROL_PORT = _X + "control-port"
_A_RATE = _X + "rate"
_A_NODE_ID = _X + "node-id"
_A_PUBLIC_KEY = _X + "public-key"
_A_HOP_LIMIT = _X + "hop-limit"
_A_SOURCE_FILTER = "source-filter"
_A_FILE_SELECTOR = "file-selector"

_DIGITS = re.compile(r"[0-9]{1,20}")
_LINE = re.compile(r"([a-z])=(.*)", re.DOTALL)
# RFC 5547 filename-char excludes NUL, CR, LF, DQUOTE and "%"; we also escape
# the other ASCII control characters so that a capture stays readable.
_ESCAPED = frozenset(range(0x20)) | {0x22, 0x25, 0x7F}


def _is_ip(value: object) -> bool:
    return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address))


def _has_scope(addr: IPAddress) -> bool:
    return isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None


def _check_uint(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class Announcement:
    """What one SAP packet says about one shared file.

    ``origin`` is the SN's unicast address (SDP ``o=`` and the SAP originating
    source); ``ttl`` is the session's IPv4 TTL (``c=.../ttl``) or IPv6 hop
    limit; ``version`` is the ``o=`` session version, changed whenever the
    description changes.
    """

    offer: FileOffer
    node_id: bytes
    public_key: bytes
    origin: IPAddress
    ttl: int
    version: int

    def __post_init__(self) -> None:
        if not isinstance(self.offer, FileOffer):
            raise ValueError("offer must be a FileOffer")
        if not isinstance(self.node_id, bytes) or len(self.node_id) != NODE_ID_LEN:
            raise ValueError(f"node_id must be {NODE_ID_LEN} bytes")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_LEN:
            raise ValueError(f"public_key must be {PUBLIC_KEY_LEN} bytes")
        if not _is_ip(self.origin):
            raise ValueError("origin must be an IP address")
        if self.origin.is_multicast or self.origin.is_unspecified:
            raise ValueError(f"origin {self.origin} is not a unicast address")
        for name, addr in (
            ("origin", self.origin),
            ("group", self.offer.group),
            ("source", self.offer.source),
        ):
            if addr is not None and _has_scope(addr):
                raise ValueError(f"{name} {addr} carries an IPv6 scope id, which SDP cannot")
        _check_uint("ttl", self.ttl, 1, 255)
        _check_uint("version", self.version, 0, MAX_VERSION)


@dataclass(frozen=True)
class SessionOrigin:
    """The ``o=`` identity of a session: what a SAP deletion names."""

    session_id: int
    version: int
    origin: IPAddress


# -- encoding ---------------------------------------------------------------


def _addrtype(addr: IPAddress) -> str:
    return "IP4" if addr.version == 4 else "IP6"


def _origin_line(session_id: int, version: int, origin: IPAddress) -> str:
    return f"o=- {session_id} {version} IN {_addrtype(origin)} {origin}"


def quote_filename(name: str) -> str:
    """RFC 5547 filename-string: UTF-8 with NUL, CR, LF, '"', '%' percent-encoded."""
    out = []
    for b in name.encode("utf-8"):
        out.append(f"%{b:02X}".encode("ascii") if b in _ESCAPED else bytes((b,)))
    return b"".join(out).decode("utf-8")


def encode_sdp(a: Announcement) -> bytes:
    """The SDP text for ``a``, CRLF line ends, fields in RFC 8866 order."""
    o = a.offer
    group_type = _addrtype(o.group)
    if o.group.version == 4:
        conn = f"c=IN IP4 {o.group}/{a.ttl}"
    else:
        conn = f"c=IN IP6 {o.group}"
    lines = [
        "v=0",
        _origin_line(o.session_id, a.version, a.origin),
        f"s={o.name}",
        conn,
        "t=0 0",
        f"a=tool:{TOOL}",
        f"m=application {o.port} RTP/AVP {PAYLOAD_TYPE}",
        f"b=AS:{(o.rate + 999) // 1000}",
        f"a=rtpmap:{RTPMAP}",
    ]
    if o.source is not None:
        lines.append(f"a={_A_SOURCE_FILTER}: incl IN {group_type} {o.group} {o.source}")
    lines += [
        f'a={_A_FILE_SELECTOR}:name:"{quote_filename(o.name)}" size:{o.size}',
        f"a={_A_CONTENT_ID}:{o.content_id.hex()}",
        f"a={_A_BLOCK_LENGTH}:{o.block_length}",
        f"a={_A_PIECE_LENGTH}:{o.piece_length}",
        f"a={_A_CONTROL_PORT}:{o.control_port}",
        f"a={_A_RATE}:{o.rate}",
        f"a={_A_NODE_ID}:{a.node_id.hex()}",
        f"a={_A_PUBLIC_KEY}:{a.public_key.hex()}",
    ]
    if o.group.version == 6:
        lines.append(f"a={_A_HOP_LIMIT}:{a.ttl}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def encode_deletion(a: Announcement) -> bytes:
    """RFC 2974 deletion payload: the ``o=`` line of the announcement, after ``v=0``.

    RFC 2974 section 6 makes it the single ``o=`` line; the ``v=0`` before
    it (every SDP's first line, RFC 8866 section 5) lets the SAP header omit
    the payload type as for announcements, so Wireshark decodes it without
    a note, and a listener that looks for the ``o=`` line finds the same one.
    """
    lines = ("v=0", _origin_line(a.offer.session_id, a.version, a.origin))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# -- decoding ---------------------------------------------------------------


def _uint(field: str, text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise ProtocolError(f"SDP {field} {text[:40]!r} is not a decimal integer")
    return int(text)


def _hex(field: str, text: str, length: int) -> bytes:
    if len(text) != 2 * length or not re.fullmatch(r"[0-9a-fA-F]*", text):
        raise ProtocolError(f"SDP {field} must be {2 * length} hex digits")
    return bytes.fromhex(text)


def _addr(field: str, addrtype: str, text: str) -> IPAddress:
    if "%" in text or "/" in text:
        raise ProtocolError(f"SDP {field} {text[:60]!r} is not a plain IP address")
    try:
        if addrtype == "IP4":
            return ipaddress.IPv4Address(text)
        if addrtype == "IP6":
            return ipaddress.IPv6Address(text)
    except ValueError as e:
        raise ProtocolError(f"SDP {field} {text[:60]!r} is not an {addrtype} address") from e
    raise ProtocolError(f"SDP {field} address type {addrtype[:10]!r} is not IP4 or IP6")


def _lines(data: bytes) -> list[tuple[str, str]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("SDP payload must be bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("SDP payload is not UTF-8") from e
    # Split on LF only: str.splitlines() would also split on U+2028 and
    # friends, which may appear in a file name.
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    out = []
    for line in raw:
        if line.endswith("\r"):
            line = line[:-1]
        if "\r" in line or "\x00" in line:
            raise ProtocolError("SDP line contains CR or NUL")
        m = _LINE.fullmatch(line)
        if m is None:
            raise ProtocolError(f"SDP line {line[:40]!r} is not <type>=<value>")
        out.append((m.group(1), m.group(2)))
    return out


def _parse_origin(value: str) -> SessionOrigin:
    fields = value.split(" ")
    if len(fields) != 6 or not fields[0]:
        raise ProtocolError("SDP o= must have 6 fields")
    _user, sess_id, sess_version, nettype, addrtype, address = fields
    if nettype != "IN":
        raise ProtocolError("SDP o= network type must be IN")
    version = _uint("session version", sess_version)
    if version > MAX_VERSION:
        raise ProtocolError("SDP session version exceeds 64 bits")
    return SessionOrigin(
        session_id=_uint("session id", sess_id),
        version=version,
        origin=_addr("origin", addrtype, address),
    )


def decode_deletion(data: bytes) -> SessionOrigin:
    """The session a SAP deletion names: its ``o=`` line (alone or in a full SDP)."""
    origins = [value for kind, value in _lines(data) if kind == "o"]
    if len(origins) != 1:
        raise ProtocolError(f"SAP deletion must have one o= line, has {len(origins)}")
    return _parse_origin(origins[0])


def _unquote_filename(text: str) -> str:
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # "%"
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not re.fullmatch(rb"[0-9a-fA-F]{2}", pair):
                raise ProtocolError("bad percent-encoding in file-selector name")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("file-selector name is not UTF-8") from e


def _parse_file_selector(value: str) -> tuple[str, int]:
    """RFC 5547 selectors; we need name and size and skip type and hash."""
    name: str | None = None
    size: int | None = None
    pos = 0
    while pos < len(value):
        if value.startswith('name:"', pos):
            end = value.find('"', pos + 6)
            if end < 0:
                raise ProtocolError("file-selector name has no closing quote")
            if name is not None:
                raise ProtocolError("file-selector has two names")
            name = _unquote_filename(value[pos + 6 : end])
            pos = end + 1
        else:
            end = value.find(" ", pos)
            end = len(value) if end < 0 else end
            selector = value[pos:end]
            if selector.startswith("size:"):
                if size is not None:
                    raise ProtocolError("file-selector has two sizes")
                size = _uint("file-selector size", selector[5:])
            elif not selector:
                raise ProtocolError("empty selector in file-selector")
            pos = end
        if pos < len(value):
            if value[pos] != " ":
                raise ProtocolError("file-selector selectors must be separated by a space")
            pos += 1
            if pos == len(value):
                raise ProtocolError("file-selector ends with a space")
    if name is None or size is None:
        raise ProtocolError("file-selector must give name and size")
    return name, size


def _parse_connection(value: str) -> tuple[IPAddress, int | None]:
    fields = value.split(" ")
    if len(fields) != 3 or fields[0] != "IN":
        raise ProtocolError("SDP c= must be 'IN <addrtype> <address>'")
    _nettype, addrtype, address = fields
    ttl: int | None = None
    if addrtype == "IP4":
        addr_text, slash, ttl_text = address.partition("/")
        if not slash:
            raise ProtocolError("SDP c= IPv4 multicast address needs a /ttl")
        ttl = _uint("c= ttl", ttl_text)
        address = addr_text
    return _addr("connection address", addrtype, address), ttl


def _parse_source_filter(value: str, group: IPAddress) -> IPAddress:
    fields = value.removeprefix(" ").split(" ")
    if len(fields) != 5:
        raise ProtocolError("source-filter must name one destination and one source")
    mode, nettype, addrtype, dest, source = fields
    if mode != "incl" or nettype != "IN":
        raise ProtocolError("source-filter must be 'incl IN'")
    if addrtype != _addrtype(group):
        raise ProtocolError("source-filter address type differs from the group's")
    if dest != "*" and _addr("source-filter destination", addrtype, dest) != group:
        raise ProtocolError("source-filter destination is not the session group")
    return _addr("source-filter source", addrtype, source)


def decode_sdp(data: bytes) -> Announcement:
    """Parse our SDP; ``ProtocolError`` for anything malformed or missing."""
    lines = _lines(data)
    if not lines or lines[0] != ("v", "0"):
        raise ProtocolError("SDP must start with v=0")
    session: dict[str, list[str]] = {}
    media: list[str] = []
    attrs: dict[str, list[str]] = {}
    for kind, value in lines[1:]:
        if kind == "m":
            media.append(value)
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            attrs.setdefault(name, []).append(attr_value)
        elif kind == "c" or not media:
            session.setdefault(kind, []).append(value)
    for kind in "ost":
        if kind not in session:
            raise ProtocolError(f"SDP has no {kind}= line")
    for kind in "osc":
        if len(session.get(kind, ())) > 1:
            raise ProtocolError(f"SDP has more than one {kind}= line")
    if "c" not in session:
        raise ProtocolError("SDP has no c= line")
    if len(media) != 1:
        raise ProtocolError(f"SDP must describe one media, has {len(media)}")

    def attr(name: str, required: bool = True) -> str | None:
        values = attrs.get(name, [])
        if len(values) > 1:
            raise ProtocolError(f"SDP attribute {name} appears {len(values)} times")
        if not values:
            if required:
                raise ProtocolError(f"SDP attribute {name} is missing")
            return None
        return values[0]

    def req(name: str) -> str:
        value = attr(name)
        assert value is not None
        return value

    origin = _parse_origin(session["o"][0])
    group, ttl = _parse_connection(session["c"][0])
    m_fields = media[0].split(" ")
    if len(m_fields) != 4 or m_fields[0] != "application" or m_fields[2:] != ["RTP/AVP", "96"]:
        raise ProtocolError("SDP m= must be 'application <port> RTP/AVP 96'")
    port = _uint("port", m_fields[1])
    sf = attr(_A_SOURCE_FILTER, required=False)
    source = None if sf is None else _parse_source_filter(sf, group)
    name, size = _parse_file_selector(req(_A_FILE_SELECTOR))
    if ttl is None:  # IPv6: the hop limit is ours, 255 (unbounded) when absent
        hop_limit = attr(_A_HOP_LIMIT, required=False)
        ttl = 255 if hop_limit is None else _uint("hop limit", hop_limit)
    try:
        offer = FileOffer(
            content_id=_hex("content id", req(_A_CONTENT_ID), CONTENT_ID_LEN),
            name=name,
            size=size,
            block_length=_uint("block length", req(_A_BLOCK_LENGTH)),
            piece_length=_uint("piece length", req(_A_PIECE_LENGTH)),
            session_id=origin.session_id,
            group=group,
            source=source,
            port=port,
            rate=_uint("rate", req(_A_RATE)),
            control_port=_uint("control port", req(_A_CONTROL_PORT)),
        )
        return Announcement(
            offer=offer,
            node_id=_hex("node id", req(_A_NODE_ID), NODE_ID_LEN),
            public_key=_hex("public key", req(_A_PUBLIC_KEY), PUBLIC_KEY_LEN),
            origin=origin.origin,
            ttl=ttl,
            version=origin.version,
        )
    except ValueError as e:
        raise ProtocolError(f"bad SDP announcement: {e}") from e
