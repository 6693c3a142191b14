"""Delivering the verified file under its final name, never replacing anything.

``finalize`` hashes the whole file once more, then makes the final name with
``link(part, final)`` and ``unlink(part)``: ``link`` fails with EEXIST if
anything, even a dangling symlink, has that name, so nothing is ever
replaced or written through, and the next ``<stem> (n)<suffix>`` is tried.
File systems without hard links fall back to ``renameat2(RENAME_NOREPLACE)``
through ctypes; with neither, ``finalize`` fails and leaves the verified
part file (the full reasoning is in the package docstring).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import os
import stat
from pathlib import Path
from typing import Any

from mcp2p.core.display import display_name, display_path
from mcp2p.transfer.store.common import StoreError, VerifyError, _store_error, libc_function
from mcp2p.transfer.store.dirs import _REOPEN, _fit_name
from mcp2p.transfer.store.pieces import PieceWriter
from mcp2p.wire.merkle import hash_piece, merkle_root, piece_hashes
from mcp2p.wire.types import MAX_NAME_BYTES

# Give up looking for a free "<stem> (n)<suffix>" after this many.
MAX_COLLISIONS = 1000
# link() errors meaning "this file system has no hard links" (vfat says EPERM).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
RENAME_NOREPLACE = 1  # <linux/fs.h>


def collision_name(name: str, n: int) -> str:
    """``<stem> (n)<suffix>``, the stem cut so the name fits 255 bytes."""
    path = Path(name)
    stem, suffix = path.stem, path.suffix
    extra = f" ({n}){suffix}"
    return _fit_name(stem, MAX_NAME_BYTES - len(extra.encode("utf-8"))) + extra


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), or None."""
    path = ctypes.c_char_p
    return libc_function("renameat2", [ctypes.c_int, path, ctypes.c_int, path, ctypes.c_uint])


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """``renameat2(..., RENAME_NOREPLACE)``: ``FileExistsError`` if ``dst`` exists (even
    as a dangling symlink); ENOSYS or EINVAL where the kernel, libc or file system
    cannot."""
    function = _renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    encoded = os.fsencode(src), os.fsencode(dst)
    if function(src_dir_fd, encoded[0], dst_dir_fd, encoded[1], RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)


