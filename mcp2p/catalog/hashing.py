"""Hashing one shared file: its content id and piece hashes, as a ``CatalogEntry``.

Blocking (file reads): the catalog calls ``hash_file`` in a worker thread only.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from mcp2p.wire.merkle import CHUNK, merkle_root, piece_hashes


class FileChangedError(Exception):
    """The file changed while it was hashed; the next scan tries again."""


class NotRegularFileError(OSError):
    """The path is not a regular file (FIFO, device, socket, directory)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One shared file as last hashed. ``path`` is absolute, inside a share."""

    content_id: bytes
    path: str
    name: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    piece_length: int
    piece_hashes: tuple[bytes, ...]


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def hash_file(
    path: str | os.PathLike[str],
    piece_length: int,
    check: Callable[[], object] | None = None,
) -> tuple[bytes, tuple[bytes, ...], os.stat_result]:
    """Hash one file: ``(content_id, piece_hashes, stat)``. Blocking: call it in a thread.

    Opens without following a symlink and refuses anything but a regular
    file (``NotRegularFileError``), so a FIFO swapped in cannot hang the
    scan. Raises ``FileChangedError`` if the file's size, timestamps or
    identity differ after hashing from before, or it is no longer at
    ``path``: the hash may mix old and new bytes. ``stat`` is the
    ``fstat`` taken before reading. ``check`` is called between chunks and
    may raise to abort.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", os.fspath(path))
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:  # pragma: no cover - advisory only
            pass
        # One buffer reused for every read; no bigger than the file, so a
        # scan of many small files allocates little.
        view = memoryview(bytearray(max(1, min(CHUNK, before.st_size))))

        def read(n: int) -> memoryview:
            got = f.readinto(view[:n])
            return view[: got or 0]

        try:
            leaves = piece_hashes(read, before.st_size, piece_length, check)
        except EOFError as e:
            raise FileChangedError(f"{os.fspath(path)} shrank while hashed") from e
        after = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError as e:
        raise FileChangedError(f"{os.fspath(path)} was removed while hashed") from e
    if _stat_key(after) != _stat_key(before) or _stat_key(now) != _stat_key(before):
        raise FileChangedError(f"{os.fspath(path)} changed while hashed")
    return merkle_root(leaves), tuple(leaves), before
