"""Where a fetch through the daemon may write: ``[fetching] download_dirs``.

The daemon may run as root; any local user can ask it to fetch. So the
output directory of a request is where the daemon's owner allowed, or the
request is refused:

- ``out_dir`` must be absolute; it is resolved (``os.path.realpath``:
  symlinks and ``..``), and the result must be one of the resolved
  download dirs or inside one. Resolving is what counts: an owner may
  configure a symlink (``/srv/dl -> /data/dl``), and a symlink a user
  planted inside an allowed directory must not lead out of it.
- The directory is then opened from the allowed directory down, one
  component at a time with ``O_NOFOLLOW``, and held open: the download
  store is given ``/proc/self/fd/N``, that very directory. A user who
  replaces a checked directory with a symlink between the check and the
  moment the store opens it (after the search and the manifest, seconds
  later) gains nothing: the path is not looked up again.
- Nothing is created: a missing directory is refused (the store makes no
  directories either; ``mcp2p get -o`` makes its own as the user).

Free of Twisted: the API turns ``OutDirRefused`` into HTTP 400.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")


class OutDirRefused(ValueError):
    """The output directory of a request is not one the daemon may write to."""


def _allowed_text(allowed: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in allowed) + " ([fetching] download_dirs)"


def resolve_out_dir(out_dir: Path, allowed: Sequence[Path]) -> tuple[Path, Path]:
    """(the allowed directory, resolved, that holds ``out_dir``; ``out_dir`` resolved).

    Raises OutDirRefused naming the allowed directories when none holds it.
    """
    text = str(out_dir)
    if "\x00" in text or not Path(text).is_absolute():
        raise OutDirRefused(f"out_dir must be an absolute path, not {text!r}")
    real = Path(os.path.realpath(text))
    for directory in allowed:
        root = Path(os.path.realpath(directory))
        if real == root or root in real.parents:
            return root, real
    shown = repr(text) if str(real) == text else f"{text!r} (resolved: {str(real)!r})"
    raise OutDirRefused(
        f"out_dir {shown} is not inside the directories this daemon may write to: "
        + _allowed_text(allowed)
    )


class OutDir:
    """A checked output directory, held open until ``close``."""

    def __init__(self, fd: int, resolved: Path) -> None:
        self.fd = fd
        self.resolved = resolved

    @property
    def store_path(self) -> Path:
        """The path to give the download store: this very directory."""
        return _PROC_FD / str(self.fd) if self.fd >= 0 else self.resolved

    def real_path(self) -> Path:
        """Where the directory is now (it may have been moved since the check)."""
        if self.fd >= 0:
            try:
                return Path(os.readlink(_PROC_FD / str(self.fd)))
            except OSError:
                pass
        return self.resolved

    def shown(self, text: str) -> str:
        """``text`` (a path or a message from the store) with ``store_path``
        replaced by the directory's real path."""
        if self.fd < 0:
            return text
        return text.replace(str(self.store_path), str(self.real_path()))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def open_out_dir(out_dir: Path, allowed: Sequence[Path]) -> OutDir:
    """Check ``out_dir`` against ``allowed`` and open it without following a symlink
    below the allowed directory (see the module docstring)."""
    root, real = resolve_out_dir(out_dir, allowed)
    missing = (
        f"out_dir {str(out_dir)!r} does not exist (the daemon makes no directories: "
        "create it first)"
    )
    try:
        fd = os.open(root, _OPEN_DIR)
    except FileNotFoundError:
        raise OutDirRefused(missing) from None
    except OSError as e:
        raise OutDirRefused(f"cannot open {str(root)!r}: {e.strerror}") from None
    try:
        for part in real.relative_to(root).parts:
            try:
                child = os.open(part, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise OutDirRefused(missing) from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OutDirRefused(
                        f"out_dir {str(out_dir)!r}: {part!r} in {str(real)!r} is not a "
                        "directory, or was replaced by a symlink while it was checked"
                    ) from None
                raise OutDirRefused(f"cannot open out_dir {str(out_dir)!r}: {e.strerror}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    if not _PROC_FD.is_dir():  # no /proc: the store opens the resolved path itself
        os.close(fd)
        fd = -1
    return OutDir(fd, real)
