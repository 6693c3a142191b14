"""``GET /metrics``: the Prometheus text format, parsed by prometheus_client's
own parser, with real values after a real loopback fetch between two daemons."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mcp2p.api import metrics
from mcp2p.app import build
from mcp2p.config import config_from_string
from mcp2p.transfer.fetching import Transfer
from tests.api.helpers import daemon_pair, wait_for
from tests.nodes import free_udp_port, node_ini

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_after_a_loopback_fetch(tmp_path: Path) -> None:
    size = 200_000
    with daemon_pair(tmp_path, {"small.bin": size}) as (sn, cn):
        tid = cn.json("/api/fetch", {"target": "small.bin"})["id"]
        wait_for(
            "the fetch to finish",
            lambda: cn.json(f"/api/transfers/{tid}")["state"] != "running",
        )
        assert cn.json(f"/api/transfers/{tid}")["state"] == "done"
        # A refused request is counted, whatever refused it.
        refused_code, _, _ = cn.request("/api/status", host=f"evil.example:{cn.port}")
        assert refused_code == 403
        answers = {}
        for name, node in (("sn", sn), ("cn", cn)):
            code, headers, body = node.request("/metrics")
            assert code == 200
            assert headers["content-type"].startswith("text/plain")
            answers[name] = parse(body.decode())
        cn_id = cn.json("/api/status")["node_id"]
        content = cn.json("/api/transfers")["transfers"][0]["content_id"]
    cn_samples, cn_types = answers["cn"]
    sn_samples, sn_types = answers["sn"]
    assert all(name.startswith("mcp2p_") for name in {**cn_types, **sn_types})
    assert value(cn_samples, "mcp2p_node_info", node_id=cn_id, version="0.1.0") == 1

    # The CN: one transfer done, its packets and pieces counted, per transfer and in all.
    assert cn_types["mcp2p_fetch_accepted"] == "counter"
    blocks = -(-size // 1400)
    assert value(cn_samples, "mcp2p_transfers", state="done") == 1
    assert value(cn_samples, "mcp2p_transfers", state="running") == 0
    assert value(cn_samples, "mcp2p_fetch_packets_total") >= blocks
    assert value(cn_samples, "mcp2p_fetch_accepted_total") >= blocks
    assert value(cn_samples, "mcp2p_fetch_notices_total") >= blocks
    assert value(cn_samples, "mcp2p_fetch_forged_total") == 0
    assert value(cn_samples, "mcp2p_fetch_malformed_total") == 0
    labels = {"transfer": str(tid), "content": content[: metrics.CONTENT_PREFIX]}
    assert value(cn_samples, "mcp2p_transfer_pieces_total", **labels) == -(-size // 65536)
    assert value(cn_samples, "mcp2p_transfer_verified_bytes", **labels) == size
    assert value(cn_samples, "mcp2p_transfer_size_bytes", **labels) == size
    assert value(cn_samples, "mcp2p_transfer_bytes", **labels) == size
    assert value(cn_samples, "mcp2p_transfer_store_written_total", **labels) >= blocks
    assert value(cn_samples, "mcp2p_discovery_searches_total", method="query") >= 1
    assert value(cn_samples, "mcp2p_discovery_offers_received_total", method="query") >= 1
    assert value(cn_samples, "mcp2p_peers") >= 1
    assert value(cn_samples, "mcp2p_api_errors_total", code=str(refused_code)) >= 1
    if "mcp2p_api_refused" in cn_types:  # the access checks count their refusals by reason
        assert value(cn_samples, "mcp2p_api_refused_total", reason="host") >= 1

    # The SN: the file shared, one subscription, a session that sent it all.
    assert value(sn_samples, "mcp2p_shared_files") == 1
    assert value(sn_samples, "mcp2p_shared_bytes") == size
    assert value(sn_samples, "mcp2p_serving_connections_total") >= 1
    assert value(sn_samples, "mcp2p_serving_subscriptions_total") == 1
    assert value(sn_samples, "mcp2p_serving_sessions_total") == 1
    assert value(sn_samples, "mcp2p_serving_bad_commands_total") == 0
    assert value(sn_samples, "mcp2p_sessions_packets_total") >= blocks
    assert value(sn_samples, "mcp2p_sessions_bytes_total") >= size
    assert value(sn_samples, "mcp2p_discovery_queries_total", method="query") >= 1
    assert value(sn_samples, "mcp2p_discovery_offers_sent_total", method="query") >= 1
    assert value(sn_samples, "mcp2p_discovery_announcements", method="sap") == 1
    assert value(sn_samples, "mcp2p_discovery_sent_packets_total", method="sap") >= 1


def test_transfer_series_are_bounded_and_totals_cover_all(tmp_path: Path) -> None:
    """A node that ran many transfers exports series for the newest only;
    the node-wide totals still count every one."""
    ini = node_ini(tmp_path, free_udp_port(), free_udp_port())
    node = build(config_from_string(ini, str(tmp_path))).node  # type: ignore[attr-defined]
    count = metrics.MAX_TRANSFERS + 9
    for tid in range(1, count + 1):
        transfer = Transfer(tid, f"file-{tid}")
        transfer.state = "done"
        transfer.final = {"packets": 10, "lost": 1, "forged_hold_max": 0.5}
        transfer.add(
            {
                "event": "manifest",
                "name": f"file-{tid}",
                "size": 1000,
                "content_id": f"{tid:016x}" + "ab" * 24,
            }
        )
        node.fetching.transfers[tid] = transfer
    collector = metrics.NodeCollector.of(node.api.parts, {}, {})
    samples, types = parse(metrics.render(metrics.registry_for(collector)).decode())
    series = [dict(labels) for (name, labels) in samples if name == "mcp2p_transfer_packets_total"]
    assert sorted(int(s["transfer"]) for s in series) == list(
        range(count - metrics.MAX_TRANSFERS + 1, count + 1)
    )
    assert value(samples, "mcp2p_fetch_packets_total") == 10 * count
    assert value(samples, "mcp2p_fetch_lost_total") == count
    assert value(samples, "mcp2p_transfers", state="done") == count
    assert types["mcp2p_transfer_forged_hold_max_seconds"] == "gauge"
    assert (
        value(
            samples,
            "mcp2p_transfer_forged_hold_max_seconds",
            transfer=str(count),
            content=f"{count:016x}",
        )
        == 0.5
    )


def test_metric_key_keeps_names_prometheus_accepts() -> None:
    assert metrics.metric_key("offers_sent") == "offers_sent"
    assert metrics.metric_key("Bad-Key") == "bad_key"
    assert metrics.metric_key("9lives") is None
    assert metrics.metric_key("") is None
