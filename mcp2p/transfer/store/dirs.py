"""Opening a download's directories by fd, and the names made in them.

The download directory is opened once and every later operation is relative
to that fd (``dir_fd=``): the path given is resolved by the kernel once, at
open, and nothing created afterwards is ever followed (the rules are in the
package docstring). The progress files live in ``<state_dir>/transfers``,
made 0o700 if missing, never a symlink, ours.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mcp2p.transfer.store.common import StoreError, _store_error

TRANSFERS = "transfers"

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Reopening a name someone else may have planted: never through a symlink,
# and a FIFO there must not block the open (fstat then refuses it).
_REOPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _fit_name(name: str, room: int) -> str:
    """``name`` cut (at a character boundary) to ``room`` UTF-8 bytes."""
    raw = name.encode("utf-8")
    if len(raw) <= room:
        return name
    return raw[:room].decode("utf-8", "ignore")


def _temp_of(name: str) -> str:
    return name + ".tmp"


def _open_download_dir(path: Path) -> int:
    """The download directory as an fd; never created here (see the package docstring)."""
    try:
        return os.open(path, _OPEN_DIR)
    except FileNotFoundError as exc:
        raise StoreError(
            errno.ENOENT, f"download directory {path} does not exist", str(path)
        ) from exc
    except NotADirectoryError as exc:
        raise StoreError(
            errno.ENOTDIR, f"download directory {path} is not a directory", str(path)
        ) from exc
    except OSError as exc:
        raise _store_error(exc, "open download directory", path) from exc


def _open_progress_dir(state_dir: Path) -> int:
    """``<state_dir>/transfers`` as an fd: made 0o700 if missing, never a symlink, ours."""
    path = state_dir / TRANSFERS
    try:
        state_dir.mkdir(parents=True, exist_ok=True)  # the daemon's own, from its config
        state_fd = os.open(state_dir, _OPEN_DIR)
        try:
            try:
                os.mkdir(TRANSFERS, 0o700, dir_fd=state_fd)
            except FileExistsError:
                pass
            try:
                fd = os.open(TRANSFERS, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=state_fd)
            except NotADirectoryError:  # what O_DIRECTORY|O_NOFOLLOW says of a symlink
                if stat.S_ISLNK(os.stat(TRANSFERS, dir_fd=state_fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
        finally:
            os.close(state_fd)
    except OSError as exc:
        raise _store_error(exc, "open", path) from exc
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise StoreError(errno.EPERM, f"{path} belongs to uid {owner}, not to us", str(path))
    return fd


@dataclass(slots=True)
class _Files:
    """Where a download's files are: directory fds and the names in them."""

    download_dir: Path
    dir_fd: int
    part: str
    final: str
    progress_dir: Path
    progress_fd: int
    progress: str

    @property
    def progress_path(self) -> Path:
        return self.progress_dir / self.progress

    def close(self) -> None:
        for fd in (self.dir_fd, self.progress_fd):
            if fd >= 0:
                os.close(fd)
        self.dir_fd = self.progress_fd = -1
