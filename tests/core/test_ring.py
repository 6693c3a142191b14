"""The expanding-ring search: actions, stopping rules, hop distances (DESIGN.md 4.1)."""

from __future__ import annotations

import heapq
import ipaddress
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.ring import MAX_KNOWN, ArmRetry, ArmTimer, Finished, RingSearch, SendQuery
from mcp2p.wire.query import Offer
from mcp2p.wire.types import FileOffer

REQUEST = b"R" * 8
TIMEOUT = 0.3


def node(i: int) -> bytes:
    return i.to_bytes(16, "big")


def key(i: int) -> bytes:
    return bytes([i % 256]) * 32


def file_offer(i: int) -> FileOffer:
    return FileOffer(
        content_id=i.to_bytes(32, "big"),
        name=f"file-{i}",
        size=1000,
        block_length=1400,
        piece_length=1 << 20,
        session_id=i,
        group=ipaddress.IPv4Address("232.1.2.3"),
        source=ipaddress.IPv4Address("192.0.2.1"),
        port=7712,
        rate=10**8,
        control_port=7713,
    )


def offer(i: int, hop: int, files: tuple[int, ...] = (0,), **kwargs: object) -> Offer:
    kwargs.setdefault("public_key", key(i))
    return Offer(
        REQUEST,
        node(i),
        hop_limit=hop,
        files=tuple(file_offer(f) for f in files),
        **kwargs,  # type: ignore[arg-type]
    )


def ring(schedule: tuple[int, ...] = (1, 2, 4, 8), enough: int = 3) -> RingSearch:
    return RingSearch(schedule, TIMEOUT, enough)


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timeout", "enough"),
    [((), 0.3, 1), ((2, 1), 0.3, 1), ((1, 1), 0.3, 1), ((1,), 0, 1), ((1,), 0.3, 0)],
)
def test_bad_arguments(schedule: tuple[int, ...], timeout: float, enough: int) -> None:
    with pytest.raises(ValueError):
        RingSearch(schedule, timeout, enough)


# -- walking the schedule -------------------------------------------------------------


def test_first_action_is_hop_one_and_a_timer() -> None:
    search = ring()
    assert search.state == "IDLE"
    assert search.start(10.0) == [SendQuery(1, ()), ArmTimer(TIMEOUT)]
    assert search.state == "RINGING"
    assert search.hop_limit == 1
    assert search.queries_sent == 1
    assert search.start(10.1) == []  # starting twice sends nothing


def test_events_before_start_are_ignored() -> None:
    search = ring()
    assert search.ring_timeout(1.0) == []
    assert search.offer(offer(1, 1), "10.0.0.1", 1.0) == []
    assert search.servers == {} and search.state == "IDLE"


def test_timeouts_walk_the_schedule_then_exhaust() -> None:
    search = ring((1, 2, 4, 8), enough=3)
    actions = search.start(0.0)
    sent = [actions[0].hop_limit]
    now = 0.0
    while True:
        now += TIMEOUT
        actions = search.ring_timeout(now)
        if actions and isinstance(actions[0], Finished):
            break
        assert actions == [SendQuery(actions[0].hop_limit, ()), ArmTimer(TIMEOUT)]
        sent.append(actions[0].hop_limit)
    assert sent == [1, 2, 4, 8]
    assert actions == [Finished("exhausted")]
    assert search.state == "DONE" and search.reason == "exhausted"
    assert search.queries_sent == 4
    assert search.sent_at == {1: 0.0, 2: 0.3, 4: 0.6, 8: pytest.approx(0.9)}


def test_single_ring_schedule() -> None:
    search = ring((5,), enough=1)
    assert search.start(0.0) == [SendQuery(5, ()), ArmTimer(TIMEOUT)]
    assert search.ring_timeout(TIMEOUT) == [Finished("exhausted")]


def test_exhausted_with_some_answers_keeps_them() -> None:
    search = ring((1, 2), enough=3)
    search.start(0.0)
    search.offer(offer(1, 1), "10.0.0.1", 0.05)
    search.ring_timeout(0.3)
    search.offer(offer(2, 2), "10.0.0.2", 0.35)
    assert search.ring_timeout(0.6) == [Finished("exhausted")]
    assert set(search.servers) == {node(1), node(2)}


# -- stopping on enough answers -----------------------------------------------------------


