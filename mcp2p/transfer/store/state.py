"""What a download knows: the fields every layer of ``PartialFile`` shares, the queries
on them, and plain reads and writes of the part file.

``PartialFile`` is one object built in layers, one module each, every layer
using only those below it (so a call is an ordinary method call, never a
hop through another object): ``PieceState`` (here), ``BufferWindow``
(``buffers``), ``ProgressRecords`` (``progress``), ``PieceWriter``
(``pieces``), ``Delivery`` (``deliver``), ``PartialFile`` (``partial``).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from mcp2p.transfer.store.common import ManifestLike, StoreError, _store_error
from mcp2p.transfer.store.dirs import _Files
from mcp2p.wire.layout import Layout

_INVERT = bytes.maketrans(b"\x00\x01", b"\x01\x00")


# ``background(work, done)``: run ``work`` in another thread, then ``done(error or None)``.
Background = Callable[[Callable[[], None], Callable[[BaseException | None], None]], None]


class PieceState:
    """The bottom layer of ``PartialFile``: the state of one download.

    ``_written[i]`` is 1 for a block written since its piece was last
    reset, and for every block of a verified piece; ``_left[p]`` counts the
    blocks of unverified piece ``p`` still to come; ``_verified[p]`` is 1 for
    a verified piece, ``_unflushed`` counts verified pieces not yet in the
    progress file.
    """

    _log = Logger()

    def __init__(
        self,
        manifest: ManifestLike,
        files: _Files,
        fd: int,
        verified: bytearray,
        clock: Callable[[], float],
    ) -> None:
        self.manifest = manifest
        self.layout = layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
        self._files = files
        # Paths for messages and the caller; the files are reached through the fds.
        self.part_path = files.download_dir / files.part
        self.final_path = files.download_dir / files.final
        self.progress_path = files.progress_path
        self._fd = fd
        info = os.fstat(fd)
        self._inode = (info.st_dev, info.st_ino)
        self._hard_links = True
        self._clock = clock
        self._size = layout.size
        self._piece_length = layout.piece_length
        self._block_length = layout.block_length
        self._bpp = layout.blocks_per_piece
        self._nblocks = layout.blocks
        self._hashes = tuple(manifest.piece_hashes)
        self._verified = verified
        # Pieces verified by an earlier run (the progress file says so): the
        # whole-file check at the end reads these again; this run's were
        # hashed from the very bytes it wrote.
        self._verified_before = bytearray(verified)
        self._written = bytearray(self._nblocks)
        self._left = [layout.blocks_in_piece(p) for p in range(layout.pieces)]
        self._verified_count = 0
        self._bytes_verified = 0
        for piece in itertools.compress(range(layout.pieces), verified):
            self._mark_verified(piece)
        self._unflushed = 0
        # the progress file's two bitmaps, re-encoded only where they changed
        # (progress.BitmapCache; made by the first flush)
        self._bitmap_caches: tuple[Any, Any] | None = None
        self._dirty_blocks = 0
        self._last_flush = clock()
        self._written_blocks = 0
        self._duplicates = 0
        self._bad_pieces = 0
        self._closed = False
        # Taken around fdatasync and the progress write, and to close the fd: a
        # flush in a thread (``background``) never syncs a closed or reused fd.
        self._sync_lock = threading.Lock()
        # ``background(work, done)`` runs ``work`` off the caller's thread and then
        # calls ``done(error or None)`` on it; None: flushes run in place.
        self.background: Background | None = None
        self._syncing = False  # a background flush is under way
        # Write-behind (progress): start each verified piece's writes at once,
        # one job at a time; the range verified since that job was asked.
        self._writeback = True
        self._kicking = False
        self._behind: tuple[int, int] | None = None
        self._pieces = layout.pieces
        self._last_piece = layout.pieces - 1
        self._last_blocks = layout.blocks_in_piece(self._last_piece)

    def _mark_verified(self, piece: int) -> None:
        blocks = self.layout.piece_blocks(piece)
        self._written[blocks.start : blocks.stop] = b"\x01" * len(blocks)
        self._left[piece] = 0
        self._verified[piece] = 1
        self._verified_count += 1
        self._bytes_verified += self.layout.piece_size(piece)

    def _write_all(self, data: memoryview, offset: int) -> None:
        try:
            while data:
                done = os.pwrite(self._fd, data, offset)
                data = data[done:]
                offset += done
        except OSError as exc:
            raise _store_error(exc, "write", self.part_path) from exc

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _store_error(exc, "read", self.part_path) from exc
        if len(data) != length:
            raise StoreError(
                errno.EIO, f"{self.part_path} is shorter than expected", str(self.part_path)
            )
        return data

    def missing_blocks(self) -> set[int]:
        """Blocks not yet written in unverified pieces (the wanted map)."""
        return set(itertools.compress(range(self._nblocks), self._written.translate(_INVERT)))

    def missing_block_ranges(self) -> Iterator[tuple[int, int]]:
        """The missing blocks as ``(start, stop)`` runs, without a set of every index."""
        written = self._written
        start = written.find(0)
        while start != -1:
            stop = written.find(1, start)
            if stop == -1:
                stop = len(written)
            yield start, stop
            start = written.find(0, stop)

    def missing_pieces(self) -> list[int]:
        """Unverified pieces, in order."""
        return list(
            itertools.compress(range(self.layout.pieces), self._verified.translate(_INVERT))
        )

    def is_verified(self, piece: int) -> bool:
        return bool(self._verified[piece])

    @property
    def verified_pieces(self) -> int:
        return self._verified_count

    @property
    def bytes_verified(self) -> int:
        return self._bytes_verified

    @property
    def complete(self) -> bool:
        return self._verified_count == self._pieces

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def counters(self) -> dict[str, int]:
        return {
            "written": self._written_blocks,
            "duplicates": self._duplicates,
            "bad_pieces": self._bad_pieces,
        }

    @property
    def _dir_fd(self) -> int:
        return self._files.dir_fd

    @property
    def _progress_fd(self) -> int:
        return self._files.progress_fd

    @property
    def download_dir(self) -> Path:
        """The download directory as given to ``open``."""
        return self._files.download_dir

    def _close_fd(self) -> None:
        with self._sync_lock:  # after a background flush of this fd, if one runs
            if not self._closed:
                self._closed = True
                # -1, not the old number: a later write must fail, not hit a reused fd.
                fd, self._fd = self._fd, -1
                os.close(fd)
