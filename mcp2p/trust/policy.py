"""Whose word a node takes: the trust policy's decisions, pure (DESIGN.md 6).

No Twisted and no files here: given a node id, its key (and the address of
its control channel, for an SN) and the ``known_nodes`` state, `judge` says
trusted, unknown or key changed; `standing` turns that into what the
``[trust] policy`` makes of it (trusted, unknown, refused); `admit` is the
SN's ``[serving] subscribers`` rule; `choose` resolves a name that several
content ids answer to (names are labels, not votes).

What trust on first use pins. A node id is the hash of its public key
(`mcp2p.trust.keys.node_id_of`), and both the OFFER and the TLS channel
prove that key, so "the same node id with another key" cannot happen short
of a hash collision (it is still checked: a known_nodes line says which key
an id had). What can change, as a host's key in SSH's known_hosts, is the
node that answers at a place we used before: the address and control port
of an SN we fetched from. That endpoint is pinned to the node id; another
node id answering there is "key changed" and refused until the operator
removes the old entry (`mcp2p trust remove`). A known node seen at a new
endpoint moves its pin (a node that changed address is not an impostor; a
new key at the old address is). The names each node served are recorded
too (bounded), for the operator and for ranking, but a name is never a pin:
files are renamed and updated.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from mcp2p.trust.keys import node_id_of

POLICIES = ("tofu", "pinned", "keyservers", "open")
PICKS = ("nearest", "most", "trusted")
ORIGINS = ("tofu", "operator")

MAX_NODES = 2048  # entries of known_nodes; the least recently seen TOFU entry goes first
MAX_NAMES = 16  # (name, content id) pairs remembered per node, the newest kept...
NAMES_BYTES = 2048  # ...as long as they fit in this many bytes of the file's line
MAX_LABEL = 64
MAX_ADDRESS = 64  # "host:port", an IPv6 host in brackets


class Verdict(enum.Enum):
    """What known_nodes says of a node."""

    TRUSTED = "trusted"  # known, with this key, and (for an SN) not another node's endpoint
    UNKNOWN = "unknown"  # never recorded
    KEY_CHANGED = "key changed"  # its id, or the endpoint it answers at, is pinned to another key


class Standing(enum.Enum):
    """What the policy makes of a node."""

    TRUSTED = "trusted"  # believed, ranked first
    UNKNOWN = "unknown"  # believed (tofu, keyservers, open), ranked after the trusted
    REFUSED = "refused"  # its offers are dropped and it may not subscribe


class KnownError(Exception):
    """A known_nodes entry or operation that cannot be; the message says why, in one line."""


@dataclass(frozen=True)
class KnownNode:
    node_id: bytes
    public_key: bytes
    first_seen: float
    last_seen: float
    label: str = ""
    origin: str = "tofu"  # tofu: recorded after a verified fetch; operator: added by hand
    address: str = ""  # "host:port" of the control channel we fetched from ("" if none)
    names: tuple[tuple[str, bytes], ...] = ()  # (name, content id) it served us, newest last

    def __post_init__(self) -> None:
        if len(self.public_key) != 32 or node_id_of(self.public_key) != self.node_id:
            raise KnownError("the key's node id is not the entry's node id")
        if self.origin not in ORIGINS:
            raise KnownError(f"origin must be one of {', '.join(ORIGINS)}")
        if len(self.label) > MAX_LABEL or not self.label.isprintable():
            raise KnownError(f"a label is at most {MAX_LABEL} printable characters")
        if len(self.address) > MAX_ADDRESS or not self.address.isprintable():
            raise KnownError(f"an address is at most {MAX_ADDRESS} printable characters")
        if len(self.names) > MAX_NAMES:
            raise KnownError(f"at most {MAX_NAMES} names per node")
        for name, content_id in self.names:
            if not name or len(name.encode("utf-8", "replace")) > 255 or len(content_id) != 32:
                raise KnownError("a name is 1-255 bytes and a content id 32 bytes")
        for t in (self.first_seen, self.last_seen):
            if not 0 <= t < 1e11:  # NaN fails too
                raise KnownError("times are seconds since 1970")


@dataclass(frozen=True)
class KnownState:
    """The known_nodes file, read: entries by node id."""

    nodes: Mapping[bytes, KnownNode] = field(default_factory=dict)

    @functools.cached_property
    def endpoints(self) -> dict[str, bytes]:
        return {n.address: n.node_id for n in self.nodes.values() if n.address}

    def find(self, text: str) -> list[KnownNode]:
        """The entries ``text`` names: a node id, a prefix of its hex, or a label."""
        t = text.strip().lower()
        by_label = [n for n in self.nodes.values() if n.label and n.label == text.strip()]
        by_id = [n for n in self.nodes.values() if t and n.node_id.hex().startswith(t)]
        exact = [n for n in by_id if n.node_id.hex() == t]
        return exact or by_label or (by_id if len(t) >= 4 else [])


def judge(state: KnownState, node_id: bytes, public_key: bytes, address: str = "") -> Verdict:
    """What ``state`` says of a node proving ``public_key`` (an SN: answering at ``address``)."""
    if node_id_of(public_key) != node_id:
        return Verdict.KEY_CHANGED
    known = state.nodes.get(node_id)
    if known is not None and known.public_key != public_key:
        return Verdict.KEY_CHANGED
    pinned = state.endpoints.get(address) if address else None
    if pinned is not None and pinned != node_id:
        return Verdict.KEY_CHANGED
    return Verdict.TRUSTED if known is not None else Verdict.UNKNOWN


def standing(policy: str, verdict: Verdict, vouched: bool | None = None) -> Standing:
    """What ``policy`` makes of ``verdict``; ``vouched`` is the key servers' word
    (True: they hold this key as the node's current record; False: they hold
    another key, or a revocation; None: no record, or not asked)."""
    if policy == "open":
        return Standing.UNKNOWN
    if verdict is Verdict.KEY_CHANGED or vouched is False:
        return Standing.REFUSED
    if verdict is Verdict.TRUSTED or (policy == "keyservers" and vouched):
        return Standing.TRUSTED
    if policy == "pinned":
        return Standing.REFUSED
    return Standing.UNKNOWN


Subscribers = str | tuple[bytes, ...]  # "any", "trusted" or a list of node ids


def admit(subscribers: Subscribers, node_id: bytes, node_standing: Standing) -> str:
    """Why the node may not subscribe here, or "" when it may.

    A refused node never may (under ``pinned`` every unknown node is refused,
    so ``any`` there means the pinned nodes); a list admits exactly its ids.
    """
    if node_standing is Standing.REFUSED:
        return "refused by [trust] policy"
    if isinstance(subscribers, tuple):
        return "" if node_id in subscribers else "not in [serving] subscribers"
    if subscribers == "trusted" and node_standing is not Standing.TRUSTED:
        return "not a trusted node ([serving] subscribers = trusted)"
    return ""


def remember(
    state: KnownState,
    node_id: bytes,
    public_key: bytes,
    now: float,
    *,
    address: str = "",
    names: Iterable[tuple[str, bytes]] = (),
    label: str | None = None,
    origin: str = "tofu",
) -> KnownState:
    """``state`` with the node recorded (or its entry refreshed).

    An operator's entry stays an operator's; the node's endpoint pin moves
    to ``address`` (no other entry may hold it: it is taken from one that
    did, which only an operator's ``add`` can ask for). Past ``MAX_NODES``
    the least recently seen TOFU entry is forgotten; a state of operator
    entries only is full (KnownError).
    """
    if judge(state, node_id, public_key) is Verdict.KEY_CHANGED:
        raise KnownError(f"node {node_id.hex()} is known with another key")
    nodes = dict(state.nodes)
    old = nodes.get(node_id)
    kept = list(old.names) if old else []
    for name, content_id in names:
        kept = [(n, c) for n, c in kept if n != name] + [(name, content_id)]
    kept = kept[-MAX_NAMES:]
    while kept and sum(len(json.dumps(n)) + 72 for n, _ in kept) > NAMES_BYTES:
        kept.pop(0)
    entry = KnownNode(
        node_id,
        public_key,
        first_seen=old.first_seen if old else now,
        last_seen=max(now, old.last_seen) if old else now,
        label=label if label is not None else (old.label if old else ""),
        origin="operator" if origin == "operator" or (old and old.origin == "operator") else "tofu",
        address=address or (old.address if old else ""),
        names=tuple(kept),
    )
    if address:
        for other in list(nodes.values()):
            if other.address == address and other.node_id != node_id:
                nodes[other.node_id] = replace(other, address="")
    nodes[node_id] = entry
    while len(nodes) > MAX_NODES:
        tofu = [n for n in nodes.values() if n.origin == "tofu" and n.node_id != node_id]
        if not tofu:
            raise KnownError(f"known_nodes is full ({MAX_NODES} entries added by the operator)")
        del nodes[min(tofu, key=lambda n: (n.last_seen, n.node_id)).node_id]
    return KnownState(nodes)


def forget(state: KnownState, node_id: bytes) -> KnownState:
    return KnownState({k: v for k, v in state.nodes.items() if k != node_id})


# -- names are labels, not votes


@dataclass(frozen=True)
class Candidate:
    """One content id a name resolved to, with who offers it."""

    content_id: bytes
    name: str
    size: int
    nodes: tuple[bytes, ...]  # node ids offering it (not refused)
    trusted: int  # how many of them are trusted
    hops: int | None  # the nearest one's distance (None: unknown)

    def to_json(self) -> dict[str, object]:
        return {
            "content_id": self.content_id.hex(),
            "size": self.size,
            "name": self.name,
            "nodes": sorted(n.hex() for n in self.nodes),
            "trusted": self.trusted,
            "trust": "trusted" if self.trusted else "unknown",
            "hops": self.hops,
        }


def _near(c: Candidate) -> int:
    return 256 if c.hops is None else c.hops


def choose(candidates: Sequence[Candidate], pick: str | None = None) -> Candidate | None:
    """The candidate to fetch, or None when the user must choose.

    One candidate is the answer. Otherwise, without ``pick``, the one content
    id that trusted nodes offer (None when none or several are). ``pick``:
    ``trusted``, the one most trusted nodes offer (None when no trusted node
    offers any); ``nearest``, the one offered nearest (fewest hops); ``most``,
    the one most nodes offer (the old vote: a sybil's choice, asked for).
    Ties go to trusted, then nearer, then more nodes, then the smaller
    content id: the answer never depends on the order offers came in.
    """
    if pick is not None and pick not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}")
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        return None
    if pick is None:
        trusted = [c for c in candidates if c.trusted]
        return trusted[0] if len(trusted) == 1 else None

    def rank(c: Candidate) -> tuple[int, ...]:
        tie = (-c.trusted, _near(c), -len(c.nodes))
        if pick == "nearest":
            return (_near(c), -c.trusted, -len(c.nodes))
        if pick == "most":
            return (-len(c.nodes),) + tie
        return tie

    if pick == "trusted" and not any(c.trusted for c in candidates):
        return None
    return min(candidates, key=lambda c: (rank(c), c.content_id))
