"""PartialFile: real files, random block order, crashes, full disks, name collisions."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import implementer

from mcp2p.transfer import store
from mcp2p.transfer.store import (
    PartialFile,
    PieceEvent,
    StoreError,
    VerifyError,
    buffers,
    collision_name,
    decode_bitmap,
    deliver,
    encode_bitmap,
    part_name,
    progress,
)
from mcp2p.wire.layout import Layout
from mcp2p.wire.merkle import hash_piece, merkle_root

Dirs = tuple[Path, Path]
BLOCK = 16
PIECE = 64  # four blocks a piece


@dataclass(frozen=True)
class FakeManifest:
    """The fields of ``mcp2p.wire.manifest.Manifest`` the store reads."""

    content_id: bytes
    name: str
    size: int
    piece_length: int
    block_length: int
    piece_hashes: tuple[bytes, ...]

    @property
    def layout(self) -> Layout:
        return Layout(self.size, self.piece_length, self.block_length)


def make_manifest(
    data: bytes, name: str = "file.bin", piece_length: int = PIECE, block_length: int = BLOCK
) -> FakeManifest:
    starts = range(0, len(data), piece_length) if data else [0]
    hashes = tuple(hash_piece(data[s : s + piece_length]) for s in starts)
    return FakeManifest(
        merkle_root(list(hashes)), name, len(data), piece_length, block_length, hashes
    )


def block_of(manifest: FakeManifest, data: bytes, index: int) -> bytes:
    offset, length = manifest.layout.block_span(index)
    return data[offset : offset + length]


def write_pieces(partial: PartialFile, manifest: FakeManifest, data: bytes, pieces) -> None:
    for piece in pieces:
        for index in manifest.layout.piece_blocks(piece):
            partial.write_block(index, block_of(manifest, data, index))


def crash(partial: PartialFile) -> None:
    """What kill -9 leaves: the kernel closes the fd, nothing is flushed."""
    os.close(partial._fd)
    partial._fd = -1
    partial._closed = True
    partial._files.close()


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    """The download directory exists (the daemon makes its own at start); the state
    directory is made by the store."""
    (tmp_path / "downloads").mkdir()
    return tmp_path / "downloads", tmp_path / "state"


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- whole downloads --------------------------------------------------------

SIZES = [0, 1, BLOCK - 1, PIECE, 7 * PIECE + 2 * BLOCK + 5, 40 * PIECE + 3]


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from(SIZES), seed=st.integers(0, 2**32))
def test_random_order_completes_to_identical_bytes(size: int, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    manifest = make_manifest(data)
    with tempfile.TemporaryDirectory() as tmp:
        downloads, state = Path(tmp, "dl"), Path(tmp, "state")
        downloads.mkdir()
        partial = PartialFile.open(downloads, state, manifest)
        order = list(range(manifest.layout.blocks))
        rng.shuffle(order)
        events = []
        for index in order if size else []:
            event = partial.write_block(index, block_of(manifest, data, index))
            if event is not None:
                events.append(event)
        assert sorted(e.piece for e in events) == (
            list(range(manifest.layout.pieces)) if size else []
        )
        assert all(e.ok for e in events)
        assert partial.complete and partial.missing_blocks() == set()
        assert partial.bytes_verified == size
        final = partial.finalize()
        assert final == downloads / "file.bin"
        assert final.read_bytes() == data
        assert sorted(os.listdir(downloads)) == ["file.bin"]
        assert os.listdir(state / "transfers") == []


def test_blocks_in_permutation() -> None:
    """Any permutation of the blocks, hypothesis-chosen, on a file with a short last piece."""
    data = random.Random(1).randbytes(5 * PIECE + 20)
    manifest = make_manifest(data)

    @settings(max_examples=25, deadline=None)
    @given(st.permutations(range(manifest.layout.blocks)))
    def run(order: list[int]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "dl").mkdir()
            partial = PartialFile.open(Path(tmp, "dl"), Path(tmp, "st"), manifest)
            for index in order:
                partial.write_block(index, block_of(manifest, data, index))
            assert partial.counters == {"written": len(order), "duplicates": 0, "bad_pieces": 0}
            assert partial.finalize().read_bytes() == data

    run()


def test_empty_file_needs_no_block(dirs: Dirs) -> None:
    manifest = make_manifest(b"")
    partial = PartialFile.open(*dirs, manifest)
    assert partial.complete and partial.missing_blocks() == set()
    assert partial.write_block(0, b"") is None
    assert partial.finalize().read_bytes() == b""


def test_state_queries(dirs: Dirs) -> None:
    data = random.Random(2).randbytes(3 * PIECE + 5)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    assert partial.missing_pieces() == [0, 1, 2, 3]
    assert partial.missing_blocks() == set(range(13))
    partial.write_block(1, block_of(manifest, data, 1))
    write_pieces(partial, manifest, data, [2])
    assert partial.missing_pieces() == [0, 1, 3]
    assert partial.missing_blocks() == {0, 2, 3, 4, 5, 6, 7, 12}
    assert list(partial.missing_block_ranges()) == [(0, 1), (2, 8), (12, 13)]
    assert partial.verified_pieces == 1 and partial.bytes_verified == PIECE
    assert not partial.complete
    with pytest.raises(ValueError, match="pieces missing"):
        partial.finalize()
    partial.close()


# -- bad data ---------------------------------------------------------------


def test_corrupt_block_fails_its_piece_then_good_data_completes(dirs: Dirs) -> None:
    data = random.Random(3).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [1])
    bad = bytearray(block_of(manifest, data, 2))
    bad[0] ^= 1
    assert partial.write_block(0, block_of(manifest, data, 0)) is None
    assert partial.write_block(1, block_of(manifest, data, 1)) is None
    assert partial.write_block(2, bytes(bad)) is None
    assert partial.write_block(3, block_of(manifest, data, 3)) == PieceEvent(0, False)
    assert partial.missing_blocks() == {0, 1, 2, 3}
    assert partial.counters["bad_pieces"] == 1
    assert not partial.is_verified(0) and partial.is_verified(1)
    events = [partial.write_block(i, block_of(manifest, data, i)) for i in (3, 1, 0, 2)]
    assert events == [None, None, None, PieceEvent(0, True)]
    assert partial.finalize().read_bytes() == data


def test_write_piece_verifies_before_writing(dirs: Dirs) -> None:
    data = random.Random(4).randbytes(2 * PIECE + 10)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    partial.write_block(4, block_of(manifest, data, 4))
    wrong = b"\xff" * PIECE
    assert partial.write_piece(0, wrong) == PieceEvent(0, False)
    assert os.pread(partial._fd, PIECE, 0) == bytes(PIECE)  # nothing written
    assert partial.write_piece(0, data[:PIECE]) == PieceEvent(0, True)
    assert partial.write_piece(0, data[:PIECE]) is None
    assert partial.write_block(0, data[:BLOCK]) is None
    assert partial.write_piece(1, data[PIECE : 2 * PIECE]) == PieceEvent(1, True)
    assert partial.write_piece(2, data[2 * PIECE :]) == PieceEvent(2, True)
    with pytest.raises(ValueError, match="must be 10 bytes"):
        partial.write_piece(2, data[2 * PIECE :] + b"x")
    assert partial.counters == {"written": 9, "duplicates": 2, "bad_pieces": 1}
    assert partial.finalize().read_bytes() == data


def test_duplicates_counted_and_wrong_lengths_refused(dirs: Dirs) -> None:
    data = random.Random(5).randbytes(PIECE + 3)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    assert partial.write_block(0, data[:BLOCK]) is None
    assert partial.write_block(0, data[:BLOCK]) is None
    with pytest.raises(ValueError, match="must be 16 bytes, got 15"):
        partial.write_block(1, data[BLOCK : 2 * BLOCK - 1])
    with pytest.raises(ValueError, match="must be 3 bytes, got 16"):
        partial.write_block(4, data[:BLOCK])
    with pytest.raises(ValueError, match="outside"):
        partial.write_block(5, b"abc")
    with pytest.raises(ValueError, match="outside"):
        partial.write_block(-1, b"abc")
    assert partial.write_block(4, data[PIECE:]) == PieceEvent(1, True)
    assert partial.write_block(4, data[PIECE:]) is None
    assert partial.counters == {"written": 2, "duplicates": 2, "bad_pieces": 0}
    partial.close()


def test_a_block_length_not_dividing_the_piece_length(dirs: Dirs) -> None:
    data = random.Random(6).randbytes(3 * 50 + 7)
    manifest = make_manifest(data, piece_length=50, block_length=16)  # blocks 16,16,16,2
    partial = PartialFile.open(*dirs, manifest)
    order = list(range(manifest.layout.blocks))
    random.Random(7).shuffle(order)
    for index in order:
        partial.write_block(index, block_of(manifest, data, index))
    assert partial.finalize().read_bytes() == data


def test_manifest_whose_hashes_miss_the_content_id_is_refused(dirs: Dirs) -> None:
    manifest = make_manifest(b"x" * 100)
    with pytest.raises(ValueError, match="content id"):
        PartialFile.open(
            *dirs, FakeManifest(b"\0" * 32, "f", 100, PIECE, BLOCK, manifest.piece_hashes)
        )
    with pytest.raises(ValueError, match="piece hashes for"):
        PartialFile.open(
            *dirs, FakeManifest(manifest.content_id, "f", 500, PIECE, BLOCK, manifest.piece_hashes)
        )
    for name in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError):
            PartialFile.open(
                *dirs,
                FakeManifest(manifest.content_id, name, 100, PIECE, BLOCK, manifest.piece_hashes),
            )


# -- crashes ----------------------------------------------------------------


def test_resume_keeps_only_flushed_verified_pieces(dirs: Dirs) -> None:
    data = random.Random(8).randbytes(40 * PIECE - 9)
    manifest = make_manifest(data)
    clock = ManualClock()
    partial = PartialFile.open(*dirs, manifest, clock=clock)
    write_pieces(partial, manifest, data, range(0, 20))  # flushed at 16, 4 pending
    partial.write_block(20 * 4, block_of(manifest, data, 80))  # a lone block: never persisted
    crash(partial)
    resumed = PartialFile.open(*dirs, manifest, clock=clock)
    assert resumed.verified_pieces == store.FLUSH_PIECES
    assert resumed.missing_pieces() == list(range(16, 40))
    assert resumed.missing_blocks() == set(range(64, manifest.layout.blocks))
    write_pieces(resumed, manifest, data, range(16, 40))
    assert resumed.finalize().read_bytes() == data


def test_time_flushes_marks_and_close_flushes_the_rest(dirs: Dirs) -> None:
    data = random.Random(9).randbytes(10 * PIECE)
    manifest = make_manifest(data)
    clock = ManualClock()
    partial = PartialFile.open(*dirs, manifest, clock=clock)
    write_pieces(partial, manifest, data, [0, 1])
    assert not partial.flush_due()
    clock.now += store.FLUSH_SECONDS
    assert partial.flush_due()
    write_pieces(partial, manifest, data, [2])  # due: this completion flushes 0, 1, 2
    write_pieces(partial, manifest, data, [3])
    crash(partial)
    resumed = PartialFile.open(*dirs, manifest, clock=clock)
    assert resumed.missing_pieces() == list(range(3, 10))
    write_pieces(resumed, manifest, data, [3, 4])
    resumed.close()
    again = PartialFile.open(*dirs, manifest, clock=clock)
    assert again.missing_pieces() == list(range(5, 10))
    again.abort(remove=False)
    assert PartialFile.open(*dirs, manifest).verified_pieces == 5


# -- flushes in the background ------------------------------------------------


class Later:
    """A ``background`` that keeps the work until the test runs it."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, Any]] = []

    def __call__(self, work: Any, done: Any) -> None:
        self.queued.append((work, done))

    def run(self) -> BaseException | None:
        work, done = self.queued.pop(0)
        try:
            work()
        except BaseException as e:  # as deferToThread hands a failure back
            done(e)
            return e
        done(None)
        return None


