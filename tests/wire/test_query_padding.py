"""padding_for: the one rule for how far a searcher pads a QUERY."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mcp2p.wire.query import (
    COOKIE_LEN,
    GROUP_FACTOR,
    MAX_PADDING,
    ONE_OFFER_GROUP_QUERY,
    ONE_OFFER_QUERY,
    Offer,
    Query,
    encode,
    padding_for,
)
from mcp2p.wire.types import NODE_ID_LEN, FileOffer
from tests.wire.test_query import queries


def _largest_offer(cookie: bytes | None) -> Offer:
    v6 = ipaddress.ip_address
    entry = FileOffer(
        content_id=b"\1" * 32,
        name="n" * 255,
        size=1 << 40,
        block_length=1400,
        piece_length=1 << 20,
        session_id=0xFFFFFFFF,
        group=v6("ff3e::1234"),
        source=v6("2001:db8::1"),
        port=7712,
        rate=10**9,
        control_port=7713,
    )
    return Offer(b"\0" * 8, b"\1" * 16, b"\2" * 32, 1, (entry,), cookie=cookie)


def test_floors_are_the_largest_one_file_offer() -> None:
    # The floors cover the largest one-file OFFER (with a few bytes to spare:
    # the entry size was counted with 24 bytes of sizes where the wire has 18).
    assert 0 <= ONE_OFFER_QUERY - len(encode(_largest_offer(b"\3" * COOKIE_LEN))) <= 6
    group_reply = len(encode(_largest_offer(None)))
    assert 0 <= GROUP_FACTOR * ONE_OFFER_GROUP_QUERY - group_reply <= 6 + GROUP_FACTOR


@given(queries(), st.integers(0, MAX_PADDING))
def test_padding_rule(q: Query, pad: int) -> None:
    padding = padding_for(q, pad)
    assert 0 <= padding <= MAX_PADDING
    # Whatever padding q carried before does not count.
    assert padding_for(dataclasses.replace(q, padding=0), pad) == padding
    bare = len(encode(dataclasses.replace(q, padding=0)))
    size = len(encode(dataclasses.replace(q, padding=padding)))
    floor = ONE_OFFER_QUERY if q.reply_to is not None else ONE_OFFER_GROUP_QUERY
    room = bare + pad - (NODE_ID_LEN + COOKIE_LEN) * len(q.cookies)
    if padding < MAX_PADDING:
        assert size >= floor and size >= room  # large enough ...
        assert padding == 0 or size == max(floor, room)  # ... and no larger


def test_cookies_count_towards_the_padding() -> None:
    reply_to = (ipaddress.ip_address("0.0.0.0"), 40000)
    q = Query(b"\0" * 8, 1, None, "*", answers_wanted=1, reply_to=reply_to)
    cookies = tuple((bytes([i]) * NODE_ID_LEN, b"c" * COOKIE_LEN) for i in range(16))
    with_cookies = dataclasses.replace(q, cookies=cookies)
    big = len(encode(q)) + padding_for(q, 1200)
    assert len(encode(with_cookies)) + padding_for(with_cookies, 1200) == big
    # By content id (pad 0), a multicast-reply query only reaches the group floor.
    by_id = Query(b"\0" * 8, 1, b"\1" * 32, None, answers_wanted=1)
    assert len(encode(by_id)) + padding_for(by_id, 0) == ONE_OFFER_GROUP_QUERY
