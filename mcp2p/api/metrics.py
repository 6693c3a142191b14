"""``GET /metrics``: the node's counters in the Prometheus text format.

Nothing is counted twice: a custom collector reads the live counters the
services already keep (discovery methods' ``stats()``, the serving service
and its sessions, each transfer's receivers and store, the API's refusals)
at scrape time, on a registry of this node's own (never the process-global
one, which holds the Python process metrics and would mix two nodes of one
process). Label sets are bounded: the ``MAX_SESSIONS`` busiest live sessions
and the ``MAX_TRANSFERS`` most recent transfers get series of their own;
node-wide totals cover all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from mcp2p import __version__

if TYPE_CHECKING:
    from mcp2p.api.parts import Counted, Discovery, Fetching, Keys, Parts, Serving
    from mcp2p.trust.keys import NodeIdentity

MAX_SESSIONS = 32
MAX_TRANSFERS = 16
CONTENT_PREFIX = 16  # hex digits of a content id in a label

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Discovery stats that are levels, not counts.
DISCOVERY_GAUGES = {
    "directory": "SAP announcements of other nodes in the directory",
    "announcements": "SAP announcements this node sends",
}
DISCOVERY_HELP = {
    "received": "datagrams received",
    "malformed": "datagrams dropped as malformed",
    "dropped": "SAP packets dropped (malformed, unsupported or unauthenticated)",
    "stray": "queries heard on a socket that does not answer them",
    "offers_received": "OFFER datagrams received",
    "searches": "searches started",
    "queries": "QUERY datagrams handled by the responder",
    "known_silent": "queries not answered: the asker already knows us",
    "no_match": "queries not answered: nothing shared matches",
    "suppressed": "answers suppressed: another node answered first",
    "rate_limited": "answers refused by the answer rate limit",
    "truncated": "answers cut to the amplification budget",
    "offers_sent": "file offers sent",
    "duplicate": "duplicate queries ignored",
    "foreign": "SAP packets of other (non-mcp2p) sessions",
    "own": "SAP packets of our own heard back",
    "deletions": "SAP deletions received",
    "sent_packets": "SAP announcement packets sent",
    "sent_bytes": "SAP announcement bytes sent",
    "deletions_sent": "SAP deletions sent",
    "send_errors": "SAP packets that could not be sent",
}
SERVING_HELP = {
    "connections": "control channels opened by CNs (TLS peer verified)",
    "rejected": "control channels rejected",
    "bad_commands": "control commands refused as malformed or invalid",
    "subscriptions": "subscriptions granted",
    "sessions": "sessions started",
    "collisions": "ASM group collisions heard (another session on our group)",
    "move_failed": "collisions where no free group was left to move to",
    "refused_address": "control connections refused: [serving] connections_per_address",
    "refused_full": "control connections refused: [serving] max_connections",
    "box_too_large": "control channels closed for a box over [serving] max_box",
    "write_stalled": "control channels closed for leaving their replies unread",
    "idle_closed": "control channels closed after [serving] idle_timeout",
    "refused_node": "subscriptions refused: [serving] subscriptions_per_node",
    "refused_ranges": "wanted maps refused: [serving] max_wanted_ranges",
    "refused_loss": "loss reports refused for naming packets never sent",
    "silent_dropped": "subscriptions ended after [serving] report_timeout without a report",
    "slow_moved": "subscribers moved out of a shared session for being far slower",
    "refused_subscriber": "subscriptions refused: [serving] subscribers or [trust] policy",
    "lists_resent": "digest lists sent again over TLS to a CN that missed them",
    "lists_unknown": "digest lists asked for that were no longer kept",
}
TRUST_HELP = {
    "key_changed": "nodes refused: another node's address, or another key, in known_nodes",
    "untrusted": "nodes refused as not trusted ([trust] policy pinned, or the key servers)",
    "recorded": "nodes recorded in known_nodes by trust on first use",
    "known_nodes_bad_lines": "known_nodes lines skipped as malformed",
    "known_nodes_errors": "reads of known_nodes that found it unusable",
    "lookups": "key server look-ups made for the trust policy",
    "lookup_failed": "key server look-ups that failed",
}
SESSION_HELP = {
    "packets": "data packets sent",
    "bytes": "data bytes sent (RTP header and payload)",
    "send_errors": "sends that failed",
    "would_block": "packets lost to a full send buffer",
    "loss_reported": "packets CNs reported lost",
    "moves": "moves to another group after a collision",
    "lists": "digest lists sent on the data path",
}
TRANSFER_HELP = {
    "packets": "data packets received",
    "accepted": "data packets authenticated by a trusted digest list and accepted",
    "malformed": "data packets dropped as malformed",
    "foreign": "data packets of another session (SSRC) dropped",
    "forged": "data packets whose digest matched no listed digest (forged or corrupted)",
    "unannounced": "packets held until dropped, no list ever named them",
    "duplicate": "duplicate data packets",
    "lost": "data packets lost (announced, never arrived)",
    "late": "data packets that arrived after being reported lost",
    "notices": "packet digests taken from trusted digest lists",
    "held": "data packets that came before their digest list was trusted, held for it",
    "lists": "digest lists trusted (their hash came on the control channel)",
    "lists_asked": "digest lists asked of the SN after not coming on the data path",
    "lists_fetched": "digest lists received over the control channel after asking",
    "lists_lost": "digest lists named but never had (their packets reported lost)",
    "lists_unconfirmed": "digest list packets no hash ever came for (forged or late)",
    "bad_blocks": "blocks that failed to decode or write",
    "bad_pieces": "pieces that failed their hash",
    "pieces": "pieces verified",
    "store_written": "blocks written to the partial file",
    "store_duplicates": "blocks already held",
    "store_bad_pieces": "pieces the store found bad",
}
KEYS_HELP = {
    "accepted": "key records stored from clients' POSTs",
    "replicated": "key records stored from peers' anti-entropy",
    "pruned": "expired key records dropped",
    "lookups": "HKP look-ups answered",
    "rounds": "anti-entropy rounds run",
    "peer_errors": "anti-entropy exchanges with a peer that failed",
}
# Transfer counters exported under another name, or as gauges.
TRANSFER_RENAMED = {"forged_hold_sum": "forged_hold_seconds"}
TRANSFER_GAUGES = {
    "forged_hold_max": ("forged_hold_max_seconds", "longest a forged packet was held"),
    "bytes_verified": ("verified_bytes", "bytes in verified pieces"),
}

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def metric_key(key: str) -> str | None:
    """``key`` as a metric name part, or None when it cannot be one (a plugin's odd stat)."""
    key = re.sub(r"[^a-z0-9_]", "_", key.lower())
    return key if _NAME.fullmatch(key) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def fetch_totals(counters: Iterable[dict[str, float]]) -> dict[str, float]:
    """Transfer counters (see `Fetch.totals`) summed over transfers; levels left out."""
    out: dict[str, float] = {}
    for c in counters:
        for key, value in c.items():
            if key not in TRANSFER_GAUGES:
                out[key] = out.get(key, 0) + value
    return out


class NodeCollector(Collector):
    """Yields every counter of the parts it is given at scrape time; a part
    left out (None) has no series."""

    def __init__(
        self,
        identity: NodeIdentity,
        serving: Serving | None = None,
        discovery: Discovery | None = None,
        fetching: Fetching | None = None,
        trust: Counted | None = None,
        keys: Keys | None = None,
        api_errors: Mapping[int, int] | None = None,
        api_refused: Mapping[str, int] | None = None,
    ) -> None:
        """``api_errors`` (HTTP status -> answers) and ``api_refused`` (reason ->
        refusals): the API's own tallies, read at each scrape."""
        self.identity = identity
        self.serving = serving
        self.discovery = discovery
        self.fetching = fetching
        self.trust = trust
        self.keys = keys
        self.api_errors = api_errors
        self.api_refused = api_refused

    @classmethod
    def of(
        cls, parts: Parts, api_errors: Mapping[int, int], api_refused: Mapping[str, int]
    ) -> NodeCollector:
        """The collector of every part of a daemon's node and its API's tallies."""
        p = parts
        return cls(
            p.identity, p.serving, p.discovery, p.fetching, p.trust, p.keys, api_errors, api_refused
        )

    def describe(self) -> Iterable[Metric]:
        return []  # names are not known before a scrape (plugins' stats)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "mcp2p_node_info", "this node (always 1)", labels=["node_id", "version"]
        )
        info.add_metric([self.identity.node_id.hex(), __version__], 1)
        yield info
        if self.serving is not None:
            yield from self._shares(self.serving)
            yield from self._serving(self.serving)
        if self.discovery is not None:
            yield from self._discovery(self.discovery)
        if self.fetching is not None:
            yield from self._fetching(self.fetching)
        trust = self.trust
        if trust is not None:
            for key, doc in TRUST_HELP.items():
                yield CounterMetricFamily("mcp2p_trust_" + key, doc, value=trust.counters[key])
        if self.keys is not None:
            yield from self._keys(self.keys)
        errors = self.api_errors
        if errors is not None:
            family = CounterMetricFamily(
                "mcp2p_api_errors",
                "API requests answered with an error, by HTTP status",
                labels=["code"],
            )
            for code, count in sorted(errors.items()):
                family.add_metric([str(code)], count)
            yield family
        refusals = self.api_refused
        if refusals is not None:
            family = CounterMetricFamily(
                "mcp2p_api_refused",
                "API requests refused by the access checks, by reason",
                labels=["reason"],
            )
            for reason, count in sorted(refusals.items()):
                family.add_metric([reason], count)
            yield family

    def _keys(self, keys: Keys) -> Iterator[Metric]:
        yield GaugeMetricFamily("mcp2p_keys_records", "key records held", value=len(keys.store))
        for key, doc in KEYS_HELP.items():
            value = keys.counters.get(key, keys.store.counters.get(key, 0))
            yield CounterMetricFamily("mcp2p_keys_" + key, doc, value=value)
        family = CounterMetricFamily(
            "mcp2p_keys_rejected", "key records refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(keys.store.rejected.items()):
            family.add_metric([reason], count)
        yield family

    def _shares(self, serving: Serving) -> Iterator[Metric]:
        entries = serving.catalog.entries()
        yield GaugeMetricFamily("mcp2p_shared_files", "files shared", value=len(entries))
        yield GaugeMetricFamily(
            "mcp2p_shared_bytes", "bytes shared", value=sum(e.size for e in entries)
        )

    def _discovery(self, discovery: Discovery) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for method, stats in sorted(discovery.stats().items()):
            for raw, value in sorted(stats.items()):
                key, number = metric_key(raw), _number(value)
                if key is None or number is None:
                    continue
                family = families.get(key)
                if family is None:
                    name = "mcp2p_discovery_" + key
                    if raw in DISCOVERY_GAUGES:
                        family = GaugeMetricFamily(name, DISCOVERY_GAUGES[raw], labels=["method"])
                    else:
                        doc = DISCOVERY_HELP.get(raw, f"discovery counter {raw}")
                        family = CounterMetricFamily(name, doc, labels=["method"])
                    families[key] = family
                family.add_metric([method], number)  # type: ignore[attr-defined]
        yield from families.values()
        yield GaugeMetricFamily(
            "mcp2p_peers",
            "other nodes remembered from recent search results",
            value=len(getattr(discovery, "peers", ())),
        )

    def _serving(self, serving: Serving) -> Iterator[Metric]:
        for key, doc in SERVING_HELP.items():
            yield CounterMetricFamily(
                "mcp2p_serving_" + key, doc, value=serving.counters.get(key, 0)
            )
        totals = serving.session_totals()
        for key, doc in SESSION_HELP.items():
            yield CounterMetricFamily(
                f"mcp2p_sessions_{key}",
                doc + ", all sessions",
                value=totals.get(key, 0),
            )
        live = serving.live_sessions()
        yield GaugeMetricFamily("mcp2p_sessions_live", "sessions not yet ended", value=len(live))
        yield GaugeMetricFamily(
            "mcp2p_subscriptions_live", "current subscriptions", value=len(serving.subscriptions)
        )
        live.sort(key=lambda s: -s.counters["bytes"])
        labels = ["session", "content", "mode"]
        per = {
            key: CounterMetricFamily(f"mcp2p_session_{key}", doc, labels=labels)
            for key, doc in SESSION_HELP.items()
        }
        rate = GaugeMetricFamily(
            "mcp2p_session_rate_bits_per_second", "the session's sending rate", labels=labels
        )
        subscribers = GaugeMetricFamily(
            "mcp2p_session_subscribers", "subscribers of the session", labels=labels
        )
        for session in live[:MAX_SESSIONS]:
            entry = serving.contents.get(session)
            content = entry.content_id.hex()[:CONTENT_PREFIX] if entry is not None else ""
            values = [
                f"{session.session_id:08x}",
                content,
                "multicast" if session.group else "unicast",
            ]
            for key, family in per.items():
                family.add_metric(values, session.counters.get(key, 0))
            rate.add_metric(values, session.rates.rate)
            subscribers.add_metric(values, len(session.subscribers))
        yield from per.values()
        yield rate
        yield subscribers

    def _fetching(self, fetching: Fetching) -> Iterator[Metric]:
        transfers = list(fetching.transfers.values())
        states = GaugeMetricFamily("mcp2p_transfers", "transfers by state", labels=["state"])
        for state in ("running", "done", "failed"):
            states.add_metric([state], sum(1 for t in transfers if t.state == state))
        yield states
        counters = {id(t): t.counters() for t in transfers}
        totals = fetch_totals(counters.values())
        for key, doc in TRANSFER_HELP.items():
            yield CounterMetricFamily(
                f"mcp2p_fetch_{key}", doc + ", all transfers", value=totals.get(key, 0)
            )
        recent = sorted(transfers, key=lambda t: t.id)[-MAX_TRANSFERS:]
        labels = ["transfer", "content"]
        per: dict[str, Metric] = {
            key: CounterMetricFamily(f"mcp2p_transfer_{key}", doc, labels=labels)
            for key, doc in TRANSFER_HELP.items()
        }
        per["forged_hold_sum"] = CounterMetricFamily(
            "mcp2p_transfer_forged_hold_seconds",
            "seconds forged packets were held before a notice exposed them",
            labels=labels,
        )
        for key, (name, doc) in TRANSFER_GAUGES.items():
            per[key] = GaugeMetricFamily(f"mcp2p_transfer_{name}", doc, labels=labels)
        progress = GaugeMetricFamily(
            "mcp2p_transfer_bytes", "bytes held (verified or written)", labels=labels
        )
        size = GaugeMetricFamily("mcp2p_transfer_size_bytes", "the file's size", labels=labels)
        rate = GaugeMetricFamily(
            "mcp2p_transfer_rate_bytes_per_second", "receiving rate, last 5 s", labels=labels
        )
        for transfer in recent:
            summary = transfer.summary()
            values = [str(transfer.id), (summary["content_id"] or "")[:CONTENT_PREFIX]]
            c = counters[id(transfer)]
            for key, family in per.items():
                family.add_metric(values, c.get(key, 0))  # type: ignore[attr-defined]
            progress.add_metric(values, summary["bytes"] or 0)
            if summary["total"] is not None:
                size.add_metric(values, summary["total"])
            rate.add_metric(values, summary["rate"] or 0.0)
        yield from per.values()
        yield progress
        yield size
        yield rate


def registry_for(collector: NodeCollector) -> CollectorRegistry:
    """A registry of this node's own, holding only its collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
