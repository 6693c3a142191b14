"""Walking the shares: which regular files they hold, and which paths are skipped and why.

Blocking (directory reads): runs inside a scan job, in a worker thread. A
problem found on the way (a symlink, a FIFO, a rejected name, an unreadable
directory) is recorded in ``problems`` as ``path -> (log level, reason)``
for the scan to log once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mcp2p.catalog.hashing import _stat_key
from mcp2p.wire.types import check_name

_StatKey = tuple[int, int, int, int, int]
Problems = dict[str, tuple[str, str]]


def under(path: str, directory: str) -> bool:
    return path.startswith(directory + os.sep)


def share_roots(share_dirs: Iterable[Path], problems: Problems) -> list[str]:
    """The shares as real paths, each usable one once."""
    roots = []
    for share in share_dirs:
        root = os.path.realpath(share)
        try:
            root.encode("utf-8")
            os.stat(root)
        except (OSError, UnicodeEncodeError) as e:
            problems[root] = ("warn", f"share directory unusable: {e}")
            continue
        if root not in roots:
            roots.append(root)
    return roots


def inside(path: str, roots: list[str], directory: bool) -> bool:
    """Whether ``path`` (a directory, or a file's directory) is a real path in a share.

    The paths the watcher reports were real when their directory was
    watched; a directory since swapped for a symlink must not lead out.
    """
    where = path if directory else os.path.dirname(path)
    try:
        path.encode("utf-8")
        if os.path.realpath(where) != where:
            return False
    except (OSError, UnicodeEncodeError):
        return False
    return any(where == r or under(where, r) for r in roots)


def walk(
    roots: list[str],
    check: Callable[[], None],
    problems: Problems,
    watch: Callable[[str], None] | None,
) -> Iterator[tuple[str, _StatKey]]:
    """Regular files under ``roots``: absolute path and stat key, each once.

    Follows no symlink (a link is followed when it is opened, so no
    check made before can keep it inside the share), descends each
    directory once (bind mounts), and skips names ``check_name``
    rejects and paths SQLite cannot hold (not UTF-8). Each directory
    is watched before it is listed, so nothing made in it after the
    listing goes unseen.
    """
    seen_dirs: set[tuple[int, int]] = set()
    stack = []
    for root in roots:
        try:
            st = os.stat(root, follow_symlinks=False)
        except OSError:
            continue  # a tree gone since its event; share_roots reports a share
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen_dirs:
            seen_dirs.add((st.st_dev, st.st_ino))
            stack.append(root)
    while stack:
        check()
        directory = stack.pop()
        if watch is not None:
            watch(directory)
        try:
            with os.scandir(directory) as it:
                for de in it:
                    found = _visit(de, stack, seen_dirs, problems)
                    if found is not None:
                        yield found
        except FileNotFoundError:
            pass  # removed since it was found; its parent's event says so
        except OSError as e:
            problems[directory] = ("warn", f"cannot list it: {e.strerror or e}")


def _visit(
    de: os.DirEntry[str],
    stack: list[str],
    seen_dirs: set[tuple[int, int]],
    problems: Problems,
) -> tuple[str, _StatKey] | None:
    try:
        if de.is_symlink():
            problems[de.path] = ("info", "symlink, not followed")
        elif de.is_dir(follow_symlinks=False):
            try:
                de.name.encode("utf-8")
            except UnicodeEncodeError:
                problems[de.path] = ("warn", "directory name is not UTF-8")
                return None
            st = de.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) not in seen_dirs:
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append(de.path)
        elif de.is_file(follow_symlinks=False):
            try:
                check_name(de.name)
            except ValueError as e:
                problems[de.path] = ("warn", f"name rejected: {e}")
                return None
            return de.path, _stat_key(de.stat(follow_symlinks=False))
        else:
            problems[de.path] = ("info", "not a regular file")
    except FileNotFoundError:
        pass
    except OSError as e:
        problems[de.path] = ("warn", f"cannot stat it: {e.strerror or e}")
    return None
