"""Progress records: the verified pieces (and blocks on disk) of a download, made
durable before they are recorded.

``<state_dir>/transfers/<content id hex>.json`` holds the bitmap of verified
pieces and of blocks written to disk in pieces not yet verified. A piece is
marked only after its bytes were hashed, written and ``fdatasync``'ed; the
file is replaced atomically (temp file, fsync, rename, fsync of the
directory). Marks are batched (at most ``FLUSH_PIECES`` pieces or
``FLUSH_SECONDS`` between flushes, and always at close; finalize removes the
file), so a ``kill -9`` loses at most the unflushed marks, whose pieces are
fetched again; it can never make unverified bytes count as good. A file that
does not describe this manifest exactly is refused (the download starts over).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat

from mcp2p.atomicfile import write_atomic
from mcp2p.transfer.store.buffers import BufferWindow
from mcp2p.transfer.store.common import ManifestLike, _store_error
from mcp2p.transfer.store.dirs import _REOPEN, _Files, _temp_of
from mcp2p.transfer.store.partfile import start_writeback
from mcp2p.wire.layout import Layout

PROGRESS_VERSION = 1
FLUSH_PIECES = 16
FLUSH_SECONDS = 0.5
PROGRESS_MODE = 0o600
# bytearray of 0/1 <-> bytes of "0"/"1", for packing the bitmap in C speed.
_TO_DIGITS = bytes.maketrans(b"\x00\x01", b"01")
_FROM_DIGITS = bytes.maketrans(b"01", b"\x00\x01")


def encode_bitmap(bits: bytearray) -> str:
    """0/1 bytes -> base64 of a little-endian bit string (bit i = piece i)."""
    digits = bits.translate(_TO_DIGITS)[::-1]
    value = int(digits, 2) if digits else 0
    return base64.b64encode(value.to_bytes((len(bits) + 7) // 8, "little")).decode("ascii")


_CHUNK = 8 * 3 * 8192  # bits a BitmapCache chunk: whole bytes and whole base64 quanta


class BitmapCache:
    """``encode_bitmap`` for a bitmap that changes a little between calls: it
    is cut in chunks of _CHUNK bits (24 KiB packed, whole base64 quanta, so
    their texts join), and a chunk equal to its last copy keeps its text.
    A flush of a 4 GiB file's block bitmap (3 million bits, 12 ms to encode)
    then costs a compare of 3 MB and the few chunks that changed."""

    def __init__(self) -> None:
        self._raw: list[bytes | None] = []
        self._text: list[str] = []

    def encode(self, bits: bytearray) -> str:
        count = -(-len(bits) // _CHUNK)
        if len(self._raw) != count:
            self._raw, self._text = [None] * count, [""] * count
        raw, text = self._raw, self._text
        for k in range(count):
            # A bytearray slice, not a memoryview: bytes compare with a
            # memoryview element by element (25x slower than memcmp).
            part = bits[k * _CHUNK : (k + 1) * _CHUNK]
            if raw[k] is None or raw[k] != part:
                raw[k] = bytes(part)
                text[k] = encode_bitmap(part)
        return "".join(text)


def decode_bitmap(text: str, count: int) -> bytearray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"bitmap is {len(raw)} bytes, expected {(count + 7) // 8}")
    value = int.from_bytes(raw, "little")
    if value >> count:
        raise ValueError("bitmap has bits beyond the last piece")
    digits = format(value, f"0{count}b")[::-1] if count else ""
    return bytearray(digits.encode("ascii").translate(_FROM_DIGITS))


def load_progress(
    files: _Files, manifest: ManifestLike, pieces: int
) -> tuple[bytearray | None, bytearray | None, str | None]:
    """(verified pieces, written blocks or None, None), or (None, None, why not)."""
    try:
        fd = os.open(files.progress, os.O_RDONLY | _REOPEN, dir_fd=files.progress_fd)
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, None, "progress file unreadable (a symbolic link)"
        return None, None, f"progress file unreadable ({exc.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, None, "progress file unreadable (not a regular file)"
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        return None, None, f"progress file unreadable ({exc.strerror})"
    finally:
        os.close(fd)
    try:
        state = json.loads(raw)
        if not isinstance(state, dict):
            raise ValueError("not an object")
        expected = {
            "version": PROGRESS_VERSION,
            "content_id": manifest.content_id.hex(),
            "size": manifest.size,
            "piece_length": manifest.piece_length,
            "block_length": manifest.block_length,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"{key} is {state.get(key)!r}, expected {value!r}")
        verified = decode_bitmap(state["verified"], pieces)
        written = state.get("written")
        blocks = Layout(manifest.size, manifest.piece_length, manifest.block_length).blocks
        held = decode_bitmap(written, blocks) if isinstance(written, str) else None
    except (ValueError, KeyError, TypeError) as exc:
        return None, None, f"progress file unusable ({exc})"
    return verified, held, None


def write_progress(
    files: _Files,
    manifest: ManifestLike,
    verified: bytearray,
    written: bytearray | None = None,
    caches: tuple[BitmapCache, BitmapCache] | None = None,
) -> None:
    """Replace the progress file atomically and durably.

    ``written`` marks blocks held in pieces not yet verified: after a crash
    they are kept, and a piece whose kept blocks turn out wrong simply fails
    its hash and is fetched again, so keeping them risks nothing. ``caches``
    (for verified, written) spare re-encoding what did not change since the
    last call."""
    encode = encode_bitmap if caches is None else caches[0].encode
    encode_written = encode_bitmap if caches is None else caches[1].encode
    state = {
        "version": PROGRESS_VERSION,
        "content_id": manifest.content_id.hex(),
        "name": manifest.name,
        "size": manifest.size,
        "piece_length": manifest.piece_length,
        "block_length": manifest.block_length,
        "verified": encode(verified),
    }
    if written is not None:
        state["written"] = encode_written(written)
    data = json.dumps(state, separators=(",", ":")).encode("utf-8")
    try:
        write_atomic(
            files.progress,
            data,
            PROGRESS_MODE,
            dir_fd=files.progress_fd,
            tmp_name=_temp_of(files.progress),
        )
    except OSError as exc:
        raise _store_error(exc, "write", files.progress_path) from exc


class ProgressRecords(BufferWindow):
    """The layer of ``PartialFile`` that records verified pieces."""

    def _piece_verified(self, piece: int) -> None:
        self._mark_verified(piece)
        self._unflushed += 1
        if self._unflushed >= FLUSH_PIECES or self.flush_due():
            self.flush_soon()
        self._write_behind(piece)

    def _write_behind(self, piece: int) -> None:
        """Start the disk writing ``piece`` now (``start_writeback``), in
        ``background``: the next flush's fdatasync, and the one in
        ``finalize`` that ends every fetch, then wait only for what is still
        under way, not for all written since the last flush (up to
        FLUSH_SECONDS of the rate: finalize took 5-32 ms, median 20, in the
        lab's 8-CN fetch at 100 Mbit/s; 3-24, median 7, with it). Best
        effort and bounded: one job at a time (pieces verified meanwhile
        wait for the next, as one range), which skips its turn while a
        flush syncs rather than wait and hold a thread; a file system
        without it stops it."""
        if self.background is None or not self._writeback:
            return
        start = piece * self._piece_length
        end = start + self.layout.piece_size(piece)
        if self._behind is not None:
            start, end = min(start, self._behind[0]), max(end, self._behind[1])
        self._behind = start, end
        if not self._kicking:
            self._kick()

    def _kick(self) -> None:
        background = self.background
        assert background is not None and self._behind is not None
        start, end = self._behind
        self._behind = None
        self._kicking = True

        def work() -> None:
            if not self._sync_lock.acquire(blocking=False):
                return  # a flush (or the close) has the fd: the next flush writes these
            try:
                if not self._closed and not start_writeback(self._fd, start, end - start):
                    self._writeback = False
            finally:
                self._sync_lock.release()

        def done(error: BaseException | None) -> None:
            self._kicking = False
            if self._behind is not None and self._writeback and not self._closed:
                self._kick()

        background(work, done)

    def flush_due(self) -> bool:
        """Verified marks are waiting and ``FLUSH_SECONDS`` passed since the last flush."""
        waiting = self._unflushed or self._dirty_blocks
        return bool(waiting) and self._clock() - self._last_flush >= FLUSH_SECONDS

    def flush(self) -> None:
        """Make the data durable, then record the verified pieces (in that order)."""
        if self._closed:
            return
        self._sync_record(self._verified, self._on_disk())  # after a background one
        self._unflushed = 0
        self._dirty_blocks = 0
        self._last_flush = self._clock()

    def flush_soon(self) -> None:
        """``flush``, in ``background`` where there is one: fdatasync takes
        10-30 ms a flush on the lab's disk, seconds on a slow one, and the
        caller's reactor must go on reading its socket meanwhile. The marks
        recorded are those of now: their pieces were written before the sync
        starts, so it covers them (one under way: the next is asked when it
        ends, if due by then)."""
        background = self.background
        if background is None:
            self.flush()
            return
        if self._closed:
            return
        if self._syncing:
            return
        marks = bytearray(self._verified), bytearray(self._on_disk())
        count, dirty = self._unflushed, self._dirty_blocks
        self._unflushed = self._dirty_blocks = 0
        self._last_flush = self._clock()
        self._syncing = True

        def done(error: BaseException | None) -> None:
            self._syncing = False
            if error is not None:
                self._unflushed += count  # not recorded: a later flush records them
                self._dirty_blocks += dirty
            elif self._unflushed >= FLUSH_PIECES or self.flush_due():
                self.flush_soon()

        background(lambda: self._sync_record(*marks), done)

    def _sync_record(self, verified: bytearray, written: bytearray) -> None:
        """fdatasync, then the progress file with these marks: nothing once closed."""
        with self._sync_lock:
            if self._closed:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise _store_error(exc, "sync", self.part_path) from exc
            if self._bitmap_caches is None:
                self._bitmap_caches = (BitmapCache(), BitmapCache())
            write_progress(self._files, self.manifest, verified, written, self._bitmap_caches)

    def _remove_progress(self) -> None:
        directory = self._progress_fd
        for name in (self._files.progress, _temp_of(self._files.progress)):
            try:
                os.unlink(name, dir_fd=directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                path = self._files.progress_dir / name
                self._log.warn("cannot remove {path}: {why}", path=path, why=exc.strerror)