def test_a_background_flush_records_the_marks_of_when_it_was_asked(dirs: Dirs) -> None:
    data = random.Random(30).randbytes(40 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest, clock=ManualClock())
    partial._writeback = False  # write-behind has tests of its own
    later = partial.background = Later()
    write_pieces(partial, manifest, data, range(16))  # the 16th asks for a flush
    assert len(later.queued) == 1 and not partial.flush_due()
    write_pieces(partial, manifest, data, [16, 17])  # verified after it was asked
    assert later.run() is None
    crash(partial)
    resumed = PartialFile.open(*dirs, manifest)
    assert resumed.verified_pieces == 16  # those of the flush, not 16 and 17
    write_pieces(resumed, manifest, data, range(16, 40))
    assert resumed.finalize().read_bytes() == data


def test_a_flush_asked_while_one_runs_follows_it_with_the_newer_marks(dirs: Dirs) -> None:
    data = random.Random(31).randbytes(40 * PIECE)
    manifest = make_manifest(data)
    clock = ManualClock()
    partial = PartialFile.open(*dirs, manifest, clock=clock)
    partial._writeback = False  # write-behind has tests of its own
    later = partial.background = Later()
    write_pieces(partial, manifest, data, range(16))
    write_pieces(partial, manifest, data, range(16, 32))  # due again: waits for the first
    assert len(later.queued) == 1
    later.run()
    assert len(later.queued) == 1  # the second, with pieces up to 31
    write_pieces(partial, manifest, data, [32])
    later.run()
    crash(partial)
    assert PartialFile.open(*dirs, manifest).verified_pieces == 32


