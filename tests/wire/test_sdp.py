"""SDP announcements: round trips, RFC 5547 quoting, and hostile input."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.sdp import (
    Announcement,
    SessionOrigin,
    decode_deletion,
    decode_sdp,
    encode_deletion,
    encode_sdp,
    quote_filename,
)
from mcp2p.wire.types import FileOffer, check_name

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

TRICKY_NAMES = [
    'a"b',
    "100%",
    "%22",
    '"',
    "%",
    " ",
    " lead and trail ",
    "été.iso",
    "日本語のファイル.iso",
    "line\u2028sep",
    "nel\x85",
    "a:b;c=d",
    'name:"x" size:3',
    "\U0001f600.txt",
]


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except (ValueError, UnicodeEncodeError):
        return False
    return True


names = st.one_of(
    st.sampled_from(TRICKY_NAMES),
    st.text(min_size=1, max_size=120).filter(_valid_name),
)
unicast4 = st.ip_addresses(v=4).filter(lambda a: not a.is_multicast and not a.is_unspecified)
unicast6 = st.ip_addresses(v=6).filter(lambda a: not a.is_multicast and not a.is_unspecified)
groups4 = st.ip_addresses(network="224.0.0.0/4")
groups6 = st.ip_addresses(network="ff00::/8")


@st.composite
def offers(draw: st.DrawFn, version: int | None = None) -> FileOffer:
    v = draw(st.sampled_from([4, 6])) if version is None else version
    group = draw(groups4 if v == 4 else groups6)
    source = draw(st.none() | (unicast4 if v == 4 else unicast6))
    block = draw(st.integers(16, 65000))
    return FileOffer(
        content_id=draw(st.binary(min_size=32, max_size=32)),
        name=draw(names),
        size=draw(st.integers(0, (1 << 63) - 1)),
        block_length=block,
        piece_length=draw(st.integers(block, 1 << 30)),
        session_id=draw(st.integers(0, 0xFFFFFFFF)),
        group=group,
        source=source,
        port=draw(st.integers(1, 65535)),
        rate=draw(st.integers(0, (1 << 63) - 1)),
        control_port=draw(st.integers(1, 65535)),
    )


@st.composite
def announcements(draw: st.DrawFn) -> Announcement:
    return Announcement(
        offer=draw(offers()),
        node_id=draw(st.binary(min_size=16, max_size=16)),
        public_key=draw(st.binary(min_size=32, max_size=32)),
        origin=draw(unicast4 | unicast6),
        ttl=draw(st.integers(1, 255)),
        version=draw(st.integers(0, (1 << 64) - 1)),
    )


def make_offer(i: int = 1, *, v6: bool = False, ssm: bool = True, name: str = "") -> FileOffer:
    """A realistic offer: a 40-ish character name, SSM from the SN's address."""
    group = V6(f"ff3e::8000:{i:x}") if v6 else V4(f"232.1.{i // 256 % 256}.{i % 256}")
    source = (V6("2001:db8::10") if v6 else V4("192.0.2.10")) if ssm else None
    return FileOffer(
        content_id=i.to_bytes(32, "big"),
        name=name or f"debian-12.{i}.0-amd64-netinst-{i:05d}.iso",
        size=658505728 + i,
        block_length=1400,
        piece_length=1 << 20,
        session_id=0x10000000 + i,
        group=group,
        source=source,
        port=7712,
        rate=20_000_000,
        control_port=7713,
    )


def make_announcement(i: int = 1, *, v6: bool = False, **kw: object) -> Announcement:
    return Announcement(
        offer=make_offer(i, v6=v6, **kw),  # type: ignore[arg-type]
        node_id=b"\x11" * 16,
        public_key=b"\x22" * 32,
        origin=V6("2001:db8::10") if v6 else V4("192.0.2.10"),
        ttl=16,
        version=1700000000,
    )


@given(announcements())
@example(make_announcement(3))
@example(make_announcement(3, v6=True))
@example(make_announcement(4, ssm=False))
def test_round_trip(a: Announcement) -> None:
    data = encode_sdp(a)
    assert data.endswith(b"\r\n")
    assert all(line for line in data.split(b"\r\n")[:-1])
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert decode_sdp(data) == a