def test_stops_as_soon_as_enough_distinct_sns_answered() -> None:
    search = ring((1, 2, 4), enough=2)
    search.start(0.0)
    assert search.offer(offer(1, 1), "10.0.0.1", 0.05) == []
    # More offers from the same SN do not count twice.
    assert search.offer(offer(1, 1, files=(1,)), "10.0.0.1", 0.06) == []
    assert search.offer(offer(2, 1), "10.0.0.2", 0.07) == [Finished("enough")]
    assert search.state == "DONE" and search.reason == "enough"
    assert search.queries_sent == 1  # the timer never had to fire
    assert search.ring_timeout(0.3) == []


def test_enough_reached_in_a_later_ring() -> None:
    search = ring((1, 2, 4), enough=2)
    search.start(0.0)
    search.offer(offer(1, 1), "10.0.0.1", 0.05)
    search.ring_timeout(0.3)
    assert search.offer(offer(2, 2), "10.0.0.2", 0.4) == [Finished("enough")]
    assert search.queries_sent == 2


def test_events_after_done_are_ignored() -> None:
    search = ring((1, 2), enough=1)
    search.start(0.0)
    assert search.offer(offer(1, 1), "10.0.0.1", 0.01) == [Finished("enough")]
    before = dict(search.servers)
    assert search.offer(offer(2, 1), "10.0.0.2", 0.02) == []
    assert search.offer(offer(1, 1, files=(7,)), "10.0.0.1", 0.02) == []
    assert search.ring_timeout(0.3) == []
    assert search.cancel() == []
    assert search.start(0.4) == []
    assert search.servers == before
    assert set(search.servers[node(1)].files) == {file_offer(0).content_id}
    assert search.reason == "enough"


# -- known answers -----------------------------------------------------------------------


def test_later_rings_list_the_sns_heard() -> None:
    search = ring((1, 2, 4, 8), enough=10)
    search.start(0.0)
    search.offer(offer(1, 1), "10.0.0.1", 0.05)
    search.offer(offer(2, 1), "10.0.0.2", 0.06)
    assert search.ring_timeout(0.3) == [SendQuery(2, (node(1), node(2))), ArmTimer(TIMEOUT)]
    search.offer(offer(3, 2), "10.0.0.3", 0.4)
    assert search.ring_timeout(0.6)[0] == SendQuery(4, (node(1), node(2), node(3)))


def test_known_list_is_capped() -> None:
    search = ring((1, 2), enough=1000)
    search.start(0.0)
    for i in range(MAX_KNOWN + 10):
        search.offer(offer(i, 1), f"10.0.0.{i % 250}", 0.01)
    first = search.ring_timeout(0.3)[0]
    assert isinstance(first, SendQuery)
    assert first.known == tuple(node(i) for i in range(MAX_KNOWN))


# -- distances -----------------------------------------------------------------------------


def test_record_of_an_answer() -> None:
    search = ring((1, 2, 4), enough=5)
    search.start(1.0)
    search.ring_timeout(1.3)
    search.offer(offer(1, 2, files=(1, 2), truncated=True), "10.0.0.1", 1.35)
    record = search.servers[node(1)]
    assert record.node_id == node(1) and record.public_key == key(1)
    assert record.address == "10.0.0.1"
    assert record.distance == 2
    assert record.rtt == pytest.approx(0.05)
    assert set(record.files) == {file_offer(1).content_id, file_offer(2).content_id}
    assert record.truncated


def test_late_answer_from_an_earlier_ring_lowers_the_distance() -> None:
    search = ring((1, 2, 4), enough=5)
    search.start(0.0)
    search.ring_timeout(0.3)
    search.offer(offer(1, 2, files=(1,)), "10.0.0.9", 0.32)
    assert search.servers[node(1)].distance == 2
    # The hop-1 answer was slow, and arrives during ring 2.
    search.offer(offer(1, 1, files=(2,)), "10.0.0.1", 0.4)
    record = search.servers[node(1)]
    assert record.distance == 1
    assert record.rtt == pytest.approx(0.4)  # measured from the hop-1 ring
    assert record.address == "10.0.0.1"
    assert set(record.files) == {file_offer(1).content_id, file_offer(2).content_id}


def test_larger_ring_does_not_raise_the_distance() -> None:
    search = ring((1, 2, 4), enough=5)
    search.start(0.0)
    search.offer(offer(1, 1), "10.0.0.1", 0.05)
    search.ring_timeout(0.3)
    search.offer(offer(1, 2, files=(3,)), "10.0.0.99", 0.31)
    record = search.servers[node(1)]
    assert (record.distance, record.address) == (1, "10.0.0.1")
    assert record.rtt == pytest.approx(0.05)
    assert file_offer(3).content_id in record.files  # but its files are kept