@pytest.mark.parametrize("end", ["finalize", "close", "abort"])
def test_a_background_flush_after_the_end_writes_nothing(dirs: Dirs, end: str) -> None:
    data = random.Random(32).randbytes(16 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest, clock=ManualClock())
    partial._writeback = False  # write-behind has tests of its own
    later = partial.background = Later()
    write_pieces(partial, manifest, data, range(16))
    assert len(later.queued) == 1
    if end == "finalize":
        partial.finalize()
    elif end == "close":
        partial.close()
    else:
        partial.abort(remove=True)
    progress = dirs[1] / "transfers" / f"{manifest.content_id.hex()}.json"
    before = progress.read_bytes() if progress.exists() else None
    assert later.run() is None  # the fd is closed: nothing synced, nothing written
    assert (progress.read_bytes() if progress.exists() else None) == before
    assert end == "close" or before is None


def test_a_failed_background_flush_is_said_and_its_marks_flushed_later(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(33).randbytes(20 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest, clock=ManualClock())
    partial._writeback = False  # write-behind has tests of its own
    later = partial.background = Later()
    write_pieces(partial, manifest, data, range(16))

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", full)
        error = later.run()
    assert isinstance(error, StoreError) and "disk full: cannot sync" in str(error)
    partial.close()  # flushes what the failed one did not record
    assert PartialFile.open(*dirs, manifest).verified_pieces == 16


def test_a_slow_disk_does_not_hold_the_writer_while_it_syncs(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a thread, as the fetch runs it: the piece that asks for a flush
    returns at once, though fdatasync takes 0.3 s."""
    import threading

    data = random.Random(34).randbytes(16 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest, clock=ManualClock())
    partial._writeback = False  # write-behind has tests of its own
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (time.sleep(0.3), real(fd))[1])
    threads: list[tuple[threading.Thread, Any, list[BaseException | None]]] = []

    def background(work: Any, done: Any) -> None:
        errors: list[BaseException | None] = [None]

        def run() -> None:
            try:
                work()
            except BaseException as e:
                errors[0] = e

        t = threading.Thread(target=run)
        t.start()
        threads.append((t, done, errors))

    partial.background = background
    start = time.monotonic()
    write_pieces(partial, manifest, data, range(16))
    assert time.monotonic() - start < 0.2 and len(threads) == 1
    t, done, errors = threads[0]
    t.join(5)
    done(errors[0])
    assert errors[0] is None
    crash(partial)
    assert PartialFile.open(*dirs, manifest).verified_pieces == 16


def progress_of(dirs: Dirs, manifest: FakeManifest) -> Path:
    return dirs[1] / "transfers" / f"{manifest.content_id.hex()}.json"


def test_a_fresh_download_writes_its_progress_at_its_first_flush(dirs: Dirs) -> None:
    """No old marks, nothing to replace: opening does not wait for a file and
    a directory fsync. A crash before the first flush starts over."""
    data = random.Random(40).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    assert not progress_of(dirs, manifest).exists()
    write_pieces(partial, manifest, data, [0, 1])
    crash(partial)
    again = PartialFile.open(*dirs, manifest)
    assert again.verified_pieces == 0 and not progress_of(dirs, manifest).exists()
    write_pieces(again, manifest, data, [0, 1])
    again.flush()
    assert progress_of(dirs, manifest).exists()
    crash(again)
    resumed = PartialFile.open(*dirs, manifest)
    assert resumed.verified_pieces == 2
    write_pieces(resumed, manifest, data, [2, 3])
    assert resumed.finalize().read_bytes() == data


def test_old_marks_are_replaced_before_new_bytes(dirs: Dirs) -> None:
    # A progress file that exists but no longer fits is replaced at once.
    data = random.Random(41).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0, 1])
    partial.close()
    downloads = dirs[0]
    (downloads / part_name("file.bin", manifest.content_id)).write_bytes(b"short")
    PartialFile.open(*dirs, manifest).close()
    doc = json.loads(progress_of(dirs, manifest).read_bytes())
    assert set(doc["verified"]) <= set("A=")  # base64 of no bits set


class Kicks:
    """``start_writeback`` as the store calls it: recorded, answering ``result``."""

    def __init__(self, result: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, fd: int, offset: int, length: int) -> bool:
        assert fd >= 0
        self.calls.append((offset, length))
        return self.result


def behind(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch, seed: int, pieces: int, result: bool = True
) -> tuple[Kicks, bytes, FakeManifest, PartialFile, Later]:
    """A download of ``pieces`` pieces whose write-behind jobs wait in a
    ``Later`` and whose ``start_writeback`` calls a ``Kicks`` records."""
    kicks = Kicks(result)
    monkeypatch.setattr(store.progress, "start_writeback", kicks)
    data = random.Random(seed).randbytes(pieces * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest, clock=ManualClock())
    later = partial.background = Later()
    return kicks, data, manifest, partial, later


def test_write_behind_starts_the_disk_on_each_verified_piece_one_job_at_a_time(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicks, data, manifest, partial, later = behind(dirs, monkeypatch, 42, 8)
    write_pieces(partial, manifest, data, [0])
    write_pieces(partial, manifest, data, [1, 2])  # while the first job is out: merged
    assert len(later.queued) == 1
    later.run()
    assert kicks.calls == [(0, PIECE)]
    assert len(later.queued) == 1  # the next, asked when the first was done
    write_pieces(partial, manifest, data, [5])
    later.run()
    assert kicks.calls == [(0, PIECE), (PIECE, 2 * PIECE)]
    later.run()
    assert kicks.calls[-1] == (5 * PIECE, PIECE) and not later.queued
    write_pieces(partial, manifest, data, [3, 4, 6, 7])
    while later.queued:
        later.run()
    assert partial.finalize().read_bytes() == data


def test_write_behind_never_waits_for_a_flush_nor_touches_a_closed_file(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicks, data, manifest, partial, later = behind(dirs, monkeypatch, 43, 4)
    write_pieces(partial, manifest, data, [0])
    with partial._sync_lock:  # as a flush in another thread holds it
        start = time.monotonic()
        assert later.run() is None
        assert time.monotonic() - start < 0.5
    assert kicks.calls == []  # skipped: the next flush writes it
    write_pieces(partial, manifest, data, [1])
    partial.close()
    assert later.run() is None and kicks.calls == []


def test_write_behind_stops_where_the_file_system_cannot(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicks, data, manifest, partial, later = behind(dirs, monkeypatch, 44, 4, result=False)
    write_pieces(partial, manifest, data, [0])
    write_pieces(partial, manifest, data, [1])
    later.run()
    assert len(kicks.calls) == 1 and not later.queued
    write_pieces(partial, manifest, data, [2, 3])
    assert not later.queued and len(kicks.calls) == 1
    assert partial.finalize().read_bytes() == data


def test_start_writeback_on_real_files(tmp_path: Path) -> None:
    from mcp2p.transfer.store.partfile import start_writeback

    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * 100_000, 0)
        if sys.platform.startswith("linux"):
            assert start_writeback(fd, 0, 100_000) is True
        os.fdatasync(fd)
        assert path.read_bytes() == b"x" * 100_000
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert start_writeback(r, 0, 10) is False  # ESPIPE: no file to write back
    finally:
        os.close(r)
        os.close(w)


class Crash(Exception):
    pass


class PowerModel:
    """Intercepts the store's durable-storage calls; crashes at call number ``crash_at``.

    It keeps the part file's *durable* image (what survives a power cut:
    only pwrites followed by an fdatasync/fsync) so that after the crash
    the part file can be put back to exactly that image.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, size: int, crash_at: int) -> None:
        self.calls = 0
        self.crash_at = crash_at
        self.durable = bytearray(size)
        self.pending: list[tuple[int, bytes]] = []
        self.part_fds: set[int] = set()
        real = {name: getattr(os, name) for name in ("pwrite", "fdatasync", "fsync", "replace")}

        def tick() -> None:
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash(self.calls)

        def pwrite(fd: int, data, offset: int) -> int:
            tick()
            done = real["pwrite"](fd, data, offset)
            self.part_fds.add(fd)
            self.pending.append((offset, bytes(data[:done])))
            return done

        def sync(name: str):
            def call(fd: int) -> None:
                tick()
                real[name](fd)
                if fd in self.part_fds:
                    for offset, chunk in self.pending:
                        self.durable[offset : offset + len(chunk)] = chunk
                    self.pending.clear()

            return call

        def replace(src, dst, **dir_fds) -> None:
            tick()
            real["replace"](src, dst, **dir_fds)

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fdatasync", sync("fdatasync"))
        monkeypatch.setattr(os, "fsync", sync("fsync"))
        monkeypatch.setattr(os, "replace", replace)