@given(announcements())
def test_lf_line_ends_accepted(a: Announcement) -> None:
    assert decode_sdp(encode_sdp(a).replace(b"\r\n", b"\n")) == a


@given(announcements())
def test_deletion_round_trip(a: Announcement) -> None:
    data = encode_deletion(a)
    assert data.startswith(b"v=0\r\no=") and data.count(b"\r\n") == 2
    expected = SessionOrigin(a.offer.session_id, a.version, a.origin)
    assert decode_deletion(data) == expected
    # RFC 2974's form, the o= line alone (other announcers), names it too.
    assert decode_deletion(data.removeprefix(b"v=0\r\n")) == expected
    # A deletion carrying the whole description names the same session.
    assert decode_deletion(encode_sdp(a)) == expected


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (decode_sdp, decode_deletion):
        try:
            decoder(data)
        except ProtocolError:
            pass


@given(announcements(), st.data())
def test_mutated_sdp_raises_only_protocol_error(a: Announcement, data: st.DataObject) -> None:
    raw = bytearray(encode_sdp(a))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from(b' \r\n:"%/0a\x00\xff-=*'))
    try:
        decoded = decode_sdp(bytes(raw))
    except ProtocolError:
        return
    assert isinstance(decoded, Announcement)


@given(announcements(), st.data())
def test_dropped_line_is_missing_or_optional(a: Announcement, data: st.DataObject) -> None:
    lines = encode_sdp(a).split(b"\r\n")[:-1]
    dropped = lines.pop(data.draw(st.integers(0, len(lines) - 1)))
    body = b"\r\n".join(lines) + b"\r\n"
    if dropped.startswith((b"a=tool:", b"b=", b"a=rtpmap:")):
        assert decode_sdp(body) == a
    elif dropped.startswith(b"a=x-mcp2p-hop-limit:"):
        assert decode_sdp(body) == replace(a, ttl=255)
    elif dropped.startswith(b"a=source-filter:"):
        assert decode_sdp(body) == replace(a, offer=replace(a.offer, source=None))
    else:
        with pytest.raises(ProtocolError):
            decode_sdp(body)


def test_layout_of_a_typical_announcement() -> None:
    a = make_announcement(7)
    text = encode_sdp(a).decode()
    lines = text.split("\r\n")
    assert lines[0] == "v=0"
    assert lines[1] == "o=- 268435463 1700000000 IN IP4 192.0.2.10"
    assert lines[2] == f"s={a.offer.name}"
    assert lines[3] == "c=IN IP4 232.1.0.7/16"
    assert lines[4] == "t=0 0"
    assert "m=application 7712 RTP/AVP 96" in lines
    assert "b=AS:20000" in lines
    assert "a=rtpmap:96 mcp2p/90000" in lines
    assert "a=source-filter: incl IN IP4 232.1.0.7 192.0.2.10" in lines
    assert f'a=file-selector:name:"{a.offer.name}" size:{a.offer.size}' in lines
    assert f"a=x-mcp2p-content-id:{'00' * 31}07" in lines
    assert "a=x-mcp2p-rate:20000000" in lines
    # RFC 8866 order: session-level b= would precede t=; ours is media-level.
    assert lines.index("b=AS:20000") == lines.index("m=application 7712 RTP/AVP 96") + 1
    # RFC 2974 recommends SAP packets under 1 KB.
    assert len(text) < 900


