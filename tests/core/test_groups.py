"""random_group: a session group drawn from the configured pools."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.groups import random_group

net = ipaddress.ip_network


@st.composite
def pools_v4(draw: st.DrawFn) -> ipaddress.IPv4Network:
    prefix = draw(st.integers(4, 32))
    address = draw(st.integers(0xE0000000, 0xEFFFFFFF))
    return ipaddress.IPv4Network((address, prefix), strict=False)


@st.composite
def pools_v6(draw: st.DrawFn) -> ipaddress.IPv6Network:
    prefix = draw(st.integers(8, 128))
    address = draw(st.integers(0xFF << 120, (1 << 128) - 1))
    return ipaddress.IPv6Network((address, prefix), strict=False)


@given(st.lists(st.one_of(pools_v4(), pools_v6()), min_size=1, max_size=5), st.randoms())
def test_stays_inside_a_pool_of_its_version(pools: list, rng: random.Random) -> None:
    for version in (4, 6):
        reserved = 2 if version == 4 else 1  # the first, and for IPv4 the last, address
        ours = [p for p in pools if p.version == version and p.num_addresses > reserved]
        if not ours:
            with pytest.raises(ValueError, match=f"IPv{version}"):
                random_group(pools, version, rng)
            continue
        group = random_group(pools, version, rng)
        assert group.version == version
        assert group.is_multicast
        home = [p for p in ours if group in p]
        assert home
        assert all(group != p.network_address for p in home)
        if version == 4:
            assert all(group != p.broadcast_address for p in home)


def test_default_pools() -> None:
    pools = [net("232.0.0.0/8"), net("ff3e::/32")]
    rng = random.Random(1)
    for _ in range(200):
        v4 = random_group(pools, 4, rng)
        v6 = random_group(pools, 6, rng)
        assert v4 in pools[0] and v4 != ipaddress.ip_address("232.0.0.0")
        assert v4 != ipaddress.ip_address("232.255.255.255")
        assert v6 in pools[1] and v6 != ipaddress.ip_address("ff3e::")


def test_smallest_pools() -> None:
    rng = random.Random(0)
    seen4 = {random_group([net("232.1.1.0/30")], 4, rng) for _ in range(100)}
    assert seen4 == {ipaddress.ip_address("232.1.1.1"), ipaddress.ip_address("232.1.1.2")}
    seen6 = {random_group([net("ff3e::8000:0/127")], 6, rng) for _ in range(20)}
    assert seen6 == {ipaddress.ip_address("ff3e::8000:1")}


@pytest.mark.parametrize(
    ("pools", "version"),
    [
        ([], 4),
        ([net("ff3e::/32")], 4),
        ([net("232.0.0.0/8")], 6),
        ([net("232.1.1.1/32")], 4),  # no usable address
        ([net("232.1.1.0/31")], 4),  # only the first and last
        ([net("ff3e::1/128")], 6),
    ],
)
def test_no_usable_pool(pools: list, version: int) -> None:
    with pytest.raises(ValueError, match=f"no IPv{version} multicast pool"):
        random_group(pools, version, random.Random(0))


def test_tiny_pools_are_skipped_when_others_exist() -> None:
    pools = [net("232.1.1.1/32"), net("232.9.9.0/30")]
    rng = random.Random(3)
    assert all(random_group(pools, 4, rng) in pools[1] for _ in range(50))


def test_bigger_pools_are_chosen_more_often() -> None:
    small, big = net("232.1.1.0/28"), net("232.2.0.0/16")
    rng = random.Random(7)
    counts = Counter(
        "big" if random_group([small, big], 4, rng) in big else "small" for _ in range(1000)
    )
    assert counts["big"] > 950


def test_same_seed_same_group() -> None:
    pools = [net("232.0.0.0/8")]
    assert random_group(pools, 4, random.Random(42)) == random_group(pools, 4, random.Random(42))