def test_crash_at_every_point_never_yields_a_wrong_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash at each write/sync/rename in turn, lose what was not synced, resume."""
    data = random.Random(10).randbytes(9 * PIECE + 7)
    manifest = make_manifest(data)
    order = list(range(manifest.layout.blocks))
    random.Random(11).shuffle(order)
    bad = bytearray(block_of(manifest, data, 5))
    bad[3] ^= 0x40
    monkeypatch.setattr(progress, "FLUSH_PIECES", 2)
    crash_at = 1
    while True:
        downloads, state = tmp_path / f"dl{crash_at}", tmp_path / f"st{crash_at}"
        downloads.mkdir()
        with monkeypatch.context() as patch:
            model = PowerModel(patch, manifest.size, crash_at)
            partial = None
            try:
                partial = PartialFile.open(downloads, state, manifest)
                partial.write_block(5, bytes(bad))  # a corrupt block in the mix
                for index in order:
                    partial.write_block(index, block_of(manifest, data, index))
                for index in sorted(partial.missing_blocks()):  # piece 1 again
                    partial.write_block(index, block_of(manifest, data, index))
                final = partial.finalize()
            except Crash:
                finished = False
            else:
                finished = True
        if finished:
            assert final.read_bytes() == data
            assert crash_at > 20  # the loop did crash at many points first
            assert sorted(os.listdir(downloads)) == ["file.bin"]
            assert os.listdir(state / "transfers") == []
            break
        if (downloads / "file.bin").exists():  # crashed in finalize after the link
            assert (downloads / "file.bin").read_bytes() == data
        if partial is not None and not partial.closed:
            crash(partial)
        part = downloads / part_name("file.bin", manifest.content_id)
        if part.exists():  # the power cut: only synced bytes survive
            part.write_bytes(bytes(model.durable))
        resumed = PartialFile.open(downloads, state, manifest)
        for piece in range(manifest.layout.pieces):
            if resumed.is_verified(piece):
                offset = piece * PIECE
                assert part.read_bytes()[offset : offset + PIECE] == data[offset : offset + PIECE]
        for index in sorted(resumed.missing_blocks()):
            resumed.write_block(index, block_of(manifest, data, index))
        assert resumed.finalize().read_bytes() == data
        assert sorted(os.listdir(downloads)) == ["file.bin"]
        assert os.listdir(state / "transfers") == []
        crash_at += 1


def test_starting_over_drops_old_marks_before_new_bytes(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part file gone, progress still there: the restart must not trust the marks,
    even if it crashes right after creating the new part file."""
    downloads, state = dirs
    data = random.Random(12).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(3))
    partial.close()
    part = downloads / part_name("file.bin", manifest.content_id)
    part.unlink()

    def broken_ftruncate(fd: int, size: int) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(os, "ftruncate", broken_ftruncate)
        with pytest.raises(Crash):
            PartialFile.open(*dirs, manifest)
    assert part.exists()
    part.write_bytes(bytes(len(data)))  # right size, wrong bytes
    resumed = PartialFile.open(*dirs, manifest)
    assert resumed.verified_pieces == 0
    write_pieces(resumed, manifest, data, range(4))
    assert resumed.finalize().read_bytes() == data


def test_part_file_changed_between_runs_is_caught_at_finalize(dirs: Dirs) -> None:
    downloads, _ = dirs
    data = random.Random(13).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(4))
    partial.close()
    part = downloads / part_name("file.bin", manifest.content_id)
    with open(part, "r+b") as f:
        f.seek(2 * PIECE + 1)
        f.write(b"\0")
    resumed = PartialFile.open(*dirs, manifest)
    assert resumed.complete
    with pytest.raises(VerifyError) as info:
        resumed.finalize()
    assert info.value.pieces == [2]
    assert not (downloads / "file.bin").exists()
    assert resumed.missing_pieces() == [2] and resumed.counters["bad_pieces"] == 1
    write_pieces(resumed, manifest, data, [2])
    assert resumed.finalize().read_bytes() == data