def test_ipv6_has_no_ttl_in_c_and_keeps_its_hop_limit() -> None:
    a = replace(make_announcement(2, v6=True), ttl=5)
    text = encode_sdp(a).decode()
    assert "c=IN IP6 ff3e::8000:2\r\n" in text
    assert "o=- 268435458 1700000000 IN IP6 2001:db8::10\r\n" in text
    assert "a=source-filter: incl IN IP6 ff3e::8000:2 2001:db8::10\r\n" in text
    assert "a=x-mcp2p-hop-limit:5\r\n" in text
    assert decode_sdp(text.encode()) == a
    without = text.replace("a=x-mcp2p-hop-limit:5\r\n", "").encode()
    assert decode_sdp(without) == replace(a, ttl=255)


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ('say "hi"', "say %22hi%22"),
        ("100%", "100%25"),
        ("%41", "%2541"),
        ("été", "été"),
        ("tab\x7f", "tab%7F"),
        ("a b", "a b"),
    ],
)
def test_filename_quoting(name: str, quoted: str) -> None:
    assert quote_filename(name) == quoted


def _with_line(a: Announcement, old: str, new: str) -> bytes:
    text = encode_sdp(a).decode()
    assert old in text
    return text.replace(old, new).encode()


def test_rfc5547_selectors_we_do_not_use_are_skipped() -> None:
    a = make_announcement(1, name="file.bin")
    data = _with_line(
        a,
        f'name:"file.bin" size:{a.offer.size}',
        f"type:application/octet-stream hash:sha-1:72:24:5F:E8:65:3D:DA:F3:71:36:2F:86:D4:71"
        f':91:3E:E4:A2:CE:2E size:{a.offer.size} name:"file.bin"',
    )
    assert decode_sdp(data) == a


def test_percent_encoded_utf8_and_lowercase_hex_are_decoded() -> None:
    a = make_announcement(1, name="été")
    data = _with_line(a, 'name:"été"', 'name:"%c3%a9t%C3%A9"')
    assert decode_sdp(data) == a


def test_wildcard_source_filter_destination() -> None:
    a = make_announcement(1)
    data = _with_line(a, "incl IN IP4 232.1.0.1 ", "incl IN IP4 * ")
    assert decode_sdp(data) == a


def test_unknown_lines_and_attributes_are_ignored() -> None:
    a = make_announcement(1)
    data = _with_line(a, "t=0 0\r\n", "i=info\r\nt=0 0\r\nr=1 2 3\r\na=recvonly\r\n")
    assert decode_sdp(data) == a


