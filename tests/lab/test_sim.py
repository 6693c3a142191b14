"""The discovery simulation (`mcp2p.lab.sim`): pure computation, no root."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.core.sapinterval import announcement_interval
from mcp2p.lab import sim

# networkx is a lab extra (`pip install .[lab]`, which `make test` installs):
# without it this module is skipped, and the rest of the suite still runs.
nx = pytest.importorskip("networkx", reason="networkx (the lab extras, .[lab]) is not installed")


def _graph(topo: sim.Topology) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(topo.routers))
    g.add_edges_from((u, v) for u, vs in enumerate(topo.adj) for v in vs)
    return g


@pytest.mark.parametrize("kind", sim.KINDS)
def test_topologies_are_connected_and_sized(kind: str) -> None:
    topo = sim.make_topology(kind, 5000, 10, random.Random(3))
    g = _graph(topo)
    assert topo.routers == 500
    assert nx.is_connected(g)
    if kind == "tree":
        assert nx.is_tree(g)
    else:
        assert g.number_of_edges() == 2 * 500 - 3  # BA, m = 2 (first router joins with one)
        assert max(d for _, d in g.degree()) > 10  # hubs
    assert topo.links == g.number_of_edges() + topo.routers


def test_bfs_matches_networkx() -> None:
    topo = sim.make_topology("ba", 3000, 10, random.Random(5))
    dist = sim.bfs_distances(topo, 7)
    ref = nx.single_source_shortest_path_length(_graph(topo), 7)
    assert dist == [ref[v] for v in range(topo.routers)]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        sim.make_topology("ring", 10, 1, random.Random(0))
    with pytest.raises(ValueError):
        sim.make_topology("tree", 0, 1, random.Random(0))
    with pytest.raises(ValueError):
        sim.simulate(sim.SimParams(samples=0))
    with pytest.raises(ValueError):
        sim.simulate(sim.SimParams(loss=1.0))


@settings(max_examples=30, deadline=None)
@given(k=st.sampled_from(sim.RING_SCHEDULE), seed=st.integers(0, 1000))
def test_query_finds_a_file_k_hops_away_at_ring_k(k: int, seed: int) -> None:
    found, sent = sim.search_time([float(k)], random.Random(seed))
    assert found is not None
    assert sent[-1] == k  # the ring that reached it is the last one sent
    assert sent == [h for h in sim.RING_SCHEDULE if h <= k]
    # each earlier ring waited out its timeout; the answer came within this one's
    rings_before = len(sent) - 1
    assert rings_before * sim.RING_TIMEOUT <= found < (rings_before + 1) * sim.RING_TIMEOUT


def test_query_gives_up_beyond_the_schedule() -> None:
    found, sent = sim.search_time([40.0], random.Random(0))
    assert found is None
    assert sent == list(sim.RING_SCHEDULE)
    found, sent = sim.search_time([], random.Random(0))
    assert found is None and sent == list(sim.RING_SCHEDULE)


def test_ring_links_counts_a_perfect_multicast_tree() -> None:
    # a chain of routers: 1 router at each distance 1..5
    per_d = [1, 1, 1, 1, 1, 1]
    assert sim.ring_links(per_d, 1) == 1  # own LAN only
    assert sim.ring_links(per_d, 2) == 2  # + the link to the next router
    assert sim.ring_links(per_d, 3) == 4  # + its LAN and the next router link
    # growing hop limits never cross fewer links
    counts = [sim.ring_links(per_d, h) for h in range(1, 10)]
    assert counts == sorted(counts)
    assert counts[-1] == 1 + 5 + 5  # all router links, all other LANs


def test_sap_bytes_grow_with_network_size_then_cap() -> None:
    points = [
        sim.simulate(sim.SimParams(kind="ba", peers=n, files_per_node=1, samples=2))
        for n in (10, 100, 1000, 10_000)
    ]
    per_link = [p["sap"]["bytes_per_min_link"] for p in points]
    total = [p["sap"]["bytes_per_min_total"] for p in points]
    assert per_link == sorted(per_link)
    assert per_link[0] < per_link[-1]
    assert total == sorted(total) and total[0] < total[-1]
    # at the RFC's cap every link carries 4000 bit/s (+ Ethernet headers)
    cap = 60 * 4000 / 8
    assert cap <= per_link[-1] <= cap * 1.05
    # and a cold directory waits longer the more announcements there are
    medians = [sorted(p["sap"]["times"])[len(p["sap"]["times"]) // 2] for p in points]
    assert medians[-1] > 5 * medians[1]


def test_sap_time_is_about_half_an_interval() -> None:
    p = sim.simulate(sim.SimParams(peers=1000, files_per_node=100, samples=200))
    interval = announcement_interval(sim.sap_ad_size(), 100_000)
    assert p["sap"]["interval"] == interval
    mean = sum(p["sap"]["times"]) / len(p["sap"]["times"])
    assert 0.4 * interval < mean < 0.65 * interval
    assert max(p["sap"]["times"]) <= interval * 4 / 3


def test_loss_only_delays() -> None:
    clean = sim.simulate(sim.SimParams(peers=2000, files_per_node=100, samples=30, seed=9))
    lossy = sim.simulate(
        sim.SimParams(peers=2000, files_per_node=100, samples=30, seed=9, loss=0.3)
    )
    assert sum(lossy["sap"]["times"]) > sum(clean["sap"]["times"])


def test_popular_files_are_found_sooner_and_cheaper_than_rare_ones() -> None:
    p = sim.simulate(sim.SimParams(kind="ba", peers=20_000, files_per_node=1000, samples=30))
    rare = sorted(t for t in p["query"]["rare"]["times"] if t is not None)
    popular = sorted(t for t in p["query"]["popular"]["times"] if t is not None)
    assert p["query"]["rare"]["found"] == 1.0
    assert popular[len(popular) // 2] < rare[len(rare) // 2]
    assert p["query"]["popular"]["bytes_per_min_link"] < p["query"]["rare"]["bytes_per_min_link"]


def test_wire_sizes_come_from_the_encoders() -> None:
    q, o = sim.query_sizes()
    assert 300 < q < 1500 and 100 < o < 1500
    assert 300 < sim.sap_ad_size() < 1400
    assert sim.sap_ad_size("x" * 200) > sim.sap_ad_size("x")


def test_a_hundred_thousand_nodes_in_seconds() -> None:
    t0 = time.process_time()
    p = sim.simulate(sim.SimParams(kind="ba", peers=100_000, files_per_node=1000, samples=5))
    assert time.process_time() - t0 < 20  # about 1 s here; CPU time, not wall
    assert p["routers"] == 10_000
    assert p["query"]["rare"]["found"] == 1.0