@pytest.mark.parametrize(
    "damage, why",
    [
        ("garbage", "progress file unusable"),
        ("other", "block_length is 32"),
        ("resize", "the part file has 3 bytes"),
        ("remove", "the part file is missing"),
    ],
)
def test_unusable_state_starts_over_and_says_why(dirs: Dirs, damage: str, why: str) -> None:
    downloads, state = dirs
    data = random.Random(14).randbytes(3 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0, 1])
    partial.close()
    progress = state / "transfers" / f"{manifest.content_id.hex()}.json"
    part = downloads / part_name("file.bin", manifest.content_id)
    if damage == "garbage":
        progress.write_bytes(b"{not json")
    elif damage == "other":
        doc = json.loads(progress.read_bytes())
        doc["block_length"] = 32
        progress.write_text(json.dumps(doc))
    elif damage == "resize":
        part.write_bytes(b"abc")
    else:
        part.unlink()
    messages: list[str] = []

    @implementer(ILogObserver)
    def observer(event: dict) -> None:
        messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        resumed = PartialFile.open(*dirs, manifest)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert resumed.verified_pieces == 0
    assert any("starting file.bin over" in m and why in m for m in messages), messages
    assert part.stat().st_size == len(data)
    write_pieces(resumed, manifest, data, [2, 0, 1])
    assert resumed.finalize().read_bytes() == data


def test_kill_9_in_a_real_process(dirs: Dirs) -> None:
    """A child writes pieces and SIGKILLs itself; the parent resumes and finishes."""
    downloads, state = dirs
    data = random.Random(15).randbytes(64 * PIECE + 9)
    manifest = make_manifest(data)
    script = f"""
import os, random, signal, sys
from pathlib import Path
sys.path[:0] = {sys.path!r}
from tests.transfer.test_store import make_manifest, block_of
from mcp2p.transfer.store import PartialFile
data = random.Random(15).randbytes({len(data)})
manifest = make_manifest(data)
partial = PartialFile.open(Path({str(downloads)!r}), Path({str(state)!r}), manifest)
order = list(range(manifest.layout.blocks))
random.Random(16).shuffle(order)
for n, index in enumerate(order):
    partial.write_block(index, block_of(manifest, data, index))
    if n == 200:
        os.kill(os.getpid(), signal.SIGKILL)
"""
    child = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert child.returncode == -signal.SIGKILL
    resumed = PartialFile.open(*dirs, manifest)
    assert 0 < resumed.verified_pieces < manifest.layout.pieces
    for index in sorted(resumed.missing_blocks()):
        resumed.write_block(index, block_of(manifest, data, index))
    assert resumed.finalize().read_bytes() == data


# -- full disks ---------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_on_write_is_a_store_error(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    downloads, _ = dirs
    data = random.Random(17).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0])

    def full(fd: int, data, offset: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "pwrite", full)
    # Blocks gather in memory: the piece's one write, at its last block, fails.
    for index in (4, 5, 6):
        partial.write_block(index, block_of(manifest, data, index))
    with pytest.raises(StoreError) as info:
        partial.write_block(7, block_of(manifest, data, 7))
    message = str(info.value)
    assert "disk full" in message and ".file.bin." in message and "\n" not in message
    assert info.value.errno == code and isinstance(info.value, OSError)
    assert 4 in partial.missing_blocks()
    monkeypatch.undo()
    partial.close()
    assert sorted(os.listdir(downloads)) == [part_name("file.bin", manifest.content_id)]


def test_full_disk_on_allocate_and_sync(dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads, _ = dirs
    data = random.Random(18).randbytes(2 * PIECE)
    manifest = make_manifest(data)

    def full(*args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "ftruncate", full)
        with pytest.raises(StoreError, match="disk full: cannot allocate .*part"):
            PartialFile.open(*dirs, manifest)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0, 1])
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", full)
        with pytest.raises(StoreError, match="disk full: cannot sync"):
            partial.close()
        assert partial.closed
    assert not (downloads / "file.bin").exists()


# -- the final name -----------------------------------------------------------


def test_existing_different_file_gets_a_numbered_name(dirs: Dirs) -> None:
    downloads, _ = dirs
    (downloads / "report.tar.gz").write_bytes(b"somebody else's")
    (downloads / "report.tar (1).gz").write_bytes(b"and another")
    data = random.Random(19).randbytes(3 * PIECE)
    manifest = make_manifest(data, name="report.tar.gz")
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(3))
    final = partial.finalize()
    assert final == downloads / "report.tar (2).gz"
    assert final.read_bytes() == data
    assert (downloads / "report.tar.gz").read_bytes() == b"somebody else's"
    assert len(os.listdir(downloads)) == 3


def test_existing_identical_file_is_kept_and_part_removed(dirs: Dirs) -> None:
    downloads, state = dirs
    data = random.Random(20).randbytes(3 * PIECE)
    (downloads / "same.bin").write_bytes(data)
    manifest = make_manifest(data, name="same.bin")
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(3))
    assert partial.finalize() == downloads / "same.bin"
    assert os.listdir(downloads) == ["same.bin"]
    assert os.listdir(state / "transfers") == []


def test_a_directory_or_symlink_under_the_name_is_left_alone(dirs: Dirs) -> None:
    downloads, _ = dirs
    data = random.Random(21).randbytes(PIECE)
    target = downloads / "elsewhere"
    target.write_bytes(data)
    (downloads / "x").symlink_to(target)  # same bytes, but a symlink: not ours
    (downloads / "x (1)").mkdir()
    manifest = make_manifest(data, name="x")
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0])
    assert partial.finalize() == downloads / "x (2)"


def test_long_names_fit(dirs: Dirs) -> None:
    name = "é" * 120 + ".txt"  # 244 bytes
    data = b"hello"
    manifest = make_manifest(data, name=name)
    assert len(part_name(name, manifest.content_id).encode()) <= 255
    assert len(collision_name(name, 12).encode()) <= 255
    assert collision_name(name, 12).endswith(" (12).txt")
    downloads, _ = dirs
    (downloads / name).write_bytes(b"other")
    partial = PartialFile.open(*dirs, manifest)
    partial.write_block(0, data)
    assert partial.finalize().read_bytes() == data


def test_abort_with_remove_leaves_nothing(dirs: Dirs) -> None:
    downloads, state = dirs
    data = random.Random(22).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0])
    partial.abort(remove=True)
    assert os.listdir(downloads) == [] and os.listdir(state / "transfers") == []
    with pytest.raises(StoreError):
        partial.write_block(4, block_of(manifest, data, 4))


@given(st.lists(st.booleans(), max_size=200))
def test_bitmap_round_trip(bits: list[bool]) -> None:
    bitmap = bytearray(bits)
    assert decode_bitmap(encode_bitmap(bitmap), len(bits)) == bitmap


