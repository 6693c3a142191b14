"""The trust policy's pure decisions: judge, standing, admit, remember, choose."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.trust.keys import node_id_of
from mcp2p.trust.policy import (
    MAX_NAMES,
    MAX_NODES,
    POLICIES,
    Candidate,
    KnownError,
    KnownNode,
    KnownState,
    Standing,
    Verdict,
    admit,
    choose,
    forget,
    judge,
    remember,
    standing,
)


def ident() -> tuple[bytes, bytes]:
    key = os.urandom(32)
    return node_id_of(key), key


A, B, C = ident(), ident(), ident()


def state_with(*nodes: tuple[bytes, bytes, str]) -> KnownState:
    state = KnownState()
    for node_id, key, address in nodes:
        state = remember(state, node_id, key, 1000.0, address=address)
    return state


def test_unknown_then_trusted_once_remembered() -> None:
    assert judge(KnownState(), *A) is Verdict.UNKNOWN
    state = state_with((*A, "10.0.0.1:7713"))
    assert judge(state, *A) is Verdict.TRUSTED
    assert judge(state, *A, address="10.0.0.1:7713") is Verdict.TRUSTED
    assert judge(state, *B) is Verdict.UNKNOWN


def test_another_node_at_a_pinned_endpoint_is_a_key_change() -> None:
    """node id = hash(key): what TOFU pins is the endpoint an SN answered at."""
    state = state_with((*A, "10.0.0.1:7713"))
    assert judge(state, *B, address="10.0.0.1:7713") is Verdict.KEY_CHANGED
    assert judge(state, *B, address="10.0.0.1:7714") is Verdict.UNKNOWN
    # A known node at a new endpoint is itself, and its pin moves there.
    moved = remember(state, *A, 2000.0, address="10.0.0.2:7713")
    assert judge(moved, *B, address="10.0.0.1:7713") is Verdict.UNKNOWN
    assert judge(moved, *B, address="10.0.0.2:7713") is Verdict.KEY_CHANGED


def test_a_key_that_does_not_hash_to_the_id_or_differs_from_the_entry() -> None:
    state = state_with((*A, ""))
    assert judge(state, A[0], B[1]) is Verdict.KEY_CHANGED  # claims A's id with B's key
    # An entry whose key is another (a hand-edited file) cannot even be made.
    with pytest.raises(KnownError):
        KnownNode(A[0], B[1], 0.0, 0.0)


@pytest.mark.parametrize(
    ("policy", "verdict", "vouched", "expected"),
    [
        ("open", Verdict.KEY_CHANGED, False, Standing.UNKNOWN),
        ("open", Verdict.TRUSTED, None, Standing.UNKNOWN),
        ("tofu", Verdict.TRUSTED, None, Standing.TRUSTED),
        ("tofu", Verdict.UNKNOWN, None, Standing.UNKNOWN),
        ("tofu", Verdict.KEY_CHANGED, None, Standing.REFUSED),
        ("pinned", Verdict.TRUSTED, None, Standing.TRUSTED),
        ("pinned", Verdict.UNKNOWN, None, Standing.REFUSED),
        ("pinned", Verdict.KEY_CHANGED, None, Standing.REFUSED),
        ("keyservers", Verdict.UNKNOWN, True, Standing.TRUSTED),
        ("keyservers", Verdict.UNKNOWN, None, Standing.UNKNOWN),
        ("keyservers", Verdict.UNKNOWN, False, Standing.REFUSED),
        ("keyservers", Verdict.TRUSTED, None, Standing.TRUSTED),
        ("keyservers", Verdict.TRUSTED, False, Standing.REFUSED),  # revoked beats a pin
        ("keyservers", Verdict.KEY_CHANGED, True, Standing.REFUSED),
    ],
)
def test_standing(policy: str, verdict: Verdict, vouched: bool | None, expected: Standing) -> None:
    assert standing(policy, verdict, vouched) is expected


def test_admit() -> None:
    nid = A[0]
    assert admit("any", nid, Standing.UNKNOWN) == ""
    assert admit("any", nid, Standing.REFUSED)
    assert admit("trusted", nid, Standing.UNKNOWN)
    assert admit("trusted", nid, Standing.TRUSTED) == ""
    assert admit((nid,), nid, Standing.UNKNOWN) == ""
    assert admit((B[0],), nid, Standing.TRUSTED)
    assert admit((nid,), nid, Standing.REFUSED)  # a list never admits a refused node


def test_remember_bounds_names_and_keeps_operator_entries() -> None:
    state = remember(KnownState(), *A, 1.0, origin="operator", label="mirror")
    for i in range(MAX_NAMES + 10):
        state = remember(state, *A, 2.0 + i, names=[(f"f{i}", bytes(32))])
    entry = state.nodes[A[0]]
    assert entry.origin == "operator" and entry.label == "mirror"  # tofu never demotes it
    assert len(entry.names) == MAX_NAMES and entry.names[-1][0] == f"f{MAX_NAMES + 9}"
    assert entry.first_seen == 1.0 and entry.last_seen == MAX_NAMES + 11
    long = remember(state, *A, 99.0, names=[("x" * 250 + str(i), bytes(32)) for i in range(9)])
    assert 1 <= len(long.nodes[A[0]].names) < 9  # bounded in bytes too
    assert forget(state, A[0]).nodes == {}


def test_remember_evicts_the_oldest_tofu_entry_past_the_bound() -> None:
    keys = [os.urandom(32) for _ in range(MAX_NODES + 1)]
    state = KnownState()
    op = ident()
    state = remember(state, *op, 0.0, origin="operator")
    nodes = dict(state.nodes)
    for i, key in enumerate(keys[: MAX_NODES - 1]):
        nodes[node_id_of(key)] = KnownNode(node_id_of(key), key, 1.0 + i, 1.0 + i)
    state = KnownState(nodes)
    assert len(state.nodes) == MAX_NODES
    oldest = node_id_of(keys[0])
    state = remember(state, node_id_of(keys[-1]), keys[-1], 1e6)
    assert len(state.nodes) == MAX_NODES
    assert oldest not in state.nodes and op[0] in state.nodes


def test_find() -> None:
    state = remember(state_with((*A, ""), (*B, "")), *C, 5.0, label="mirror", origin="operator")
    assert state.find(A[0].hex()) == [state.nodes[A[0]]]
    assert state.find(A[0].hex()[:6]) == [state.nodes[A[0]]]
    assert state.find("mirror") == [state.nodes[C[0]]]
    assert state.find("ab") == []  # too short to be a prefix
    assert state.find("zz-nothing") == []


# -- names are not votes


def cand(cid: int, nodes: int, trusted: int = 0, hops: int | None = 1) -> Candidate:
    return Candidate(
        bytes([cid]) * 32,
        "file.bin",
        100,
        tuple(bytes([cid, i]) * 8 for i in range(nodes)),
        trusted,
        hops,
    )


def test_sybils_do_not_outvote_one_trusted_node() -> None:
    real = cand(1, 1, trusted=1, hops=3)
    sybils = [cand(2, 3, hops=1)]
    assert choose([real, *sybils]) == real
    assert choose([real, *sybils], "trusted") == real
    assert choose([real, *sybils], "nearest") == sybils[0]  # asked for
    assert choose([real, *sybils], "most") == sybils[0]  # the old vote, asked for


def test_without_trust_a_name_is_ambiguous_unless_picked() -> None:
    one, two = cand(1, 1, hops=1), cand(2, 3, hops=4)
    assert choose([one, two]) is None
    assert choose([one, two], "trusted") is None  # nobody trusted: nothing to pick by
    assert choose([one, two], "nearest") == one
    assert choose([one, two], "most") == two
    assert choose([one]) == one  # one file: no question
    assert choose([]) is None
    # Two trusted answers are a question too.
    assert choose([cand(1, 1, 1), cand(2, 1, 1)]) is None
    with pytest.raises(ValueError):
        choose([one, two], "random")


candidates = st.lists(
    st.builds(
        cand,
        st.integers(0, 255),
        st.integers(1, 5),
        st.integers(0, 2),
        st.one_of(st.none(), st.integers(1, 32)),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda c: c.content_id,
)


@given(candidates, st.sampled_from([None, "nearest", "most", "trusted"]), st.randoms())
def test_choose_is_one_of_them_and_ignores_order(
    cs: list[Candidate], pick: str | None, rnd: object
) -> None:
    chosen = choose(cs, pick)
    shuffled = list(cs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose(shuffled, pick) == chosen
    assert chosen is None or chosen in cs
    if len(cs) == 1:
        assert chosen == cs[0]


@given(candidates, st.integers(1, 20))
def test_untrusted_candidates_never_displace_the_one_trusted(
    cs: list[Candidate], sybil_nodes: int
) -> None:
    real = cand(255, 1, trusted=1, hops=8)
    others = [c for c in cs if c.content_id != real.content_id]
    others = [Candidate(c.content_id, c.name, c.size, c.nodes, 0, c.hops) for c in others]
    others.append(cand(254, sybil_nodes, hops=1))
    for pick in (None, "trusted"):
        assert choose([real, *others], pick) == real


@given(st.sampled_from(POLICIES), st.sampled_from(list(Verdict)))
def test_a_key_change_is_never_trusted(policy: str, verdict: Verdict) -> None:
    if verdict is Verdict.KEY_CHANGED:
        assert standing(policy, verdict, True) is not Standing.TRUSTED