class Delivery(PieceWriter):
    """The layer of ``PartialFile`` that checks the whole file and gives it its name."""

    def finalize(self) -> Path:
        """Check the whole file once more, then move it to its final name.

        Every piece verified by an earlier run is hashed again from disk,
        and the Merkle root of all the pieces' hashes must be the content
        id: this catches a part file changed between runs. A piece verified
        in this run was hashed from the bytes this run wrote (in memory
        before its one write, or read back after a spill) and is not read
        again: a fresh download costs no second read of the file (that read
        was 5-7% of a CN's CPU, and seconds of I/O for a large file). A
        piece that fails is wanted again and ``VerifyError`` is raised. An existing file of the
        same name (even a dangling symlink) is never replaced or followed:
        identical content in a regular file of ours means the part is
        dropped; anything else means ``<stem> (n)<suffix>``. The path
        returned is where the file really is (see ``download_dir_now``).
        """
        if self._closed:
            raise ValueError(f"{self.part_path} is closed")
        if not self.complete:
            raise ValueError(
                f"{self.final_path.name}: {self.layout.pieces - self._verified_count} "
                "pieces missing"
            )
        hashes = self._rehash(self._fd, self.part_path)
        bad = [
            p for p, (got, want) in enumerate(zip(hashes, self._hashes, strict=True)) if got != want
        ]
        if bad:
            for piece in bad:
                self._verified[piece] = 0
                self._verified_count -= 1
                self._bytes_verified -= self.layout.piece_size(piece)
                self._forget(piece)
            self._bad_pieces += len(bad)
            self.flush()
            raise VerifyError(
                f"{self.part_path}: {len(bad)} pieces no longer verify, wanted again", bad
            )
        if merkle_root(hashes) != self.manifest.content_id:  # pragma: no cover - open checks
            raise VerifyError(f"{self.part_path}: content id does not verify", [])
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _store_error(exc, "sync", self.part_path) from exc
        final = self._move_into_place()
        self._close_fd()
        self._remove_progress()
        self._files.close()
        self._log.info(
            "{name} complete at {path}",
            name=display_name(self.manifest.name),
            path=display_path(final),
        )
        return final

    def _rehash(self, fd: int, path: Path) -> list[bytes]:
        """Each piece's hash: read from disk for the pieces an earlier run
        verified, the manifest's for those verified in this run."""
        before = self._verified_before
        if before.count(1) == len(before):
            return self._hash_file(fd, path)
        hashes = list(self._hashes)
        length = self._piece_length
        for piece in itertools.compress(range(len(before)), before):
            offset = piece * length
            size = min(length, self._size - offset)
            try:
                data = os.pread(fd, size, offset)
            except OSError as exc:
                raise _store_error(exc, "read", path) from exc
            hashes[piece] = hash_piece(data) if len(data) == size else b""
        return hashes

    def _hash_file(self, fd: int, path: Path) -> list[bytes]:
        position = 0

        def read(n: int) -> bytes:
            nonlocal position
            try:
                data = os.pread(fd, n, position)
            except OSError as exc:
                raise _store_error(exc, "read", path) from exc
            position += len(data)
            return data

        return piece_hashes(read, self._size, self._piece_length)

    def _same_content(self, name: str) -> bool:
        """Is ``name`` a regular file of ours, not world-writable, holding exactly our
        content? A copy someone else owns could change after we hand out its path."""
        try:
            fd = os.open(name, os.O_RDONLY | _REOPEN, dir_fd=self._dir_fd)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if not (
                stat.S_ISREG(info.st_mode)
                and info.st_size == self._size
                and info.st_uid == os.geteuid()
                and not info.st_mode & stat.S_IWOTH
            ):
                return False
            try:
                return (
                    merkle_root(self._hash_file(fd, self.download_dir / name))
                    == self.manifest.content_id
                )
            except (OSError, EOFError):
                return False
        finally:
            os.close(fd)

    def _move_into_place(self) -> Path:
        """Give the verified part a free final name, never replacing anything, drop the part."""
        name = self._files.final
        for n in range(MAX_COLLISIONS + 1):
            target = name if n == 0 else collision_name(name, n)
            assert "/" not in target
            try:
                self._place(target)
            except FileExistsError:
                # Taken, even by a dangling symlink: ours already, or the next name.
                if self._same_content(target):
                    self._unlink_part()
                    return self.download_dir_now() / target
                continue
            return self.download_dir_now() / target
        raise StoreError(
            errno.EEXIST, f"no free name for {name} in {self.download_dir}", str(self.final_path)
        )

    def _place(self, target: str) -> None:
        """Make ``target`` name the part file: ``FileExistsError`` if anything has that name."""
        self._check_part_name()
        directory = self._dir_fd
        path = self.download_dir / target
        if self._hard_links:
            try:
                os.link(
                    self._files.part,
                    target,
                    src_dir_fd=directory,
                    dst_dir_fd=directory,
                    follow_symlinks=False,
                )
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise _store_error(exc, "link", path) from exc
                self._hard_links = False
                self._log.info(
                    "no hard links in {directory}: renaming without replacing",
                    directory=self.download_dir,
                )
            else:
                self._unlink_part()
                return
        try:
            rename_noreplace(directory, self._files.part, directory, target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EINVAL):
                raise StoreError(
                    exc.errno,
                    f"cannot deliver {self.part_path} as {path}: this file system has neither "
                    "hard links nor renameat2(RENAME_NOREPLACE), so the move could replace a "
                    "file; the verified file stays at the part name",
                    str(path),
                ) from exc
            raise _store_error(exc, "rename", path) from exc
        self._sync_dir()

    def _part_is_ours(self) -> bool:
        """Does the part name still hold the inode we wrote?"""
        try:
            info = os.stat(self._files.part, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self._inode

    def _check_part_name(self) -> None:
        try:
            ours = self._part_is_ours()
        except OSError as exc:
            raise _store_error(exc, "check", self.part_path) from exc
        if not ours:
            raise StoreError(
                errno.EIO,
                f"{self.part_path} was removed or replaced by someone else: not delivering it",
                str(self.part_path),
            )

    def _unlink_part(self) -> None:
        try:
            if self._part_is_ours():
                os.unlink(self._files.part, dir_fd=self._dir_fd)
            else:  # swapped since _check_part_name: not ours to remove
                self._log.warn("{path} is no longer our part file: left", path=self.part_path)
        except OSError as exc:
            raise _store_error(exc, "remove", self.part_path) from exc
        self._sync_dir()

    def _sync_dir(self) -> None:
        try:
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise _store_error(exc, "sync", self.download_dir) from exc

    def download_dir_now(self) -> Path:
        """Where the directory we hold is now: the path given to ``open``, unless it was
        moved or replaced since (then its real path, from /proc/self/fd)."""
        given = self._files.download_dir
        try:
            now, ours = os.stat(given), os.fstat(self._dir_fd)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                return given
        except OSError:
            pass
        try:
            real = Path(os.readlink(f"/proc/self/fd/{self._dir_fd}"))
        except OSError:
            real = given
        self._log.warn(
            "download directory {given} was moved or replaced since the download started;"
            " the file is in {real}",
            given=given,
            real=real,
        )
        return real
