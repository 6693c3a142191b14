"""PartialFile: one download on disk, opened (resumed or started over), closed, aborted.

The class is the top of the layers named in ``state``; this module holds
what joins them: opening the directories, the progress and the part file
into one object, and stopping it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp2p.core.display import display_name
from mcp2p.transfer.store.common import ManifestLike
from mcp2p.transfer.store.deliver import Delivery
from mcp2p.transfer.store.dirs import (
    TRANSFERS,
    _Files,
    _open_download_dir,
    _open_progress_dir,
)
from mcp2p.transfer.store.partfile import create_part, part_name, reopen_part
from mcp2p.transfer.store.progress import load_progress, write_progress
from mcp2p.wire.layout import Layout
from mcp2p.wire.merkle import hash_piece, merkle_root
from mcp2p.wire.types import check_name


class PartialFile(Delivery):
    """One download in progress; see the package docstring for the guarantees."""

    # Its public home: also the namespace of its log events, as before the split.
    __module__ = "mcp2p.transfer.store"

    def _keep_written(self, written: bytearray) -> None:
        """Take back the blocks a previous run wrote in unverified pieces; a piece
        they complete is checked now."""
        complete = []
        for piece in range(self.layout.pieces):
            if self._verified[piece]:
                continue
            blocks = self.layout.piece_blocks(piece)
            held = written[blocks.start : blocks.stop]
            count = held.count(1)
            if count:
                self._written[blocks.start : blocks.stop] = held
                self._left[piece] -= count
                if self._left[piece] == 0:
                    complete.append(piece)
        for piece in complete:
            event = self._check_piece(piece)
            if not event.ok:
                self._log.info(
                    "kept blocks of piece {piece} were wrong: fetching it again", piece=piece
                )

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        download_dir: Path,
        state_dir: Path,
        manifest: ManifestLike,
        clock: Callable[[], float] = time.monotonic,
    ) -> PartialFile:
        """Resume the download of ``manifest`` if its files are intact, else start over."""
        name = check_name(manifest.name)
        layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
        if len(manifest.content_id) != 32:
            raise ValueError("content_id must be 32 bytes")
        if len(manifest.piece_hashes) != layout.pieces:
            raise ValueError(
                f"manifest has {len(manifest.piece_hashes)} piece hashes for {layout.pieces} pieces"
            )
        if merkle_root(list(manifest.piece_hashes)) != manifest.content_id:
            raise ValueError("manifest piece hashes do not match its content id")
        download_dir = Path(download_dir)
        final = name
        part = part_name(name, manifest.content_id)
        # check_name forbids "/", "." and "..", so this holds; keep it so it stays so.
        if (download_dir / final).parent != download_dir or "/" in part:
            raise ValueError(f"name {name!r} leaves the download directory")
        dir_fd = _open_download_dir(download_dir)
        try:
            progress_fd = _open_progress_dir(Path(state_dir))
        except BaseException:
            os.close(dir_fd)
            raise
        files = _Files(
            download_dir,
            dir_fd,
            part,
            final,
            Path(state_dir) / TRANSFERS,
            progress_fd,
            f"{manifest.content_id.hex()}.json",
        )
        try:
            return cls._open_files(files, manifest, layout, clock)
        except BaseException:
            files.close()
            raise

    @classmethod
    def _open_files(
        cls, files: _Files, manifest: ManifestLike, layout: Layout, clock: Callable[[], float]
    ) -> PartialFile:
        name = files.final
        verified, written, why = load_progress(files, manifest, layout.pieces)
        fd = -1
        if verified is not None:
            fd, why = reopen_part(files, manifest.size)
            if why is not None:
                verified = None
        if verified is not None:
            cls._log.info(
                "resuming {name}: {verified} of {pieces} pieces verified",
                name=display_name(name),
                verified=sum(verified),
                pieces=layout.pieces,
            )
        else:
            if why is not None:
                cls._log.warn("starting {name} over: {why}", name=display_name(name), why=why)
            verified = bytearray(layout.pieces)
            if why is not None:
                # Old marks go first, durably, so they never describe new bytes.
                # With no progress file there are none: the first flush makes
                # one, and a fresh download's Subscribe does not wait for a
                # file and a directory fsync (1-16 ms together in the lab).
                write_progress(files, manifest, verified)
            fd = create_part(files, manifest.size)
        if verified is None or why is not None:
            written = None
        partial = None
        try:
            partial = cls(manifest, files, fd, verified, clock)
            if written is not None:
                partial._keep_written(written)
            if (
                manifest.size == 0
                and not partial.complete
                and manifest.piece_hashes[0] == hash_piece(b"")
            ):
                # The empty file's one piece needs no block: it is verified already.
                partial._piece_verified(0)
        except BaseException:
            if partial is None:
                os.close(fd)
            else:
                partial._close_fd()
            raise
        return partial

    def close(self) -> None:
        """Record progress and close; ``open`` resumes from here."""
        if self._closed:
            return
        try:
            spilled = bool(self._buffers)
            while self._buffers:  # blocks in memory go to disk, so a resume keeps them
                self._spill(next(iter(self._buffers)))
            self._spare.clear()
            if self._unflushed or spilled:
                self.flush()
        finally:
            self._close_fd()
            self._files.close()

    def abort(self, remove: bool) -> None:
        """Stop: keep the files for a later resume, or remove them (``remove``; nothing
        to do once closed: the directories are closed too)."""
        if not remove:
            self.close()
            return
        closed = self._closed
        self._close_fd()
        if not closed:
            # Progress first: a part file without progress is started over, never trusted.
            self._remove_progress()
            try:
                if self._part_is_ours():
                    os.unlink(self._files.part, dir_fd=self._dir_fd)
            except OSError as exc:
                self._log.warn("cannot remove {path}: {why}", path=self.part_path, why=exc.strerror)
        self._files.close()

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PartialFile {self.manifest.name!r} "
            f"{self._verified_count}/{self.layout.pieces} pieces>"
        )