@pytest.mark.parametrize("hop", [3, 4, 255])
def test_offers_for_hop_limits_never_sent_are_ignored(hop: int) -> None:
    search = ring((1, 2, 4), enough=1)
    search.start(0.0)
    search.ring_timeout(0.3)  # rings 1 and 2 sent; 4 not yet
    assert search.offer(offer(1, hop), "10.0.0.1", 0.31) == []
    assert search.servers == {}
    assert search.state == "RINGING"


def test_truncated_flag_sticks() -> None:
    search = ring((1,), enough=5)
    search.start(0.0)
    search.offer(offer(1, 1, truncated=True), "10.0.0.1", 0.01)
    search.offer(offer(1, 1, files=(1,)), "10.0.0.1", 0.02)
    assert search.servers[node(1)].truncated


def test_impostor_with_another_key_changes_nothing() -> None:
    search = ring((1, 2, 4), enough=5)
    search.start(0.0)
    search.ring_timeout(0.3)
    search.offer(offer(1, 2), "10.0.0.1", 0.32)
    # Same node id, other key, smaller ring, other address: ignored entirely.
    forged = offer(1, 1, files=(9,), truncated=True, public_key=b"\xee" * 32)
    assert search.offer(forged, "203.0.113.66", 0.33) == []
    record = search.servers[node(1)]
    assert record.public_key == key(1)
    assert (record.distance, record.address) == (2, "10.0.0.1")
    assert set(record.files) == {file_offer(0).content_id}
    assert not record.truncated


def test_files_are_merged_by_content_id() -> None:
    search = ring((1,), enough=5)
    search.start(0.0)
    search.offer(offer(1, 1, files=(1, 2)), "10.0.0.1", 0.01)
    search.offer(offer(1, 1, files=(2, 3)), "10.0.0.1", 0.02)
    assert len(search.servers[node(1)].files) == 3


# -- cancel ----------------------------------------------------------------------------


def test_cancel_while_ringing() -> None:
    search = ring()
    search.start(0.0)
    assert search.cancel() == [Finished("cancelled")]
    assert search.state == "DONE" and search.reason == "cancelled"
    assert search.ring_timeout(0.3) == []
    assert search.offer(offer(1, 1), "10.0.0.1", 0.1) == []
    assert search.cancel() == []


def test_cancel_before_start() -> None:
    search = ring()
    assert search.cancel() == [Finished("cancelled")]
    assert search.start(0.0) == []
    assert search.queries_sent == 0


# -- properties --------------------------------------------------------------------------


@st.composite
def networks(draw: st.DrawFn) -> tuple[tuple[int, ...], dict[int, int], int]:
    """A schedule, SNs with their true hop distance, and ``enough``."""
    schedule = tuple(sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=8))))
    distances = draw(st.dictionaries(st.integers(1, 500), st.integers(1, 48), max_size=12))
    enough = draw(st.integers(1, 14))
    return schedule, distances, enough


def ring_distance(schedule: tuple[int, ...], d: int) -> int | None:
    """The hop limit of the smallest ring that reaches an SN ``d`` hops away."""
    return next((h for h in schedule if h >= d), None)


class Simulation:
    """Drives a RingSearch through a clock of events, as the protocol would."""

    def __init__(
        self,
        schedule: tuple[int, ...],
        distances: dict[int, int],
        enough: int,
        answer_window: Callable[[float], float],
        rng: random.Random,
        known_stay_silent: bool,
    ) -> None:
        self.search = RingSearch(schedule, TIMEOUT, enough)
        self.distances = distances
        self.rng = rng
        self.answer_window = answer_window  # ring sent at t: answers within window(t) seconds
        self.known_stay_silent = known_stay_silent
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.rings: list[int] = []

    def push(self, when: float, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, payload))

    def act(self, actions: list[object], now: float) -> None:
        for action in actions:
            if isinstance(action, SendQuery):
                self.rings.append(action.hop_limit)
                for sn, d in self.distances.items():
                    if d > action.hop_limit:
                        continue
                    if self.known_stay_silent and node(sn) in action.known:
                        continue
                    delay = self.rng.uniform(0.0, self.answer_window(now))
                    self.push(now + delay, "offer", offer(sn, action.hop_limit))
            elif isinstance(action, ArmTimer):
                self.push(now + action.delay, "timeout", None)

    def run(self) -> None:
        self.act(self.search.start(0.0), 0.0)
        while self.events:
            now, _, kind, payload = heapq.heappop(self.events)
            if kind == "timeout":
                self.act(self.search.ring_timeout(now), now)
            else:
                assert isinstance(payload, Offer)
                self.act(self.search.offer(payload, "10.0.0.1", now), now)
        assert self.search.state == "DONE"


