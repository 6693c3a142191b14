"""The node's trust policy at work: `mcp2p.trust.policy` decisions over the
``known_nodes`` file, and the key servers' word where the policy asks for it.

One `TrustGate` per daemon (``Node.trust``), shared by the CN side (which
offers a fetch believes, `mcp2p.transfer.fetch`) and the SN side (who may
subscribe, `mcp2p.transfer.serving`), so its counters are the node's.

``policy = keyservers`` asks an injected ``lookup(node_id)``: a callable
returning a Deferred that fires with the key servers' *verified* current
record for that node id, or None (none held). The record needs
``public_key`` (bytes) and may have ``revoked`` (true: refused). Answers are
cached for ``LOOKUP_TTL`` seconds (``LOOKUP_CACHE`` node ids at most); a
failed look-up counts as "no record". Without a lookup wired in, only the
known_nodes entries are trusted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from mcp2p.core.display import display_text
from mcp2p.trust.known import KnownNodes
from mcp2p.trust.policy import (
    KnownError,
    KnownState,
    Standing,
    Subscribers,
    Verdict,
    admit,
    judge,
    remember,
    standing,
)

if TYPE_CHECKING:
    from mcp2p.config import Config
    from mcp2p.interfaces import Clock

_log = Logger()

LOOKUP_TTL = 300.0
LOOKUP_CACHE = 1024
REFUSALS_LOGGED = 1024  # (node, address) pairs whose refusal was logged; then one line per 2^n

Lookup = Callable[[bytes], "defer.Deferred[Any]"]


class TrustGate:
    def __init__(
        self,
        policy: str,
        subscribers: Subscribers,
        known: KnownNodes,
        clock: Clock | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        self.policy = policy
        self.subscribers = subscribers
        self.known = known
        self.clock = clock
        self.lookup = lookup
        self.counters = {
            "key_changed": 0,  # offers or subscriptions of a node refused as "key changed"
            "untrusted": 0,  # refused under pinned (unknown) or by the key servers' word
            "recorded": 0,  # nodes recorded (or refreshed) by trust on first use
            "known_nodes_bad_lines": 0,  # lines of known_nodes skipped (each read's count)
            "known_nodes_errors": 0,  # reads that found the file unusable
            "lookups": 0,
            "lookup_failed": 0,
        }
        self.cache: OrderedDict[bytes, tuple[float, bool | None]] = OrderedDict()
        self.logged: set[tuple[bytes, str]] = set()
        self._seen_error = ""
        self._seen_reads = 0
        if policy == "keyservers" and lookup is None:
            _log.warn(
                "[trust] policy = keyservers but no key server client is configured: "
                "only the nodes in {path} are trusted",
                path=str(known.path),
            )

    @classmethod
    def from_config(
        cls, config: Config, reactor: Any = None, lookup: Lookup | None = None
    ) -> TrustGate:
        """The gate of ``config`` ([trust], [serving] subscribers, [node] state_dir);
        under keyservers it asks ``[keys] servers`` (`mcp2p.trust.keyclient.lookup_for`,
        over ``reactor``) unless ``lookup`` is given."""
        if lookup is None and config.trust.policy == "keyservers" and config.keys.servers:
            from mcp2p.trust.keyclient import lookup_for

            if reactor is None:
                from twisted.internet import reactor
            lookup = lookup_for(config.keys, reactor)
        return cls(
            config.trust.policy,
            config.serving.subscribers,
            KnownNodes(config.node.state_dir),
            reactor,
            lookup,
        )

    def now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    def state(self) -> KnownState:
        """known_nodes as it is now; a newly bad file or bad lines are logged once per read."""
        if self.policy == "open":
            return KnownState()
        state = self.known.current()
        if self.known.reads != self._seen_reads:
            self._seen_reads = self.known.reads
            if self.known.error:
                self.counters["known_nodes_errors"] += 1
                if self.known.error != self._seen_error:
                    _log.error("{error}", error=display_text(self.known.error))
            elif self.known.bad_lines:
                self.counters["known_nodes_bad_lines"] += self.known.bad_lines
                _log.warn(
                    "{path}: {bad} lines skipped (not a known node entry)",
                    path=str(self.known.path),
                    bad=self.known.bad_lines,
                )
            self._seen_error = self.known.error
        return state

    # -- decisions

    def standing_now(self, node_id: bytes, public_key: bytes, address: str = "") -> Standing | None:
        """The node's standing, or None when the key servers must be asked first."""
        if self.policy == "open":
            return Standing.UNKNOWN
        state = self.state()
        verdict = judge(state, node_id, public_key, address)
        vouched: bool | None = None
        if self.policy == "keyservers" and verdict is Verdict.UNKNOWN and self.lookup is not None:
            cached = self.cache.get(node_id)
            if cached is None or cached[0] <= self.now():
                return None
            vouched = cached[1]
        result = standing(self.policy, verdict, vouched)
        if result is Standing.REFUSED:
            self._refused(state, node_id, address, verdict)
        return result

    def standing_of(
        self, node_id: bytes, public_key: bytes, address: str = ""
    ) -> defer.Deferred[Standing]:
        now = self.standing_now(node_id, public_key, address)
        if now is not None:
            return defer.succeed(now)
        assert self.lookup is not None
        self.counters["lookups"] += 1
        d = defer.maybeDeferred(self.lookup, node_id)

        def looked(record: Any) -> Standing:
            if record is None:
                vouched: bool | None = None
            elif getattr(record, "revoked", False):
                vouched = False
            else:
                vouched = getattr(record, "public_key", None) == public_key
            self.cache[node_id] = (self.now() + LOOKUP_TTL, vouched)
            self.cache.move_to_end(node_id)
            while len(self.cache) > LOOKUP_CACHE:
                self.cache.popitem(last=False)
            return self.standing_now(node_id, public_key, address) or Standing.UNKNOWN

        def failed(f: Any) -> Any:
            self.counters["lookup_failed"] += 1
            _log.info(
                "key server look-up of {node} failed: {error}",
                node=node_id.hex()[:12],
                error=display_text(f.getErrorMessage()),
            )
            return None

        d.addErrback(failed)
        d.addCallback(looked)
        return d

    def admission(self, node_id: bytes, public_key: bytes) -> str | None:
        """Why this CN may not subscribe ("" when it may), or None: ask `admission_of`."""
        if self.subscribers == "any" and self.policy in ("open", "tofu"):
            return ""  # nothing to decide: no file read on the SN's hot path
        now = self.standing_now(node_id, public_key)
        return None if now is None else admit(self.subscribers, node_id, now)

    def admission_of(self, node_id: bytes, public_key: bytes) -> defer.Deferred[str]:
        d = self.standing_of(node_id, public_key)
        return d.addCallback(lambda s: admit(self.subscribers, node_id, s))

    def _refused(self, state: KnownState, node_id: bytes, address: str, verdict: Verdict) -> None:
        key = "key_changed" if verdict is Verdict.KEY_CHANGED else "untrusted"
        self.counters[key] += 1
        if (node_id, address) in self.logged:
            return
        if len(self.logged) >= REFUSALS_LOGGED:
            n = self.counters[key]
            if n & (n - 1):
                return
        else:
            self.logged.add((node_id, address))
        who = f"node {node_id.hex()[:12]}" + (f" at {address}" if address else "")
        if verdict is Verdict.KEY_CHANGED:
            pinned = state.endpoints.get(address) if address else None
            other = state.nodes.get(pinned) if pinned else None
            if other is not None:
                why = (
                    f"{address} belongs to node {other.node_id.hex()} in {self.known.path}; if "
                    f"that node's key really changed, run: mcp2p trust remove {other.node_id.hex()}"
                )
            else:
                why = f"its key is not the one {self.known.path} holds for its node id"
            _log.warn(
                "{who} refused: key changed: {why} ({count} refused so far, counted in "
                "mcp2p_trust_key_changed)",
                who=who,
                why=why,
                count=self.counters[key],
            )
        else:
            _log.warn(
                "{who} refused by [trust] policy = {policy}: not a trusted node "
                "({count} so far, counted in mcp2p_trust_untrusted)",
                who=who,
                policy=self.policy,
                count=self.counters[key],
            )

    # -- trust on first use

    def record_use(
        self, nodes: Iterable[tuple[bytes, bytes, str]], name: str, content_id: bytes
    ) -> None:
        """Under tofu, remember the SNs (node id, key, address) a verified fetch
        of ``name`` used. Never fails the fetch: a file that cannot be written
        is logged."""
        if self.policy != "tofu":
            return
        nodes = list(nodes)
        if not nodes:
            return
        now = self.now()

        def change(state: KnownState) -> KnownState:
            for node_id, key, address in nodes:
                if judge(state, node_id, key, address) is Verdict.KEY_CHANGED:
                    continue  # refused earlier; never re-pinned by a fetch
                state = remember(
                    state, node_id, key, now, address=address, names=[(name, content_id)]
                )
            return state

        try:
            self.known.update(change)
        except KnownError as e:
            _log.warn("trust on first use not recorded: {error}", error=display_text(str(e)))
            return
        self.counters["recorded"] += len(nodes)
