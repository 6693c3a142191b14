"""The catalog against real files, a real reactor and its thread pool."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import blake3
import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher

from mcp2p.catalog import (
    STORE_NAME,
    Catalog,
    CatalogEntry,
    CatalogStore,
    FileChangedError,
    NotRegularFileError,
    hash_file,
    inotify,
    pending,
    scanner,
)

PIECE = 1024
OLD_NS = 1_600_000_000 * 10**9  # a timestamp well in the past


def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def expected_id(data: bytes, piece_length: int = PIECE) -> bytes:
    """The content id, computed here from its definition, not with mcp2p's code."""
    pieces = [data[i : i + piece_length] for i in range(0, len(data), piece_length)] or [b""]
    level = [blake3.blake3(b"\x00" + p).digest() for p in pieces]
    while len(level) > 1:
        nxt = [
            blake3.blake3(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def write(path: Path, data: bytes, mtime_ns: int | None = OLD_NS) -> Path:
    """Write a file; by default date it in the past so its hash is trusted at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files made by a test are seconds old at most; the racy-timestamp rule
    # would (rightly) refuse to store their hashes. Tests that check that
    # rule put the real window back.
    monkeypatch.setattr(scanner, "RACY_WINDOW_NS", -(10**15))


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in list(events)]


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths hash_file was called on, recording that it ran off the reactor thread."""
    calls: list[str] = []
    real = scanner.hash_file

    def counting(path: Any, piece_length: int, check: Any = None) -> Any:
        assert threading.current_thread() is not threading.main_thread()
        calls.append(os.fspath(path))
        return real(path, piece_length, check)

    monkeypatch.setattr(scanner, "hash_file", counting)
    return calls


@pytest.fixture
def share(tmp_path: Path) -> Path:
    d = tmp_path / "share"
    d.mkdir()
    return d


def make(tmp_path: Path, share: Path, interval: float = 3600.0) -> Catalog:
    return Catalog(reactor(), tmp_path / "state", [share], PIECE, interval)


async def pool_idle() -> bool:
    """Whether the reactor's pool has no job running, within a second.

    A worker hands its result to the reactor before it marks itself idle, so
    a test can see it "working" for an instant after the Deferred fired.
    """
    pool = reactor().getThreadPool()
    for _ in range(200):
        if not pool.working:
            return True
        await task.deferLater(reactor(), 0.005, lambda: None)
    return False


def by_name(cat: Catalog) -> dict[str, CatalogEntry]:
    return {e.name: e for e in cat.entries()}


@pytest_twisted.ensureDeferred
async def test_first_scan_indexes_files(
    tmp_path: Path, share: Path, events: list[dict[str, Any]]
) -> None:
    files = {
        "empty.txt": b"",
        "Three.Pieces.BIN": os.urandom(2 * PIECE + 100),
        "sub/dir/one.dat": b"hello",
        ".hidden.part": b"partial",
    }
    for rel, data in files.items():
        write(share / rel, data)
    cat = make(tmp_path, share)
    try:
        await cat.start()
        assert len(cat) == 4
        for rel, data in files.items():
            entry = cat.get(expected_id(data))
            assert entry is not None
            assert entry.path == str((share / rel).resolve())
            assert entry.name == Path(rel).name
            assert entry.size == len(data)
            assert entry.piece_length == PIECE
            assert len(entry.piece_hashes) == max(1, -(-len(data) // PIECE))
            st = os.stat(share / rel)
            assert (entry.inode, entry.device, entry.mtime_ns) == (
                st.st_ino,
                st.st_dev,
                st.st_mtime_ns,
            )
        assert [e.name for e in cat.match("*.bin")] == ["Three.Pieces.BIN"]
        assert [e.name for e in cat.match("three.*")] == ["Three.Pieces.BIN"]
        assert sorted(e.name for e in cat.match("*")) == sorted(Path(r).name for r in files)
        assert cat.match("nothing*") == []
        assert cat.get(b"\0" * 32) is None
        assert any(
            m.startswith("catalog scan done: 4 files, 4 hashed, 0 removed in ")
            for m in messages(events)
        )
    finally:
        await cat.stop()


@pytest_twisted.ensureDeferred
async def test_restart_reuses_stored_hashes(tmp_path: Path, share: Path, hashed: list[str]) -> None:
    for i in range(5):
        write(share / f"f{i}", os.urandom(3000 + i))
    first = make(tmp_path, share)
    await first.start()
    await first.stop()
    assert len(hashed) == 5
    second = make(tmp_path, share)
    try:
        await second.start()
        assert len(hashed) == 5  # nothing rehashed
        assert second.entries() == first.entries()
    finally:
        await second.stop()
    # A different piece length is a different tree: everything is rehashed.
    third = Catalog(reactor(), tmp_path / "state", [share], 2 * PIECE, 3600.0)
    try:
        await third.start()
        assert len(hashed) == 10
        assert {e.piece_length for e in third.entries()} == {2 * PIECE}
    finally:
        await third.stop()


@pytest_twisted.ensureDeferred
async def test_rescan_follows_changes(tmp_path: Path, share: Path, hashed: list[str]) -> None:
    keep = write(share / "keep", b"k" * 5000)
    change = write(share / "change", b"old contents")
    gone = write(share / "gone", b"going away")
    cat = make(tmp_path, share)
    seen: list[list[CatalogEntry]] = []
    cat.subscribe(seen.append)
    try:
        await cat.start()
        assert len(seen) == 1 and len(seen[0]) == 3
        hashed.clear()

        await cat.rescan()  # nothing changed: no rehash, no notice
        assert hashed == [] and len(seen) == 1

        write(change, b"new and longer contents", mtime_ns=OLD_NS + 1)
        gone.unlink()
        write(share / "new" / "arrived", b"arrived")
        await cat.rescan()
        assert sorted(hashed) == sorted(
            [str(change.resolve()), str((share / "new" / "arrived").resolve())]
        )
        names = by_name(cat)
        assert set(names) == {"keep", "change", "arrived"}
        assert names["change"].content_id == expected_id(b"new and longer contents")
        assert cat.get(expected_id(b"going away")) is None
        assert cat.get(expected_id(b"old contents")) is None
        assert names["keep"].content_id == expected_id(keep.read_bytes())
        assert len(seen) == 2 and {e.name for e in seen[1]} == set(names)
    finally:
        await cat.stop()
    # The store followed: a new catalog hashes nothing and finds the same.
    hashed.clear()
    again = make(tmp_path, share)
    try:
        await again.start()
        assert hashed == []
        assert set(by_name(again)) == {"keep", "change", "arrived"}
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_same_size_swap_is_detected(tmp_path: Path, share: Path, hashed: list[str]) -> None:
    renamed = write(share / "renamed", b"A" * 4000)
    in_place = write(share / "in_place", b"B" * 4000)
    cat = make(tmp_path, share)
    try:
        await cat.start()
        hashed.clear()
        # Same size, same mtime, new inode (how rsync and most writers replace).
        tmp = write(tmp_path / "incoming", b"C" * 4000)
        os.replace(tmp, renamed)
        # Same size, same inode, mtime put back (cp -p, touch -r): ctime moved.
        with open(in_place, "r+b") as f:
            f.write(b"D" * 4000)
        os.utime(in_place, ns=(OLD_NS, OLD_NS))
        await cat.rescan()
        assert len(hashed) == 2
        names = by_name(cat)
        assert names["renamed"].content_id == expected_id(b"C" * 4000)
        assert names["in_place"].content_id == expected_id(b"D" * 4000)
    finally:
        await cat.stop()


@pytest_twisted.ensureDeferred
async def test_racy_timestamps_are_not_trusted(
    tmp_path: Path, share: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner, "RACY_WINDOW_NS", 2_000_000_000)
    write(share / "fresh", b"just written", mtime_ns=None)
    write(share / "settled", b"old", mtime_ns=OLD_NS)
    cat = make(tmp_path, share)
    try:
        await cat.start()
        # "settled" has a new ctime too (the test just made it), so both are racy.
        assert len(cat) == 2 and len(hashed) == 2
        await cat.rescan()
        assert len(hashed) == 4  # hashed again: not trusted yet
    finally:
        await cat.stop()
    with sqlite3.connect(tmp_path / "state" / STORE_NAME) as db:
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0
    monkeypatch.setattr(scanner, "RACY_WINDOW_NS", -(10**15))
    later = make(tmp_path, share)
    try:
        await later.start()
        assert len(hashed) == 6
        assert later.get(expected_id(b"just written")) is not None
    finally:
        await later.stop()


@pytest_twisted.ensureDeferred
async def test_bad_files_are_skipped_and_logged_once(
    tmp_path: Path,
    share: Path,
    events: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = write(share / "good", b"fine")
    locked = write(share / "locked", b"secret")
    os.mkfifo(share / "fifo")
    outside = write(tmp_path / "outside", b"not shared")
    os.symlink(outside, share / "link")
    os.symlink(tmp_path, share / "dirlink")
    write(share / "bad\x01name", b"control character")
    # Root reads anything, so unreadability is simulated where the catalog opens.
    real = scanner.hash_file

    def deny(path: Any, piece_length: int, check: Any = None) -> Any:
        if os.fspath(path) == str(locked.resolve()):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, piece_length, check)

    monkeypatch.setattr(scanner, "hash_file", deny)
    cat = make(tmp_path, share)
    try:
        await cat.start()
        assert [e.path for e in cat.entries()] == [str(good.resolve())]
        logged = messages(events)
        assert any("locked: cannot read it: Permission denied" in m for m in logged)
        assert any("bad\x01name: name rejected" in m for m in logged)
        assert any("fifo: not a regular file" in m for m in logged)
        assert any("link: symlink, not followed" in m for m in logged)
        warnings = [e for e in events if e.get("log_level") and e["log_level"].name == "warn"]
        events.clear()
        await cat.rescan()
        assert not any("catalog skipped" in m for m in messages(events))
        assert len(warnings) == 2  # the unreadable file and the bad name
    finally:
        await cat.stop()


@pytest_twisted.ensureDeferred
async def test_stop_leaves_nothing_behind(tmp_path: Path, share: Path) -> None:
    write(share / "big", os.urandom(1 << 20) * 16)
    cat = make(tmp_path, share, interval=0.05)

    def ours() -> list[Any]:
        return [
            c
            for c in reactor().getDelayedCalls()
            if getattr(c.func, "__self__", None) is cat and c.active()
        ]

    await cat.start()
    assert len(ours()) == 1  # the next rescan
    await task.deferLater(reactor(), 0.12, lambda: None)  # a rescan or two
    await cat.stop()
    assert ours() == []
    assert await pool_idle()


@pytest_twisted.ensureDeferred
async def test_stop_aborts_a_scan_in_progress(
    tmp_path: Path, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(share / "a", b"first")
    write(share / "b", b"second")
    real = scanner.hash_file
    entered = threading.Event()
    calls: list[str] = []
    block = [True]

    def slow(path: Any, piece_length: int, check: Any = None) -> Any:
        calls.append(os.path.basename(path))
        if len(calls) == 2 and block[0]:  # the second file hashed takes "forever"
            entered.set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # a long hash, checking as it goes
                check()
                time.sleep(0.002)
        return real(path, piece_length, check)

    monkeypatch.setattr(scanner, "hash_file", slow)
    cat = make(tmp_path, share)
    started = cat.start()
    while not entered.is_set():
        await task.deferLater(reactor(), 0.005, lambda: None)
    t0 = time.monotonic()
    await cat.stop()
    assert time.monotonic() - t0 < 1
    assert started.called and len(cat) == 0
    assert await pool_idle()
    leftover = reactor().getDelayedCalls()
    assert [c for c in leftover if getattr(c.func, "__self__", None) is cat] == []
    # What was hashed before the stop was kept.
    first, aborted = calls
    calls.clear()
    block[0] = False
    again = make(tmp_path, share)
    try:
        await again.start()
    finally:
        await again.stop()
    assert calls == [aborted] and len(again) == 2


@pytest.fixture
def store_off_reactor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of CatalogStore methods called, each checked to run in a worker thread."""
    calls: list[str] = []
    for name in ("__init__", "load", "put", "delete", "close"):
        real = getattr(CatalogStore, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            assert threading.current_thread() is not threading.main_thread(), _name
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(CatalogStore, name, wrapper)
    return calls


@pytest_twisted.ensureDeferred
async def test_hashing_does_not_block_the_reactor(
    tmp_path: Path, share: Path, hashed: list[str], store_off_reactor: list[str]
) -> None:
    block = os.urandom(1 << 20)
    with open(share / "big", "wb") as f:
        for _ in range(64):
            f.write(block)
    gaps: list[float] = []
    last = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    loop = task.LoopingCall(tick)
    loop.clock = reactor()
    loop.start(0.01)
    cat = Catalog(reactor(), tmp_path / "state", [share], 1 << 20, 3600.0)
    try:
        await cat.start()
        await task.deferLater(reactor(), 0.03, lambda: None)
    finally:
        loop.stop()
        await cat.stop()
    assert len(cat) == 1 and len(hashed) == 1
    assert cat.entries()[0].content_id == expected_id(block * 64, 1 << 20)
    assert {"__init__", "load", "put", "delete", "close"} <= set(store_off_reactor)
    assert max(gaps) < 0.1, max(gaps)


@pytest_twisted.ensureDeferred
async def test_observer_failure_does_not_stop_the_catalog(
    tmp_path: Path, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failures are expected: catch them before conftest's observe_errors does.
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(Catalog, "_log", Logger(observer=cast(ILogObserver, events.append)))
    write(share / "a", b"a")
    cat = make(tmp_path, share)
    seen: list[int] = []

    def broken(entries: list[CatalogEntry]) -> None:
        raise RuntimeError("observer bug")

    cat.subscribe(broken)

    def counting(entries: list[CatalogEntry]) -> None:
        seen.append(len(entries))

    cat.subscribe(counting)
    try:
        await cat.start()
        assert seen == [1]
        cat.unsubscribe(counting)
        write(share / "b", b"b")
        await cat.rescan()
        assert seen == [1] and len(cat) == 2
    finally:
        await cat.stop()
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    for e in failures:
        e["log_failure"].trap(RuntimeError)


@pytest_twisted.ensureDeferred
async def test_unusable_store_is_set_aside(tmp_path: Path, share: Path) -> None:
    write(share / "a", b"a")
    state = tmp_path / "state"
    state.mkdir()
    (state / STORE_NAME).write_bytes(b"this is not a database" * 100)
    cat = make(tmp_path, share)
    try:
        await cat.start()
        assert len(cat) == 1
    finally:
        await cat.stop()
    assert len(list(state.glob(STORE_NAME + ".bad-*"))) == 1


@pytest_twisted.ensureDeferred
async def test_first_scan_failure_reaches_start(tmp_path: Path, share: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_bytes(b"a file where the state directory should be")
    cat = make(tmp_path, share)
    try:
        with pytest.raises(OSError):
            await cat.start()
    finally:
        await cat.stop()


def test_hash_file_matches_definition(tmp_path: Path) -> None:
    for size in (0, 1, PIECE - 1, PIECE, PIECE + 1, 5 * PIECE + 7):
        data = os.urandom(size)
        path = write(tmp_path / f"f{size}", data)
        cid, leaves, st = hash_file(path, PIECE)
        assert cid == expected_id(data)
        assert len(leaves) == max(1, -(-size // PIECE))
        assert st.st_size == size


def test_hash_file_notices_a_change_while_hashing(tmp_path: Path) -> None:
    path = write(tmp_path / "growing", b"x" * (3 << 20))
    calls = [0]

    def append_once() -> None:
        calls[0] += 1
        if calls[0] == 2:
            with open(path, "ab") as f:
                f.write(b"more")

    with pytest.raises(FileChangedError):
        hash_file(path, 1 << 20, append_once)


def test_hash_file_refuses_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFileError):
        hash_file(tmp_path / "fifo", PIECE)  # and does not hang on the FIFO
    os.symlink(tmp_path / "fifo", tmp_path / "link")
    with pytest.raises(OSError):
        hash_file(tmp_path / "link", PIECE)


def test_store_schema_is_versioned(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / STORE_NAME)
    entry = CatalogEntry(
        content_id=b"c" * 32,
        path="/x/y",
        name="y",
        size=10,
        mtime_ns=1,
        inode=(1 << 64) - 1,  # unsigned 64-bit stat fields survive SQLite
        device=1 << 63,
        piece_length=PIECE,
        piece_hashes=(b"c" * 32,),
    )
    store.put([(entry, 5)])
    assert store.load() == [(entry, 5)]
    store.close()
    with sqlite3.connect(tmp_path / STORE_NAME) as db:  # a row that does not add up
        db.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?)",
            ("/x/z", b"d" * 32, 5000, 1, 1, 1, 1, PIECE, b"d" * 32),
        )
    store = CatalogStore(tmp_path / STORE_NAME)
    assert store.load() == [(entry, 5)]  # dropped (and deleted) rather than trusted
    store.close()
    with sqlite3.connect(tmp_path / STORE_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == CatalogStore.SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version=99")
    store = CatalogStore(tmp_path / STORE_NAME)  # unknown version: rebuilt, empty
    assert store.load() == []
    store.close()


# Watching the shares with inotify.

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


async def until(condition: Any, timeout: float = 3.0) -> float:
    """Seconds until ``condition()`` holds; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s: {condition}")
        await task.deferLater(reactor(), 0.01, lambda: None)
    return time.monotonic() - started


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor(), seconds, lambda: None)


def watched(tmp_path: Path, share: Path, interval: float = 3600.0) -> Catalog:
    return Catalog(reactor(), tmp_path / "state", [share], PIECE, interval, watch=True)


@linux_only
@pytest_twisted.ensureDeferred
async def test_watch_follows_new_changed_moved_and_removed_files(
    tmp_path: Path, share: Path, hashed: list[str]
) -> None:
    write(share / "old", b"already here")
    outside = tmp_path / "outside"
    outside.mkdir()
    cat = watched(tmp_path, share)
    try:
        await cat.start()
        assert cat.watching and len(cat) == 1
        hashed.clear()

        new = os.urandom(3 * PIECE + 7)
        (share / "new.bin").write_bytes(new)
        assert await until(lambda: cat.get(expected_id(new)) is not None) < 1.0

        # A directory made after the start, and one inside it: watched too.
        (share / "a" / "b").mkdir(parents=True)
        (share / "a" / "b" / "deep").write_bytes(b"deep")
        assert await until(lambda: cat.get(expected_id(b"deep")) is not None) < 1.0

        # Rewritten in place: the new content id replaces the old.
        (share / "new.bin").write_bytes(b"changed")
        await until(lambda: cat.get(expected_id(b"changed")) is not None)
        assert cat.get(expected_id(new)) is None
        assert by_name(cat)["new.bin"].content_id == expected_id(b"changed")

        # Moved in, moved out, removed; a whole tree moved in and removed.
        (outside / "moved").write_bytes(b"moved in")
        (outside / "tree" / "sub").mkdir(parents=True)
        (outside / "tree" / "sub" / "t1").write_bytes(b"t1")
        os.rename(outside / "moved", share / "moved")
        os.rename(outside / "tree", share / "tree")
        await until(lambda: {"moved", "t1"} <= set(by_name(cat)))
        os.rename(share / "moved", outside / "moved")
        (share / "old").unlink()
        await until(lambda: not {"moved", "old"} & set(by_name(cat)))
        (share / "tree" / "sub" / "t2").write_bytes(b"t2")  # the moved tree is watched
        await until(lambda: "t2" in by_name(cat))
        os.rename(share / "tree", outside / "tree2")
        await until(lambda: not {"t1", "t2"} & set(by_name(cat)))
        (outside / "tree2" / "sub" / "t3").write_bytes(b"t3")  # no longer ours
        await sleep(0.5)
        assert set(by_name(cat)) == {"new.bin", "deep"}
        assert str((outside / "tree2" / "sub" / "t3").resolve()) not in hashed
    finally:
        await cat.stop()
    # What the watcher indexed was stored like a scan's: nothing to rehash.
    hashed.clear()
    again = make(tmp_path, share)
    try:
        await again.start()
        assert set(by_name(again)) == {"new.bin", "deep"} and hashed == []
    finally:
        await again.stop()


@linux_only
@pytest_twisted.ensureDeferred
async def test_watch_does_not_index_a_file_half_written(tmp_path: Path, share: Path) -> None:
    first, second = os.urandom(5 * PIECE), os.urandom(3 * PIECE)
    cat = watched(tmp_path, share)
    seen: list[set[bytes]] = []
    cat.subscribe(lambda entries: seen.append({e.content_id for e in entries}))
    try:
        await cat.start()
        with open(share / "growing", "wb") as f:
            f.write(first)
            f.flush()
            await sleep(1.0)  # well past the settle time, still open
            assert len(cat) == 0
            f.write(second)
        await until(lambda: len(cat) == 1)
        assert cat.entries()[0].content_id == expected_id(first + second)
        assert all(expected_id(first) not in ids for ids in seen)
        # The rescan also leaves a file being written alone.
        with open(share / "growing", "ab") as f:
            f.write(b"more")
            f.flush()
            await until(lambda: len(cat) == 0)  # no longer what it was
            await cat.rescan()
            assert len(cat) == 0
        await until(lambda: len(cat) == 1)
        assert cat.entries()[0].content_id == expected_id(first + second + b"more")
    finally:
        await cat.stop()


@linux_only
@pytest_twisted.ensureDeferred
async def test_watch_follows_no_symlink(tmp_path: Path, share: Path, hashed: list[str]) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret", b"secret")
    cat = watched(tmp_path, share)
    try:
        await cat.start()
        (share / "link").symlink_to(outside / "secret")
        (share / "dirlink").symlink_to(outside)
        await sleep(0.5)
        (outside / "later").write_bytes(b"later")  # under a linked directory
        (share / "real").write_bytes(b"real")
        await until(lambda: "real" in by_name(cat))
        await sleep(0.3)
        assert set(by_name(cat)) == {"real"}
        assert not [p for p in hashed if "outside" in p]
    finally:
        await cat.stop()


@linux_only
@pytest_twisted.ensureDeferred
async def test_watch_coalesces_a_flood(
    tmp_path: Path, share: Path, hashed: list[str], events: list[dict[str, Any]]
) -> None:
    cat = watched(tmp_path, share)
    try:
        await cat.start()
        for i in range(300):
            (share / f"f{i}").write_bytes(b"x%d" % i)
            (share / f"f{i}").write_bytes(b"y%d" % i)  # twice: one hash
        await until(lambda: len(cat) == 300, timeout=10)
        assert cat.get(expected_id(b"y7")) is not None
        await sleep(0.3)
        assert len(hashed) == 300
        updates = [m for m in messages(events) if m.startswith("catalog updated")]
        assert 1 <= len(updates) <= 20, updates
    finally:
        await cat.stop()


@linux_only
@pytest_twisted.ensureDeferred
async def test_queue_overflow_means_a_full_rescan(
    tmp_path: Path, share: Path, events: list[dict[str, Any]]
) -> None:
    cat = watched(tmp_path, share)
    try:
        await cat.start()
        write(share / "unseen", b"unseen")  # as if its event were lost
        watcher = cat._watcher
        assert watcher is not None
        watcher.events([(-1, 0x4000, b"")])  # IN_Q_OVERFLOW
        await until(lambda: "unseen" in by_name(cat))
        assert sum(m.startswith("catalog scan done") for m in messages(events)) == 2
    finally:
        await cat.stop()


@pytest_twisted.ensureDeferred
async def test_without_inotify_the_rescan_finds_new_files(
    tmp_path: Path, share: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(self: Any) -> None:
        raise OSError(errno.ENOSYS, "libc has no inotify_init1")

    monkeypatch.setattr(inotify._InotifyCalls, "__init__", unavailable)
    cat = watched(tmp_path, share, interval=0.3)
    try:
        await cat.start()
        assert not cat.watching
        (share / "late").write_bytes(b"late")
        await until(lambda: "late" in by_name(cat))
        await sleep(0.4)  # more rescans: the warning is not repeated
        warnings = [m for m in messages(events) if m.startswith("cannot watch")]
        assert len(warnings) == 1 and "rescan every 0.3s" in warnings[0]
    finally:
        await cat.stop()


@linux_only
@pytest_twisted.ensureDeferred
async def test_watch_limit_falls_back_to_the_rescan(
    tmp_path: Path, share: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        write(share / f"d{i}" / "f", b"%d" % i)
    real_add = inotify._InotifyCalls.add
    calls = []

    def limited(self: Any, fd: int, path: str, mask: int) -> int:
        calls.append(path)
        if len(calls) > 3:  # as the kernel does past fs.inotify.max_user_watches
            raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device", path)
        return real_add(self, fd, path, mask)

    monkeypatch.setattr(inotify._InotifyCalls, "add", limited)
    cat = watched(tmp_path, share, interval=0.3)
    try:
        await cat.start()
        assert len(cat) == 5 and not cat.watching
        (share / "late").write_bytes(b"late")
        await until(lambda: "late" in by_name(cat))
        await sleep(0.4)
        warnings = [m for m in messages(events) if m.startswith("cannot watch")]
        assert len(warnings) == 1 and "max_user_watches" in warnings[0]
        assert len(calls) == 4  # no more tries after the limit
    finally:
        await cat.stop()


def test_pending_coalesces_per_path_and_waits_for_writers() -> None:
    p = pending._Pending()
    p.created("/s/a", 0.0)
    p.modified("/s/a", 0.01)
    p.modified("/s/a", 0.5)
    assert p.take(0.6) == (["/s/a"], [])  # once, to drop what the index had
    assert p.take(1.0) == ([], []) and p.writing() == {"/s/a"}
    p.closed("/s/a", 1.0)
    assert p.take(1.1) == ([], []) and p.writing() == frozenset()
    assert p.take(1.0 + p.SETTLE) == (["/s/a"], [])
    # A file written to and never closed (truncated by path) is looked at after a while.
    p.modified("/s/b", 2.0)
    assert p.take(2.0) == (["/s/b"], [])
    assert p.take(2.0 + p.WRITE_QUIET - 0.01) == ([], [])
    assert p.take(2.0 + p.WRITE_QUIET) == (["/s/b"], [])
    # Events that keep coming do not put a file off for ever.
    for i in range(100):
        now = 10.0 + i * 0.1
        p.attributes("/s/c", now)
        files, _ = p.take(now)
        if files:
            break
    assert files == ["/s/c"] and now <= 10.0 + p.MAX_DELAY
    # A hard link (created, never written) is looked at once quiet.
    p.created("/s/d", 20.0)
    assert p.take(20.0 + p.SETTLE) == ([], [])
    assert p.take(20.0 + p.CREATE_QUIET) == (["/s/d"], [])


def test_pending_is_bounded() -> None:
    p = pending._Pending()
    for i in range(p.LIMIT):
        p.closed(f"/s/{i}", 0.0)
    assert len(p) == p.LIMIT and not p.full
    p.tree("/s/dir", 0.0)
    assert p.full and len(p) == 0
    p.closed("/s/x", 1.0)
    assert len(p) == 0  # a full rescan comes: nothing more to remember
