"""Scan jobs: bring the index up to date with the shares, reusing stored hashes.

``_Scanner`` is one scan's worth of work (walk, reuse, hash, persist), run
as one job in the thread pool; it owns the store and the previous scan's
results between jobs. At most one job runs at a time.

A stored hash is reused while the file's (size, mtime_ns, ctime_ns, inode,
device) and the piece length are unchanged. ctime is in the key although
``CatalogEntry`` does not carry it: it cannot be set from user space, so a
tool that rewrites a file in place and restores its mtime (``cp -p``,
``touch -r``) is still caught. A file whose timestamps are within
``RACY_WINDOW_NS`` of the moment it was hashed could change again within
the same timestamp tick without the key changing (git's "racily clean"
problem), so it is indexed but neither trusted nor stored: the next scan
hashes it again.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger

from mcp2p.catalog.hashing import CatalogEntry, FileChangedError, _stat_key, hash_file
from mcp2p.catalog.inotify import _WatchJob
from mcp2p.catalog.store import CatalogStore
from mcp2p.catalog.walk import _StatKey, inside, share_roots, under, walk
from mcp2p.wire.types import check_name

# Timestamps closer than this to the start of their file's hash are not
# trusted (see the module docstring). 2 s covers coarse clocks (FAT, ext3,
# some NFS servers); Linux local file systems tick every few milliseconds.
RACY_WINDOW_NS = 2_000_000_000

# Hashed entries are written to the store in batches of at most this many
# or this many seconds of hashing, so a crash mid-scan keeps most of the work.
_FLUSH_ENTRIES = 512
_FLUSH_SECONDS = 1.0

_log = Logger()


class ScanCancelled(Exception):
    """The catalog is stopping; the scan in progress gives up."""


def _checker(cancel: threading.Event) -> Callable[[], None]:
    """A call that raises ScanCancelled once ``cancel`` is set (a scan's check point)."""

    def check() -> None:
        if cancel.is_set():
            raise ScanCancelled()

    return check


@dataclass
class _ScanResult:
    cancelled: bool = False
    changed: bool = False
    entries: tuple[CatalogEntry, ...] = ()
    by_id: dict[bytes, CatalogEntry] = field(default_factory=dict)
    hashed: int = 0
    removed: int = 0
    seconds: float = 0.0
    full: bool = True  # a full scan, not an update of some paths


class _Scanner:
    """One job per call to ``scan`` or ``update``, in a worker thread; never two at once.

    Keeps between jobs: the store, each indexed path's entry and ctime
    (``_known``), the paths whose hash is not yet trusted (``_racy``), and
    the paths already warned about, so a bad file is logged once, not on
    every rescan.

    ``scan`` walks every share; ``update`` looks only at the paths and
    directory trees the watcher saw change. Both skip the paths in
    ``writing`` (open for writing, as far as the watcher knows) and, given
    a ``_WatchJob``, watch each directory they walk before listing it.
    """

    def __init__(self, store_path: Path, share_dirs: Iterable[Path], piece_length: int) -> None:
        self.store_path = store_path
        self.share_dirs = [Path(d) for d in share_dirs]
        self.piece_length = piece_length
        self._store: CatalogStore | None = None
        self._known: dict[str, tuple[CatalogEntry, int]] | None = None
        self._racy: set[str] = set()
        self._entries: tuple[CatalogEntry, ...] = ()
        self._warned: set[str] = set()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> tuple[CatalogStore, dict[str, tuple[CatalogEntry, int]]]:
        if self._store is None:
            self.store_path.parent.mkdir(parents=True, exist_ok=True)
            self._store = CatalogStore(self.store_path)
        if self._known is None:
            self._known = {entry.path: (entry, ctime) for entry, ctime in self._store.load()}
        return self._store, self._known

    def _index(
        self,
        path: str,
        key: _StatKey,
        old: tuple[CatalogEntry, int] | None,
        check: Callable[[], None],
        problems: dict[str, tuple[str, str]],
    ) -> tuple[tuple[CatalogEntry, int] | None, bool]:
        """One file's ``(entry, ctime)`` (None if it cannot be had) and whether it was hashed.

        Reuses ``old`` while its stat key and piece length hold and it is
        trusted; adds the path to ``self._racy`` or takes it out.
        """
        if (
            old is not None
            and path not in self._racy
            and old[0].piece_length == self.piece_length
            and (old[0].size, old[0].mtime_ns, old[1], old[0].inode, old[0].device) == key
        ):
            return old, False
        hash_started = time.time_ns()
        try:
            cid, leaves, st = hash_file(path, self.piece_length, check)
        except FileNotFoundError:
            return None, False  # removed since the walk: gone, nothing to say
        except FileChangedError:
            problems[path] = ("info", "changed while being hashed; will retry")
            return None, False
        except OSError as e:
            problems[path] = ("warn", f"cannot read it: {e.strerror or e}")
            return None, False
        entry = CatalogEntry(
            content_id=cid,
            path=path,
            name=os.path.basename(path),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            device=st.st_dev,
            piece_length=self.piece_length,
            piece_hashes=leaves,
        )
        if old is not None and old[0] == entry:
            entry = old[0]  # same object: observers see no change
        if max(st.st_mtime_ns, st.st_ctime_ns) >= hash_started - RACY_WINDOW_NS:
            self._racy.add(path)
        else:
            self._racy.discard(path)
        return (entry, st.st_ctime_ns), True

    def scan(
        self,
        cancel: threading.Event,
        watch: _WatchJob | None = None,
        writing: frozenset[str] = frozenset(),
    ) -> _ScanResult:
        started = time.monotonic()
        check = _checker(cancel)
        store, known = self._open()
        problems: dict[str, tuple[str, str]] = {}  # path -> (log level, reason)
        current: dict[str, tuple[CatalogEntry, int]] = {}
        pending: list[tuple[CatalogEntry, int]] = []
        last_flush = time.monotonic()
        hashed = 0
        try:
            # Files are handled as the walk finds them: no list of every
            # file's stat is built (and left fragmenting the heap).
            for path, key in walk(share_roots(self.share_dirs, problems), check, problems, watch):
                check()
                if path in writing:
                    continue
                row, fresh = self._index(path, key, known.get(path), check, problems)
                if row is None:
                    continue
                current[path] = row
                if fresh:
                    hashed += 1
                    if path not in self._racy:
                        pending.append(row)
                if len(pending) >= _FLUSH_ENTRIES or time.monotonic() - last_flush > _FLUSH_SECONDS:
                    store.put(pending)
                    pending = []
                    last_flush = time.monotonic()
        except ScanCancelled:
            store.put(pending)
            known.update((e.path, (e, c)) for e, c in pending)
            return _ScanResult(cancelled=True)
        store.put(pending)
        removed = known.keys() - current.keys()
        self._racy &= current.keys()
        # Racy rows are dropped too: a stale row must not outlive a restart.
        store.delete(removed | self._racy)
        self._known = current
        self._report(problems, replace=True)
        return self._result(started, hashed, len(removed))

    def update(
        self,
        files: Iterable[str],
        trees: Iterable[str],
        cancel: threading.Event,
        watch: _WatchJob | None = None,
        writing: frozenset[str] = frozenset(),
    ) -> _ScanResult:
        """Bring ``files`` and everything under ``trees`` up to date, nothing else."""
        started = time.monotonic()
        check = _checker(cancel)
        store, known = self._open()
        problems: dict[str, tuple[str, str]] = {}
        roots = self.roots()
        trees = sorted(set(trees))
        # A tree inside another one is walked with it.
        trees = [t for i, t in enumerate(trees) if not any(under(t, u) for u in trees[:i])]
        under = tuple(t + os.sep for t in trees)
        stale = {p for p in known if p in trees or p.startswith(under)}
        found: dict[str, tuple[CatalogEntry, int] | None] = {}
        fresh_paths: set[str] = set()
        try:
            walk_roots = [t for t in trees if inside(t, roots, directory=True)]
            for path, key in walk(walk_roots, check, problems, watch):
                if path not in writing:
                    row, fresh = self._index(path, key, known.get(path), check, problems)
                    found[path] = row
                    if fresh:
                        fresh_paths.add(path)
            for path in set(files) - found.keys():
                check()
                found[path] = None
                if path in writing or not inside(path, roots, directory=False):
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    problems[path] = ("warn", f"cannot stat it: {e.strerror or e}")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    if not stat.S_ISDIR(st.st_mode):
                        reason = "symlink, not followed" if stat.S_ISLNK(st.st_mode) else None
                        problems[path] = ("info", reason or "not a regular file")
                    continue
                try:
                    check_name(os.path.basename(path))
                except ValueError as e:
                    problems[path] = ("warn", f"name rejected: {e}")
                    continue
                row, fresh = self._index(path, _stat_key(st), known.get(path), check, problems)
                found[path] = row
                if fresh:
                    fresh_paths.add(path)
        except ScanCancelled:
            return _ScanResult(cancelled=True, full=False)
        removed = set()
        for path in stale | found.keys():
            row = found.get(path)
            if row is None:
                if known.pop(path, None) is not None:
                    removed.add(path)
                self._racy.discard(path)
            else:
                known[path] = row
        store.put(known[p] for p in fresh_paths - self._racy if p in known)
        store.delete(removed | (self._racy & fresh_paths))
        self._report(problems, replace=False)
        result = self._result(started, len(fresh_paths), len(removed))
        result.full = False
        return result

    def _result(self, started: float, hashed: int, removed: int) -> _ScanResult:
        assert self._known is not None
        current = self._known
        entries = tuple(current[p][0] for p in sorted(current))
        changed = len(entries) != len(self._entries) or any(
            a is not b for a, b in zip(entries, self._entries, strict=True)
        )
        self._entries = entries
        by_id: dict[bytes, CatalogEntry] = {}
        for entry in entries:
            by_id.setdefault(entry.content_id, entry)
        return _ScanResult(
            changed=changed,
            entries=entries,
            by_id=by_id,
            hashed=hashed,
            removed=removed,
            seconds=time.monotonic() - started,
        )

    def roots(self) -> list[str]:
        return share_roots(self.share_dirs, {})

    def _report(self, problems: dict[str, tuple[str, str]], replace: bool) -> None:
        """Log each problem not logged before; a full scan (``replace``) forgets fixed ones."""
        for path in sorted(problems.keys() - self._warned):
            level, reason = problems[path]
            getattr(_log, level)("catalog skipped {path}: {reason}", path=path, reason=reason)
        if replace:
            self._warned = set(problems)
        else:
            self._warned |= problems.keys()
