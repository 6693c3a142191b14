"""STATE/known_nodes: atomic 0600 writes, hostile contents, re-read on change;
and the TrustGate over it (counters, one log line per refused node)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import node_id_of
from mcp2p.trust.known import MAX_FILE, KnownNodes, entry_to_json, parse
from mcp2p.trust.policy import KnownError, Standing, remember


def ident() -> tuple[bytes, bytes]:
    key = os.urandom(32)
    return node_id_of(key), key


def add(known: KnownNodes, node: tuple[bytes, bytes], address: str = "") -> None:
    known.update(lambda s: remember(s, *node, 1.0, address=address, origin="operator"))


def test_written_0600_atomically_and_read_back(tmp_path: Path) -> None:
    known = KnownNodes(tmp_path)
    a, b = ident(), ident()
    old = os.umask(0o000)  # the file is 0600 whatever the umask
    try:
        add(known, a, "127.0.0.1:7713")
        add(known, b)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(known.path).st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".known")] == []
    again = KnownNodes(tmp_path).current()
    assert set(again.nodes) == {a[0], b[0]}
    assert again.endpoints == {"127.0.0.1:7713": a[0]}
    lines = [ln for ln in known.path.read_text().splitlines() if not ln.startswith("#")]
    assert sorted(json.loads(ln)["node"] for ln in lines) == sorted([a[0].hex(), b[0].hex()])


def test_a_symlink_is_refused_and_replaced_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / "known_nodes").symlink_to(target)
    known = KnownNodes(tmp_path)
    assert known.current().nodes == {}
    assert "symlink" in known.error
    with pytest.raises(KnownError):  # not rewritten: it may hold what the operator meant
        add(known, ident())
    assert target.read_text() == "precious\n"


def test_writable_by_others_trusts_nobody(tmp_path: Path) -> None:
    known = KnownNodes(tmp_path)
    a = ident()
    add(known, a)
    os.chmod(known.path, 0o666)
    assert known.current().nodes == {}
    assert "writable by group or others" in known.error
    os.chmod(known.path, 0o600)
    assert set(known.current().nodes) == {a[0]}
    assert known.error == ""


def test_garbage_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    a = ident()
    good = json.dumps(entry_to_json(remember_one(a)))
    wrong_key = dict(entry_to_json(remember_one(a)), key=os.urandom(32).hex())
    data = "\n".join(
        [
            "# comment",
            "",
            good,
            "not json",
            "[1, 2]",
            json.dumps(wrong_key),
            '{"node": "zz"}',
            "[" * 100000,  # deep nesting
            '{"node": 1e999}',
            "\x00\xff",
        ]
    ).encode("utf-8", "surrogateescape")
    (tmp_path / "known_nodes").write_bytes(data)
    os.chmod(tmp_path / "known_nodes", 0o600)
    known = KnownNodes(tmp_path)
    assert set(known.current().nodes) == {a[0]}
    assert known.bad_lines == 7


def remember_one(node: tuple[bytes, bytes]):  # type: ignore[no-untyped-def]
    from mcp2p.trust.policy import KnownState

    return remember(KnownState(), *node, 5.0, names=[("a.iso", bytes(32))]).nodes[node[0]]


def test_a_huge_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "known_nodes"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE + 1)
    os.chmod(path, 0o600)
    known = KnownNodes(tmp_path)
    assert known.current().nodes == {}
    assert "more than" in known.error


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_crashes(data: bytes) -> None:
    state, bad = parse(data)
    assert bad >= 0 and len(state.nodes) <= data.count(b"{")


def test_reread_only_when_changed(tmp_path: Path) -> None:
    known = KnownNodes(tmp_path)
    known.current()
    reads = known.reads
    known.current()
    assert known.reads == reads  # a stat, not a read
    other = KnownNodes(tmp_path)  # mcp2p trust add, as another process would
    a = ident()
    add(other, a)
    assert a[0] in known.current().nodes
    assert known.reads == reads + 1


# -- the gate


def gate(tmp_path: Path, policy: str, subscribers: object = "any", lookup: object = None):  # type: ignore[no-untyped-def]
    return TrustGate(policy, subscribers, KnownNodes(tmp_path), task.Clock(), lookup)  # type: ignore[arg-type]


def test_key_change_refused_counted_and_logged_once(tmp_path: Path) -> None:
    from twisted.logger import globalLogPublisher

    a, b = ident(), ident()
    g = gate(tmp_path, "tofu")
    add(g.known, a, "127.0.0.1:7713")
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        for _ in range(5):
            assert g.standing_now(*b, "127.0.0.1:7713") is Standing.REFUSED
    finally:
        globalLogPublisher.removeObserver(lines.append)
    assert g.counters["key_changed"] == 5
    refused = [e for e in lines if "key changed" in e.get("log_format", "")]
    assert len(refused) == 1
    assert a[0].hex() in refused[0]["why"] and "mcp2p trust remove" in refused[0]["why"]
    assert g.standing_now(*a, "127.0.0.1:7713") is Standing.TRUSTED
    assert g.standing_now(*b, "127.0.0.1:9999") is Standing.UNKNOWN


def test_tofu_records_a_use_and_pinned_does_not(tmp_path: Path) -> None:
    a = ident()
    g = gate(tmp_path, "tofu")
    g.record_use([(*a, "127.0.0.1:7713")], "file.bin", bytes(32))
    entry = g.state().nodes[a[0]]
    assert entry.origin == "tofu" and entry.names == (("file.bin", bytes(32)),)
    assert g.counters["recorded"] == 1
    p = gate(tmp_path / "p", "pinned")
    p.record_use([(*a, "127.0.0.1:7713")], "file.bin", bytes(32))
    assert p.state().nodes == {}
    assert p.standing_now(*a) is Standing.REFUSED and p.counters["untrusted"] == 1


def test_keyservers_asks_the_lookup_once_and_caches(tmp_path: Path) -> None:
    a, b, c = ident(), ident(), ident()
    asked: list[bytes] = []

    class Record:
        def __init__(self, key: bytes) -> None:
            self.public_key = key
            self.revoked = False

    records = {a[0]: Record(a[1]), c[0]: Record(b[1])}

    def lookup(node_id: bytes) -> defer.Deferred[object]:
        asked.append(node_id)
        if node_id == b[0]:
            return defer.fail(RuntimeError("server down"))
        return defer.succeed(records.get(node_id))

    g = gate(tmp_path, "keyservers", "trusted", lookup)
    assert g.standing_now(*a) is None
    results: list[Standing] = []
    g.standing_of(*a).addCallback(results.append)
    g.standing_of(*b).addCallback(results.append)
    g.standing_of(*c).addCallback(results.append)
    assert results == [Standing.TRUSTED, Standing.UNKNOWN, Standing.REFUSED]
    assert g.counters["lookup_failed"] == 1
    assert g.standing_now(*a) is Standing.TRUSTED and asked.count(a[0]) == 1
    assert g.admission(*a) == "" and g.admission(*c)
    g.clock.advance(301)
    assert g.standing_now(*a) is None  # the cache expired


def test_a_bad_file_is_counted_per_read(tmp_path: Path) -> None:
    g = gate(tmp_path, "pinned")
    (tmp_path / "known_nodes").write_text("junk\n")
    os.chmod(tmp_path / "known_nodes", 0o600)
    g.state()
    assert g.counters["known_nodes_bad_lines"] == 1
    os.chmod(tmp_path / "known_nodes", 0o644 | 0o002)
    g.state()
    assert g.counters["known_nodes_errors"] == 1
