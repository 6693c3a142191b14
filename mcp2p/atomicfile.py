"""Replace a small file atomically, following nothing planted at its names.

One way for every state file the daemon writes (node key, API token and
port, known nodes, key records, transfer progress): a crash leaves the old
content or the new, never a mix, and a symlink, FIFO or file planted at the
final or the temporary name is never followed or written through.
"""

from __future__ import annotations

import os
import secrets

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    *,
    dir_fd: int | None = None,
    sync_dir: bool = True,
    tmp_name: str | None = None,
) -> None:
    """Put ``data`` at ``path`` with ``mode`` (whatever the umask).

    The temporary file gets a random name beside ``path`` and is created
    with O_EXCL|O_NOFOLLOW, written, fsynced and renamed over ``path``
    (which replaces a symlink there without following it); then the
    directory is fsynced. With ``dir_fd``, ``path`` is a name in that
    directory. ``tmp_name`` (beside ``path``) replaces the random temporary
    name, for an owner that removes a crash's leftover by name; whatever is
    there is unlinked first. Raises OSError; the temporary file is removed on
    failure.
    """
    name = os.fspath(path)
    parent, base = os.path.split(name)
    tmp = os.path.join(parent, tmp_name or f".{base}.{secrets.token_hex(8)}.tmp")
    if tmp_name is not None:
        try:
            os.unlink(tmp, dir_fd=dir_fd)  # a crash's leftover (the name only)
        except FileNotFoundError:
            pass
    fd = os.open(tmp, _CREATE, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if sync_dir:
        if dir_fd is not None:
            os.fsync(dir_fd)
        else:
            dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