A = make_announcement(1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("v=0", "v=1"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 232.1.0.1"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 232.1.0.1/16/2"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP6 232.1.0.1"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 192.0.2.1/16"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 232.1.0.1/256"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 232.1.0.1/0"),
        ("c=IN IP4 232.1.0.1/16", "c=IN IP4 ssm.example/16"),
        ("c=IN IP4 232.1.0.1/16\r\n", "c=IN IP4 232.1.0.1/16\r\nc=IN IP4 232.1.0.1/16\r\n"),
        ("o=- 268435457", "o=- 4294967296"),
        ("o=- 268435457", "o=- -1"),
        ("o=- 268435457", "o=- ١٢"),
        ("o=- 268435457", "o=- 1_000"),
        ("1700000000 IN IP4", "18446744073709551616 IN IP4"),
        ("IN IP4 192.0.2.10\r\n", "IN IP4 224.0.0.1\r\n"),
        ("IN IP4 192.0.2.10\r\n", "IN IP4 0.0.0.0\r\n"),
        ("IN IP4 192.0.2.10\r\n", "IN IP4 host.example\r\n"),
        ("IN IP4 192.0.2.10\r\n", "IN IP6 fe80::1%eth0\r\n"),
        ("IN IP4 192.0.2.10\r\n", "ATM NSAP 47.0005\r\n"),
        ("m=application 7712 RTP/AVP 96", "m=audio 7712 RTP/AVP 96"),
        ("m=application 7712 RTP/AVP 96", "m=application 7712/2 RTP/AVP 96"),
        ("m=application 7712 RTP/AVP 96", "m=application 0 RTP/AVP 96"),
        ("m=application 7712 RTP/AVP 96", "m=application 7712 RTP/AVP 97"),
        ("m=application 7712 RTP/AVP 96", "m=application 7712 UDP/TLS 96"),
        ("a=rtpmap", "m=application 1 RTP/AVP 96\r\na=rtpmap"),
        ("incl IN IP4", "excl IN IP4"),
        ("incl IN IP4", "incl IN IP6"),
        ("232.1.0.1 192.0.2.10", "232.1.0.2 192.0.2.10"),
        ("232.1.0.1 192.0.2.10", "232.1.0.1 192.0.2.10 192.0.2.11"),
        ("232.1.0.1 192.0.2.10", "232.1.0.1 232.1.0.9"),
        ('name:"', "name:"),
        ('" size:', " size:"),
        ("size:", "size:-"),
        ("size:", "size: "),
        ('name:"debian', 'name:"%zz'),
        ('name:"debian', 'name:"%C3'),
        ('name:"debian', 'name:"%00'),
        ('name:"debian', 'name:"%2F'),
        ('-amd64-netinst-00001.iso" size', '-amd64-netinst-00001.iso"size'),
        ("a=x-mcp2p-rate:", "a=x-mcp2p-rate:1\r\na=x-mcp2p-rate:"),
        ("a=x-mcp2p-rate:20000000", "a=x-mcp2p-rate:2e7"),
        ("a=x-mcp2p-block-length:1400", "a=x-mcp2p-block-length:15"),
        ("a=x-mcp2p-piece-length:1048576", "a=x-mcp2p-piece-length:1000"),
        ("a=x-mcp2p-control-port:7713", "a=x-mcp2p-control-port:65536"),
        ("a=x-mcp2p-node-id:" + "11" * 16, "a=x-mcp2p-node-id:" + "11" * 15),
        ("a=x-mcp2p-public-key:" + "22" * 32, "a=x-mcp2p-public-key:" + "zz" * 32),
        ("a=x-mcp2p-content-id:", "a=x-mcp2p-content-id:0x"),
        ("t=0 0\r\n", "t=0 0\r\n\r\n"),
        ("t=0 0\r\n", "t=0 0\r\nT=0 0\r\n"),
        ("t=0 0\r\n", "t=0 0\r\nnot a line\r\n"),
        ("t=0 0\r\n", "t=0 0\r\x00\n"),
    ],
)
def test_malformed_is_refused(old: str, new: str) -> None:
    with pytest.raises(ProtocolError):
        decode_sdp(_with_line(A, old, new))


@pytest.mark.parametrize(
    "data",
    [b"", b"v=0", b"\xff\xfe", "v=0\r\ns=é".encode("latin-1"), b"o=- 1 1 IN IP4 1.2.3.4"],
)
def test_truncated_or_not_utf8(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_sdp(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"v=0\r\n",
        b"o=- 1 1 IN IP4 1.2.3.4\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
        b"o=- 1 1 IN IP4\r\n",
        b"o=- 1 1 ATM IP4 1.2.3.4\r\n",
        b"o=- 1 x IN IP4 1.2.3.4\r\n",
    ],
)
def test_bad_deletions(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_deletion(data)


def test_deletion_accepts_foreign_session_ids() -> None:
    # NTP-style ids from other SAP tools still parse; they just match nothing of ours.
    got = decode_deletion(b"o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\n")
    assert got == SessionOrigin(3724394400, 3724394405, V4("198.51.100.1"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node_id", b"\x00" * 15),
        ("public_key", b"\x00" * 33),
        ("origin", V4("239.1.1.1")),
        ("origin", V4("0.0.0.0")),
        ("origin", "192.0.2.1"),
        ("origin", V6("fe80::1%eth0")),
        ("ttl", 0),
        ("ttl", 256),
        ("ttl", True),
        ("version", -1),
        ("version", 1 << 64),
        ("offer", None),
    ],
)
def test_announcement_validates(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        replace(A, **{field: value})  # type: ignore[arg-type]


def test_announcement_refuses_scoped_group() -> None:
    offer = replace(make_offer(1, v6=True, ssm=False), group=V6("ff12::1%eth0"))
    with pytest.raises(ValueError, match="scope"):
        replace(make_announcement(1, v6=True), offer=offer)


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_tricky_names_survive(name: str) -> None:
    a = make_announcement(1, name=name)
    assert decode_sdp(encode_sdp(a)) == a
