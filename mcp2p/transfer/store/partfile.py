"""The part file ``.<name>.<cid16>.part``: created fresh, or reopened on resume only if
it is still ours.

A new one is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` after unlinking the
name (the name only: a symlink's or hard link's target is untouched). On
resume it is reopened with ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO there neither
blocks nor is used) and kept only if ``fstat`` shows a regular file owned by
our euid with one link and the expected size; anything else is started over.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import Any

from mcp2p.transfer.store.common import _store_error, libc_function
from mcp2p.transfer.store.dirs import _CREATE, _REOPEN, _Files, _fit_name
from mcp2p.wire.types import MAX_NAME_BYTES

# New part files and the final file (through the link): see the package docstring.
FILE_MODE = 0o644
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
# sync_file_range errors meaning "not here" (no such call, a file system or
# file without it): write-behind stops; others are left to fdatasync.
_NO_WRITEBACK = frozenset({errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP})


@functools.cache
def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None."""
    off = ctypes.c_int64
    return libc_function("sync_file_range", [ctypes.c_int, off, off, ctypes.c_uint])


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Have the kernel start writing ``length`` bytes at ``offset`` of ``fd``
    to the disk, without waiting for them (``sync_file_range`` with
    SYNC_FILE_RANGE_WRITE, as PostgreSQL's ``checkpoint_flush_after``).
    Nothing is durable by this: fdatasync still is the only promise, and
    finds less left to write. False where it cannot be done (the caller
    stops asking); an I/O error is left for that fdatasync to report."""
    function = _sync_file_range()
    if function is None:
        return False
    if function(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0:
        return True
    return ctypes.get_errno() not in _NO_WRITEBACK


def part_name(name: str, content_id: bytes) -> str:
    """``.<name>.<first 16 hex of content id>.part``, the name cut to fit 255 bytes."""
    tail = f".{content_id.hex()[:16]}.part"
    return "." + _fit_name(name, MAX_NAME_BYTES - 1 - len(tail)) + tail


def _not_our_part(info: os.stat_result, size: int) -> str | None:
    """Why the file at the part name cannot be resumed, or None."""
    if not stat.S_ISREG(info.st_mode):
        return "the part file is not a regular file"
    if info.st_uid != os.geteuid():
        return f"the part file belongs to uid {info.st_uid}"
    if info.st_nlink != 1:
        return f"the part file has {info.st_nlink} links"
    if info.st_size != size:
        return f"the part file has {info.st_size} bytes, expected {size}"
    return None


def reopen_part(files: _Files, size: int) -> tuple[int, str | None]:
    """(fd, None) for our own intact part file, else (-1, why not)."""
    try:
        fd = os.open(files.part, os.O_RDWR | _REOPEN, dir_fd=files.dir_fd)
    except FileNotFoundError:
        return -1, "the part file is missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return -1, "the part file is a symbolic link"
        return -1, f"the part file cannot be opened ({exc.strerror})"
    try:
        why = _not_our_part(os.fstat(fd), size)
        if why is None:
            os.set_blocking(fd, True)
            return fd, None
    except OSError as exc:
        why = f"the part file cannot be read ({exc.strerror})"
    os.close(fd)
    return -1, why


def create_part(files: _Files, size: int) -> int:
    """A new, empty part file of ``size`` bytes; whatever had its name is unlinked
    first (the name only: a symlink's or hard link's target is untouched)."""
    path = files.download_dir / files.part
    try:
        os.unlink(files.part, dir_fd=files.dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _store_error(exc, "remove", path) from exc
    try:
        fd = os.open(files.part, os.O_RDWR | _CREATE, FILE_MODE, dir_fd=files.dir_fd)
    except OSError as exc:
        raise _store_error(exc, "create", path) from exc
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise _store_error(exc, "allocate", path) from exc
    return fd