def test_bitmap_rejects_bad_lengths_and_stray_bits() -> None:
    with pytest.raises(ValueError):
        decode_bitmap(encode_bitmap(bytearray(9)), 8)
    with pytest.raises(ValueError):
        decode_bitmap(encode_bitmap(bytearray([0, 0, 0, 1])), 3)


# -- speed ----------------------------------------------------------------------


def measure(tmp: Path, size: int = 50 * 10**6, block: int = 1400) -> tuple[float, float]:
    """(write_block calls per second, seconds to finalize) for a ``size``-byte file."""
    data = os.urandom(size)
    manifest = make_manifest(data, piece_length=1 << 20, block_length=block)
    (tmp / "dl").mkdir(exist_ok=True)
    partial = PartialFile.open(tmp / "dl", tmp / "st", manifest)
    blocks = [block_of(manifest, data, i) for i in range(manifest.layout.blocks)]
    start = time.perf_counter()
    write = partial.write_block
    for index, chunk in enumerate(blocks):
        write(index, chunk)
    rate = len(blocks) / (time.perf_counter() - start)
    start = time.perf_counter()
    partial.finalize()
    return rate, time.perf_counter() - start


def test_write_block_throughput(tmp_path: Path) -> None:
    rate, finalize_seconds = measure(tmp_path)
    print(f"write_block: {rate:,.0f} blocks/s; finalize of 50 MB: {finalize_seconds:.3f} s")
    assert rate > 20_000


def test_flushed_blocks_of_unverified_pieces_survive_a_crash(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Random block order completes pieces late: what a run held on disk must not be
    # lost. (Pieces assembled on disk: no window of buffers, as for large pieces.)
    monkeypatch.setattr(buffers, "BUFFER_BYTES", 0)
    data = random.Random(11).randbytes(10 * PIECE)
    manifest = make_manifest(data)
    clock = ManualClock()
    partial = PartialFile.open(*dirs, manifest, clock=clock)
    held = [i for i in range(manifest.layout.blocks) if i % 2 == 0]
    for index in held:
        assert partial.write_block(index, block_of(manifest, data, index)) is None
    clock.now += store.FLUSH_SECONDS
    assert partial.flush_due()
    partial.flush()
    partial.write_block(1, block_of(manifest, data, 1))  # after the flush: lost
    crash(partial)
    resumed = PartialFile.open(*dirs, manifest, clock=clock)
    assert resumed.missing_blocks() == set(range(manifest.layout.blocks)) - set(held)
    for index in sorted(resumed.missing_blocks()):
        resumed.write_block(index, block_of(manifest, data, index))
    assert resumed.finalize().read_bytes() == data


def test_kept_blocks_that_are_wrong_fail_their_piece_and_are_fetched_again(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffers, "BUFFER_BYTES", 0)  # pieces assembled on disk
    data = random.Random(12).randbytes(3 * PIECE)
    manifest = make_manifest(data)
    clock = ManualClock()
    partial = PartialFile.open(*dirs, manifest, clock=clock)
    blocks = list(manifest.layout.piece_blocks(1))
    for index in blocks[:-1]:
        partial.write_block(index, block_of(manifest, data, index))
    clock.now += store.FLUSH_SECONDS
    partial.flush()
    crash(partial)
    # The part file is damaged between runs under a kept block.
    offset, length = manifest.layout.block_span(blocks[0])
    part = next(dirs[0].glob(".file.bin.*.part"))
    with open(part, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(length))
    resumed = PartialFile.open(*dirs, manifest, clock=clock)
    event = resumed.write_block(blocks[-1], block_of(manifest, data, blocks[-1]))
    assert event is not None and not event.ok
    assert set(blocks) <= resumed.missing_blocks()
    for index in sorted(resumed.missing_blocks()):
        resumed.write_block(index, block_of(manifest, data, index))
    assert resumed.finalize().read_bytes() == data


# -- a hostile local user who can write in the download directory ---------------
#
# Each attack plants something under a name the store uses, pointing at a file
# the attacker must not be able to change: ``secret``, mode 0600 in a 0700
# directory outside the download directory (root's, when the tests run as root).

SECRET = b"root only: do not overwrite\n"
NOBODY = 65534


@dataclass
class Secret:
    path: Path
    data: bytes

    def untouched(self) -> bool:
        info = self.path.stat()
        return self.path.read_bytes() == self.data and info.st_mode & 0o7777 == 0o600


def plant_secret(tmp_path: Path, size: int = len(SECRET)) -> Secret:
    """A 0600 file of ``size`` bytes (the download's size tricks a size check)."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700, exist_ok=True)
    data = (SECRET * (size // len(SECRET) + 1))[:size]
    path = vault / "secret"
    path.write_bytes(data)
    path.chmod(0o600)
    return Secret(path, data)


def the_part(dirs: Dirs, manifest: FakeManifest) -> Path:
    return dirs[0] / part_name(manifest.name, manifest.content_id)


def downloaded(dirs: Dirs, manifest: FakeManifest, data: bytes) -> Path:
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(manifest.layout.pieces))
    return partial.finalize()


def started(dirs: Dirs, manifest: FakeManifest, data: bytes) -> None:
    """A download half done, closed: the next open resumes it."""
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(manifest.layout.pieces // 2))
    partial.close()
    assert PartialFile.open(*dirs, manifest).verified_pieces > 0  # it would resume
    partial = PartialFile.open(*dirs, manifest)
    partial.close()


def log_lines() -> tuple[list[str], ILogObserver]:
    messages: list[str] = []

    @implementer(ILogObserver)
    def observer(event: dict) -> None:
        messages.append(formatEvent(event))

    return messages, observer


class Logged:
    def __enter__(self) -> list[str]:
        self.messages, self.observer = log_lines()
        globalLogPublisher.addObserver(self.observer)
        return self.messages

    def __exit__(self, *exc_info) -> None:
        globalLogPublisher.removeObserver(self.observer)


class Blocked(Exception):
    """Not an OSError: the store's ``except OSError`` must not swallow it."""


class MustNotBlock:
    """Fail (instead of hanging the suite) if the block takes over 5 s: a FIFO open."""

    def __enter__(self) -> None:
        def fire(signum, frame) -> None:
            raise Blocked("blocked, on a FIFO?")

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, 5)

    def __exit__(self, *exc_info) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