@given(networks(), st.randoms(use_true_random=False), st.booleans())
def test_distances_are_true_and_rings_minimal(
    network: tuple[tuple[int, ...], dict[int, int], int],
    rng: random.Random,
    known_stay_silent: bool,
) -> None:
    """Answers arrive within their ring's timeout, in any order."""
    schedule, distances, enough = network
    sim = Simulation(
        schedule, distances, enough, lambda now: TIMEOUT * 0.99, rng, known_stay_silent
    )
    sim.run()
    search = sim.search
    for node_id, record in search.servers.items():
        sn = int.from_bytes(node_id, "big")
        assert record.distance == ring_distance(schedule, distances[sn])
    # Minimal: the first ring after which `enough` SNs are reachable, else all of them.
    reached = [sum(d <= h for d in distances.values()) for h in schedule]
    needed = next((i + 1 for i, n in enumerate(reached) if n >= enough), len(schedule))
    assert search.queries_sent == needed
    assert sim.rings == list(schedule[:needed])
    if reached[needed - 1] >= enough:
        assert search.reason == "enough"
        assert len(search.servers) == enough
    else:
        assert search.reason == "exhausted"
        reachable = {node(sn) for sn, d in distances.items() if d <= schedule[-1]}
        assert set(search.servers) == reachable


@given(networks(), st.randoms(use_true_random=False))
def test_late_answers_still_give_the_smallest_ring(
    network: tuple[tuple[int, ...], dict[int, int], int], rng: random.Random
) -> None:
    """Answers may overtake each other across rings; the search never stops early here."""
    schedule, distances, _ = network
    enough = len(distances) + 1  # never enough: the search walks the whole schedule
    end = len(schedule) * TIMEOUT
    # An answer to the ring sent at t arrives at any time before the last ring's timeout.
    sim = Simulation(
        schedule, distances, enough, lambda now: (end - now) * 0.999, rng, known_stay_silent=False
    )
    sim.run()
    search = sim.search
    assert search.reason == "exhausted" and search.queries_sent == len(schedule)
    expected = {
        node(sn): ring_distance(schedule, d) for sn, d in distances.items() if d <= schedule[-1]
    }
    assert {n: r.distance for n, r in search.servers.items()} == expected


# -- replies in several datagrams ---------------------------------------------------------


def test_sn_counts_once_its_last_datagram_arrived() -> None:
    search = ring((1, 2), enough=1)
    search.start(0.0)
    assert search.offer(offer(1, 1, files=(1,), more=True), "10.0.0.1", 0.05) == []
    assert search.state == "RINGING"
    assert search.offer(offer(1, 1, files=(2,)), "10.0.0.1", 0.06) == [Finished("enough")]
    assert len(search.servers[node(1)].files) == 2


def test_incomplete_reply_counts_when_its_ring_is_over() -> None:
    search = ring((1, 2), enough=1)
    search.start(0.0)
    search.offer(offer(1, 1, more=True), "10.0.0.1", 0.05)  # the rest was lost
    assert search.ring_timeout(0.3) == [Finished("enough")]
    assert search.queries_sent == 1


# -- issue 12: follow-ups with a cookie -------------------------------------------


def test_a_reply_cut_short_for_a_cookie_is_asked_again_at_once() -> None:
    ring = RingSearch((1, 2, 4), TIMEOUT, 2, cookies={node(9): b"k" * 8})
    [send, _timer] = ring.start(0.0)
    assert isinstance(send, SendQuery) and send.cookies == ((node(9), b"k" * 8),)
    # SN 1 answers small, with a cookie: a follow-up on the same ring, not counted yet.
    actions = ring.offer(offer(1, 1, truncated=True, cookie=b"c" * 8), "192.0.2.1", 0.05)
    [follow] = actions
    assert isinstance(follow, SendQuery) and follow.follow_up and follow.hop_limit == 1
    assert node(1) not in follow.known
    assert follow.cookies[0] == (node(1), b"c" * 8)
    assert not ring.servers[node(1)].complete
    # Its whole reply (no cookie) completes it and clears the cut-short flag.
    ring.offer(offer(1, 1, files=(0, 1, 2)), "192.0.2.1", 0.1)
    record = ring.servers[node(1)]
    assert record.complete and not record.truncated and not record.awaiting
    assert len(record.files) == 3
    assert ring.new_cookies == {node(1): b"c" * 8}


