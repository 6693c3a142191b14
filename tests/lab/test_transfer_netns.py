"""Transfers between real daemons in namespaces: what multicast saves, and loss.

One SN and four CNs on a switch, every link shaped to 100 Mbit/s (so times
are dominated by the transfer, not by how two cores share out the
processes), the SN's sessions at 95 Mbit/s. The SN's transmitted bytes
are read from its veth's counters; every delivered file is compared with
the source. Loss is nftables dropping UDP into the CNs (no netem here).
Root only; all traffic stays inside the namespaces these tests make.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp2p.lab.net import Network, missing_requirements
from mcp2p.lab.transfer import FetchResult, StarLab, median

_reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
if _reason:
    pytest.skip(f"namespace transfer tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

MB = 1 << 20
LINK_RATE = 100_000_000
FILES = {"a.bin": 20 * MB, "b.bin": 40 * MB, "small.bin": 4 * MB}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarLab]:
    root = tmp_path_factory.mktemp("transfer")
    with Network() as net:
        star = StarLab(net, root, 4, rate=LINK_RATE)
        for name, size in FILES.items():
            star.share(size, name=name)
        star.start_sn(rate="95M")
        yield star
        star.stop_sn()


def check(result: FetchResult, lab: StarLab) -> None:
    assert result.ok, result.failures() + "\n" + lab.sn_log()[-3000:]


def test_multicast_costs_the_sn_one_copy_unicast_one_per_cn(lab: StarLab) -> None:
    lab.set_loss(None)
    multicast = lab.fetch(3, name="a.bin", mode="multicast", timeout=60)
    check(multicast, lab)
    unicast = lab.fetch(3, name="a.bin", mode="unicast", timeout=90)
    check(unicast, lab)
    assert multicast.sn_ratio < 1.3, multicast.to_json()
    assert unicast.sn_ratio >= 2.7, unicast.to_json()


def test_a_fetch_completes_through_5_percent_loss(lab: StarLab) -> None:
    lab.set_loss(0.05)
    try:
        result = lab.fetch(1, name="small.bin", timeout=90)
    finally:
        lab.set_loss(None)
    check(result, lab)
    assert result.drops["cn1"] > 0  # the loss rule really dropped data


def test_one_percent_loss_costs_four_cns_less_than_half_again(lab: StarLab) -> None:
    lab.set_loss(None)
    clean = lab.fetch(4, name="b.bin", timeout=90)
    check(clean, lab)
    lab.set_loss(0.01)
    try:
        lossy = lab.fetch(4, name="b.bin", timeout=90)
    finally:
        lab.set_loss(None)
    check(lossy, lab)
    assert all(d > 0 for d in lossy.drops.values()), lossy.drops
    assert median(lossy.elapsed) <= 1.5 * median(clean.elapsed), (clean.elapsed, lossy.elapsed)


def test_cn_daemons_start_late_joiners_and_serve_nothing(lab: StarLab) -> None:
    lab.set_loss(None)
    result = lab.fetch(2, name="small.bin", starts=[0.0, 1.0], timeout=60)
    check(result, lab)
    assert [c.start for c in result.cns] == [0.0, 1.0]
    assert result.cns[1].wall >= 1.0  # it started a second after the signal
    # the receiver counters of each CN are in the JSON
    for cn in result.to_json()["cns"]:
        assert cn["receivers"] and cn["receivers"][0]["accepted"] > 0, cn
        assert cn["store"]["written"] > 0, cn
    # every link end was counted: at least the SN's copy and one per CN
    assert result.link_bytes >= result.sn_tx_bytes + 2 * result.size * 0.9
    # the CNs are long-lived daemons that never offer what they fetched
    for name in ("cn1", "cn2"):
        status = lab.cns[name].status()
        assert status["shared_files"] == 0, status
        assert status["discovery"]["query"]["offers_sent"] == 0, status