@pytest.fixture(params=["link", "renameat2"])
def placing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways to make the final name: link+unlink, and renameat2(RENAME_NOREPLACE)
    as on a file system without hard links (vfat answers link() with EPERM)."""
    if request.param == "renameat2":

        def no_hard_links(*args, **kw) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_hard_links)
    return request.param


def test_symlink_at_the_final_name_is_not_followed(
    dirs: Dirs, tmp_path: Path, placing: str
) -> None:
    data = random.Random(30).randbytes(3 * PIECE)
    manifest = make_manifest(data)
    secret = plant_secret(tmp_path, len(data))
    (dirs[0] / "file.bin").symlink_to(secret.path)
    final = downloaded(dirs, manifest, data)
    assert final == dirs[0] / "file (1).bin" and final.read_bytes() == data
    assert secret.untouched()
    assert os.readlink(dirs[0] / "file.bin") == str(secret.path)
    assert sorted(os.listdir(dirs[0])) == ["file (1).bin", "file.bin"]


def test_dangling_symlink_at_the_final_name_is_not_followed(
    dirs: Dirs, tmp_path: Path, placing: str
) -> None:
    data = random.Random(31).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    nowhere = tmp_path / "vault" / "new-file"
    (tmp_path / "vault").mkdir(mode=0o700)
    (dirs[0] / "file.bin").symlink_to(nowhere)
    final = downloaded(dirs, manifest, data)
    assert final == dirs[0] / "file (1).bin" and final.read_bytes() == data
    assert not os.path.lexists(nowhere)
    assert os.listdir(tmp_path / "vault") == []


def test_fifo_at_the_final_name_does_not_block(dirs: Dirs, placing: str) -> None:
    data = random.Random(32).randbytes(PIECE)
    manifest = make_manifest(data)
    os.mkfifo(dirs[0] / "file.bin")
    with MustNotBlock():
        final = downloaded(dirs, manifest, data)
    assert final == dirs[0] / "file (1).bin" and final.read_bytes() == data


def test_symlink_at_the_part_name_before_open(dirs: Dirs, tmp_path: Path) -> None:
    data = random.Random(33).randbytes(3 * PIECE)
    manifest = make_manifest(data)
    secret = plant_secret(tmp_path)
    the_part(dirs, manifest).symlink_to(secret.path)
    partial = PartialFile.open(*dirs, manifest)
    assert secret.untouched()  # not truncated or grown through the link
    assert not the_part(dirs, manifest).is_symlink()
    write_pieces(partial, manifest, data, range(3))
    assert partial.finalize().read_bytes() == data
    assert secret.untouched()
    assert os.listdir(dirs[0]) == ["file.bin"]


def test_symlink_at_the_part_name_before_resume(dirs: Dirs, tmp_path: Path) -> None:
    """The link points at a file of the download's size: a size check alone would
    resume through it and write the blocks into the secret."""
    data = random.Random(34).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    started(dirs, manifest, data)
    secret = plant_secret(tmp_path, len(data))
    the_part(dirs, manifest).unlink()
    the_part(dirs, manifest).symlink_to(secret.path)
    with Logged() as messages:
        partial = PartialFile.open(*dirs, manifest)
    assert any("the part file is a symbolic link" in m for m in messages), messages
    assert partial.verified_pieces == 0 and secret.untouched()
    write_pieces(partial, manifest, data, range(4))
    assert partial.finalize().read_bytes() == data
    assert secret.untouched()


def test_hard_link_at_the_part_name_is_not_resumed(dirs: Dirs, tmp_path: Path) -> None:
    """Same owner, same size, so only the link count tells it from our part file."""
    data = random.Random(35).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    started(dirs, manifest, data)
    secret = plant_secret(tmp_path, len(data))
    the_part(dirs, manifest).unlink()
    os.link(secret.path, the_part(dirs, manifest))
    with Logged() as messages:
        partial = PartialFile.open(*dirs, manifest)
    assert any("the part file has 2 links" in m for m in messages), messages
    assert secret.untouched() and secret.path.stat().st_nlink == 1  # only the name went
    write_pieces(partial, manifest, data, range(4))
    assert partial.finalize().read_bytes() == data
    assert secret.untouched()


@pytest.mark.parametrize("when", ["open", "resume"])
def test_fifo_at_the_part_name_does_not_block(dirs: Dirs, when: str) -> None:
    data = random.Random(36).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    if when == "resume":
        started(dirs, manifest, data)
        the_part(dirs, manifest).unlink()
    os.mkfifo(the_part(dirs, manifest))
    with MustNotBlock(), Logged() as messages:
        partial = PartialFile.open(*dirs, manifest)
    if when == "resume":
        assert any("the part file is not a regular file" in m for m in messages), messages
    assert the_part(dirs, manifest).is_file()
    write_pieces(partial, manifest, data, range(4))
    assert partial.finalize().read_bytes() == data


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")
def test_part_file_of_another_user_is_not_resumed(dirs: Dirs) -> None:
    data = random.Random(37).randbytes(4 * PIECE)
    manifest = make_manifest(data)
    started(dirs, manifest, data)
    os.chown(the_part(dirs, manifest), NOBODY, NOBODY)
    with Logged() as messages:
        partial = PartialFile.open(*dirs, manifest)
    assert any(f"the part file belongs to uid {NOBODY}" in m for m in messages), messages
    assert the_part(dirs, manifest).stat().st_uid == 0
    write_pieces(partial, manifest, data, range(4))
    assert partial.finalize().read_bytes() == data


def test_part_file_swapped_before_finalize_is_not_delivered(dirs: Dirs) -> None:
    """In a directory without the sticky bit, another user can replace our part file."""
    data = random.Random(38).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(2))
    part = the_part(dirs, manifest)
    swap = dirs[0] / "swap"
    swap.write_bytes(b"attacker's bytes")
    swap.replace(part)
    with pytest.raises(StoreError, match="removed or replaced by someone else"):
        partial.finalize()
    assert not (dirs[0] / "file.bin").exists()
    assert part.read_bytes() == b"attacker's bytes"  # left as it is
    partial.close()


def test_directory_moved_and_replaced_by_a_symlink_keeps_the_original(
    dirs: Dirs, tmp_path: Path
) -> None:
    downloads, _ = dirs
    data = random.Random(39).randbytes(3 * PIECE)
    manifest = make_manifest(data)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(3))
    moved, decoy = tmp_path / "moved", tmp_path / "vault"
    decoy.mkdir(mode=0o700)
    downloads.rename(moved)
    downloads.symlink_to(decoy)
    with Logged() as messages:
        final = partial.finalize()
    assert final == moved / "file.bin" and final.read_bytes() == data
    assert os.listdir(decoy) == [] and os.listdir(moved) == ["file.bin"]
    assert any("was moved or replaced" in m for m in messages), messages


@pytest.mark.parametrize(
    "umask, part_mode", [(0o022, 0o644), (0o077, 0o600), (0o000, 0o644), (0o027, 0o640)]
)
def test_modes_follow_the_umask_and_are_never_writable_by_others(
    tmp_path: Path, umask: int, part_mode: int
) -> None:
    downloads, state = tmp_path / "downloads", tmp_path / "state"
    downloads.mkdir()
    data = random.Random(40).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    old = os.umask(umask)
    try:
        partial = PartialFile.open(downloads, state, manifest)
        write_pieces(partial, manifest, data, [0])
        partial.flush()
        assert the_part((downloads, state), manifest).stat().st_mode & 0o7777 == part_mode
        progress = state / "transfers" / f"{manifest.content_id.hex()}.json"
        assert progress.stat().st_mode & 0o7777 == 0o600 & ~umask
        assert (state / "transfers").stat().st_mode & 0o7777 == 0o700 & ~umask
        write_pieces(partial, manifest, data, [1])
        final = partial.finalize()
    finally:
        os.umask(old)
    assert final.stat().st_mode & 0o7777 == part_mode


def test_missing_download_directory_is_an_error_and_not_created(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    manifest = make_manifest(b"abc")
    with pytest.raises(StoreError, match="download directory .*/vault/a/b does not exist") as info:
        PartialFile.open(vault / "a" / "b", tmp_path / "state", manifest)
    assert info.value.errno == errno.ENOENT and "\n" not in str(info.value)
    assert os.listdir(vault) == []
    (vault / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="download directory .* is not a directory"):
        PartialFile.open(vault / "file", tmp_path / "state", manifest)


def test_symlinked_download_directory_is_resolved_once(tmp_path: Path) -> None:
    """The path given may be a symlink (the owner's ``~/Downloads -> /data/dl``)."""
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "Downloads").symlink_to(real)
    data = random.Random(41).randbytes(PIECE)
    manifest = make_manifest(data)
    final = downloaded((tmp_path / "Downloads", tmp_path / "state"), manifest, data)
    assert final == tmp_path / "Downloads" / "file.bin"
    assert (real / "file.bin").read_bytes() == data