def test_follow_ups_are_bounded_and_a_late_one_extends_the_ring_once() -> None:
    ring = RingSearch((1, 2), TIMEOUT, 1)
    ring.start(0.0)
    sends = []
    for t in (0.1, 0.2, 0.25):
        sends += ring.offer(offer(1, 1, truncated=True, cookie=b"c" * 8), "a", t)
    assert len(sends) == 2  # MAX_FOLLOWUPS
    assert ring.ring_timeout(0.3) == [ArmTimer(TIMEOUT)]  # still waiting: once more
    assert ring.ring_timeout(0.6) == [Finished("enough")]  # then it counts as it is
    assert ring.servers[node(1)].truncated


# -- repeats for SNs heard before ----------------------------------------------------

RETRY = 0.1


def expecting(expected: dict[int, int], enough: int = 1, **kw: object) -> RingSearch:
    return RingSearch(
        (1, 2, 4, 8),
        TIMEOUT,
        enough,
        expected={node(i): d for i, d in expected.items()},
        retry=RETRY,
        **kw,  # type: ignore[arg-type]
    )


def test_a_ring_reaching_an_sn_heard_before_asks_again_once_if_it_is_silent() -> None:
    search = expecting({1: 1})
    assert search.start(0.0) == [SendQuery(1, ()), ArmTimer(TIMEOUT), ArmRetry(RETRY, 0)]
    assert search.retry(RETRY, 0) == [SendQuery(1, (), repeat=True)]
    assert search.retry(RETRY, 0) == []  # once a ring
    assert search.repeats_sent == 1 and search.queries_sent == 1
    assert search.offer(offer(1, 1), "10.0.0.1", 0.12) == [Finished("enough")]
    assert search.servers[node(1)].distance == 1


def test_no_repeat_once_the_expected_sn_answered_or_the_ring_moved_on() -> None:
    search = expecting({1: 1, 2: 1}, enough=3)
    search.start(0.0)
    search.offer(offer(1, 1), "10.0.0.1", 0.01)
    search.offer(offer(2, 1), "10.0.0.2", 0.02)
    assert search.retry(RETRY, 0) == []  # both heard: the ring just waits
    other = expecting({1: 1}, enough=2)
    other.start(0.0)
    other.ring_timeout(TIMEOUT)  # ring 1 over: ring 2 went, with its own retry
    assert other.retry(TIMEOUT + 0.01, 0) == []
    assert other.retry(TIMEOUT + RETRY, 1) == [SendQuery(2, (), repeat=True)]


def test_the_repeat_names_the_sns_heard_and_carries_the_cookies() -> None:
    search = expecting({1: 1, 2: 1}, enough=2, cookies={node(1): b"C" * 8})
    search.start(0.0)
    search.offer(offer(2, 1), "10.0.0.2", 0.01)
    assert search.retry(RETRY, 0) == [SendQuery(1, (node(2),), ((node(1), b"C" * 8),), repeat=True)]


def test_rings_short_of_every_expected_sn_send_no_repeat() -> None:
    """An SN heard 4 hops away: rings 1 and 2 cannot reach it, so they are not
    asked twice; the ring of hop limit 4 is."""
    search = expecting({1: 4})
    assert ArmRetry(RETRY, 0) not in search.start(0.0)
    assert search.retry(RETRY, 0) == []
    assert ArmRetry(RETRY, 1) not in search.ring_timeout(TIMEOUT)
    assert search.ring_timeout(2 * TIMEOUT)[-1] == ArmRetry(RETRY, 2)
    assert search.retry(2 * TIMEOUT + RETRY, 2) == [SendQuery(4, (), repeat=True)]


def test_without_expected_sns_or_a_retry_nothing_changes() -> None:
    assert ring().start(0.0) == [SendQuery(1, ()), ArmTimer(TIMEOUT)]
    search = RingSearch((1, 2), TIMEOUT, 1, expected={node(1): 1})  # retry 0: never
    assert search.start(0.0) == [SendQuery(1, ()), ArmTimer(TIMEOUT)]
    excluded = RingSearch(
        (1, 2), TIMEOUT, 1, exclude=(node(1),), expected={node(1): 1}, retry=RETRY
    )
    assert excluded.start(0.0) == [SendQuery(1, (node(1),)), ArmTimer(TIMEOUT)]
    with pytest.raises(ValueError, match="retry"):
        RingSearch((1,), TIMEOUT, 1, retry=TIMEOUT)
    with pytest.raises(ValueError, match="retry"):
        RingSearch((1,), TIMEOUT, 1, retry=-1.0)
    done = expecting({1: 1})
    done.start(0.0)
    done.cancel()
    assert done.retry(RETRY, 0) == []