def test_symlinks_in_the_state_directory_are_not_followed(dirs: Dirs, tmp_path: Path) -> None:
    downloads, state = dirs
    data = random.Random(42).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    secret = plant_secret(tmp_path)
    # The progress file (and its temp file) as symlinks: replaced, never written through.
    transfers = state / "transfers"
    transfers.mkdir(parents=True)
    progress = transfers / f"{manifest.content_id.hex()}.json"
    progress.symlink_to(secret.path)
    (transfers / (progress.name + ".tmp")).symlink_to(secret.path)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, [0])
    partial.close()
    assert secret.untouched() and not progress.is_symlink()
    assert PartialFile.open(*dirs, manifest).verified_pieces == 1
    # The transfers directory itself as a symlink: refused.
    other = tmp_path / "other-state"
    other.mkdir()
    (other / "transfers").symlink_to(secret.path.parent)
    with pytest.raises(StoreError, match="transfers: it is a symbolic link"):
        PartialFile.open(downloads, other, manifest)
    assert os.listdir(secret.path.parent) == ["secret"]


def test_identical_file_someone_else_can_change_is_not_taken_as_ours(dirs: Dirs) -> None:
    downloads, _ = dirs
    data = random.Random(43).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    planted = downloads / "file.bin"
    planted.write_bytes(data)
    planted.chmod(0o666)
    if os.geteuid() == 0:
        os.chown(planted, NOBODY, NOBODY)
    final = downloaded(dirs, manifest, data)
    assert final == downloads / "file (1).bin" and final.read_bytes() == data


def test_without_hard_links_or_renameat2_the_part_file_stays(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(44).randbytes(2 * PIECE)
    manifest = make_manifest(data)

    def refuse(*args, **kw) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    def no_renameat2(*args) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(deliver, "rename_noreplace", no_renameat2)
    partial = PartialFile.open(*dirs, manifest)
    write_pieces(partial, manifest, data, range(2))
    with pytest.raises(StoreError, match="neither hard links nor renameat2"):
        partial.finalize()
    assert os.listdir(dirs[0]) == [the_part(dirs, manifest).name]
    assert the_part(dirs, manifest).read_bytes() == data
    partial.close()


def test_rename_noreplace_refuses_any_existing_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            store.rename_noreplace(fd, "a", fd, "dangling")
        store.rename_noreplace(fd, "a", fd, "b")
    finally:
        os.close(fd)
    assert (tmp_path / "b").read_bytes() == b"a" and (tmp_path / "dangling").is_symlink()


def test_every_layer_logs_as_the_store_s_partial_file(dirs: Dirs) -> None:
    """The store is a package of layers now; its log events keep the namespace they
    had (``mcp2p.transfer.store.PartialFile``, shown in the daemon's log lines)."""
    data = random.Random(16).randbytes(2 * PIECE)
    manifest = make_manifest(data)
    events: list[dict] = []

    @implementer(ILogObserver)
    def observer(event: dict) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        first = PartialFile.open(*dirs, manifest)
        write_pieces(first, manifest, data, [0])
        first.close()
        partial = PartialFile.open(*dirs, manifest)  # "resuming": PartialFile.open
        write_pieces(partial, manifest, data, [1])
        partial.finalize()  # "complete": the deliver layer
    finally:
        globalLogPublisher.removeObserver(observer)
    ours = {
        e["log_format"]: e["log_namespace"]
        for e in events
        if (e.get("log_format") or "").startswith(("resuming {name}", "{name} complete at"))
    }
    assert len(ours) == 2
    assert set(ours.values()) == {"mcp2p.transfer.store.PartialFile"}


@given(st.lists(st.tuples(st.integers(0, 3 * 196608 + 100), st.integers(0, 1)), max_size=40))
@settings(max_examples=30, deadline=None)
def test_a_bitmap_cache_encodes_as_encode_bitmap_does_through_changes(
    changes: list[tuple[int, int]],
) -> None:
    from mcp2p.transfer.store.progress import BitmapCache

    cache = BitmapCache()
    bits = bytearray(3 * 196608 + 101)  # three whole chunks and a partial one
    assert cache.encode(bits) == encode_bitmap(bits)
    for i, (index, value) in enumerate(changes):
        bits[index] = value
        if i % 3 == 0:
            assert cache.encode(bits) == encode_bitmap(bits)
    assert cache.encode(bits) == encode_bitmap(bits)
    assert decode_bitmap(cache.encode(bits), len(bits)) == bits
    shorter = bits[:1000]  # another size: everything encoded afresh
    assert cache.encode(shorter) == encode_bitmap(shorter)
