"""The catalog: which files this node shares, and their content ids.

Three parts, by thread:

- ``hash_file`` and ``CatalogStore`` block (file reads, SQLite); they run
  only in a worker thread.
- ``_Scanner`` is one scan's worth of work (walk, reuse, hash, persist),
  run as one job in the thread pool; it owns the store and the previous
  scan's results between jobs. At most one job runs at a time.
- ``Catalog`` lives on the reactor thread: it schedules scans, swaps in
  each scan's finished index and answers look-ups from memory.

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

import bisect
import ctypes
import ctypes.util
import errno
import fnmatch
import functools
import os
import re
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from mcp2p.interfaces import ICatalog
from mcp2p.wire.merkle import CHUNK, HASH_LEN, merkle_root, piece_count, piece_hashes
from mcp2p.wire.query import prefix_matches
from mcp2p.wire.types import check_name

STORE_NAME = "catalog.sqlite"

# Timestamps closer than this to the start of their file's hash are not
# trusted (see the module docstring). 2 s covers coarse clocks (FAT, ext3,
# some NFS servers); Linux local file systems tick every few milliseconds.
RACY_WINDOW_NS = 2_000_000_000

# Hashed entries are written to the store in batches of at most this many
# or this many seconds of hashing, so a crash mid-scan keeps most of the work.
_FLUSH_ENTRIES = 512
_FLUSH_SECONDS = 1.0

_log = Logger()


class FileChangedError(Exception):
    """The file changed while it was hashed; the next scan tries again."""


class NotRegularFileError(OSError):
    """The path is not a regular file (FIFO, device, socket, directory)."""


class ScanCancelled(Exception):
    """The catalog is stopping; the scan in progress gives up."""


def _checker(cancel: threading.Event) -> Callable[[], None]:
    """A call that raises ScanCancelled once ``cancel`` is set (a scan's check point)."""

    def check() -> None:
        if cancel.is_set():
            raise ScanCancelled()

    return check


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


def _to_sql_int(value: int) -> int:
    """An unsigned 64-bit stat field (inode, device) as SQLite's signed INTEGER."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _from_sql_int(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


class CatalogStore:
    """The catalog's hashes on disk: one SQLite file in the state directory.

    A cache, not a record: losing it costs one rehash, so it runs with
    ``synchronous=NORMAL`` under WAL, and a file that is not a database (or
    is of an unknown schema version) is set aside and started afresh.

    Threads: the connection is made with ``check_same_thread=False`` and
    every use holds ``self._lock``. The ``Catalog`` runs its scans in the
    reactor's shared thread pool, where successive jobs land on whichever
    thread is free, so a connection pinned to one thread would not do; the
    catalog already runs one job at a time, and the lock makes that a
    guarantee for any other caller.
    """

    SCHEMA_VERSION = 1
    _log = Logger()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorcode", None) not in (
                sqlite3.SQLITE_NOTADB,
                sqlite3.SQLITE_CORRUPT,
            ):
                raise
            aside = self.path.with_name(f"{self.path.name}.bad-{time.time_ns()}")
            self._log.warn(
                "catalog store {path} is unreadable ({error}); moved to {aside}, rehashing",
                path=str(self.path),
                error=str(e),
                aside=str(aside),
            )
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-512")  # KiB; the catalog reads it whole, once
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != self.SCHEMA_VERSION:
                if version != 0:
                    self._log.warn(
                        "catalog store {path} has schema version {version}, not {expected};"
                        " rebuilding it",
                        path=str(self.path),
                        version=version,
                        expected=self.SCHEMA_VERSION,
                    )
                with db:
                    db.execute("BEGIN")
                    db.execute("DROP TABLE IF EXISTS files")
                    db.execute(
                        "CREATE TABLE files ("
                        " path TEXT PRIMARY KEY NOT NULL,"
                        " content_id BLOB NOT NULL,"
                        " size INTEGER NOT NULL,"
                        " mtime_ns INTEGER NOT NULL,"
                        " ctime_ns INTEGER NOT NULL,"
                        " inode INTEGER NOT NULL,"
                        " device INTEGER NOT NULL,"
                        " piece_length INTEGER NOT NULL,"
                        " piece_hashes BLOB NOT NULL)"
                    )
                    db.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def load(self) -> list[tuple[CatalogEntry, int]]:
        """Every stored entry with its ctime_ns; rows that do not add up are dropped."""
        out = []
        bad = []
        with self._lock:
            rows = self._db.execute(
                "SELECT path, content_id, size, mtime_ns, ctime_ns, inode, device,"
                " piece_length, piece_hashes FROM files"
            )
            for path, cid, size, mtime, ctime, inode, device, plen, blob in rows:
                entry = self._entry(path, cid, size, mtime, inode, device, plen, blob)
                if entry is None:
                    bad.append(path)
                else:
                    out.append((entry, ctime))
        if bad:
            self.delete(bad)
        return out

    @staticmethod
    def _entry(*row: Any) -> CatalogEntry | None:
        path, cid, size, mtime, inode, device, plen, blob = row
        try:
            if len(cid) != HASH_LEN or len(blob) != HASH_LEN * piece_count(size, plen):
                raise ValueError("hash lengths do not match size and piece length")
            if len(blob) == HASH_LEN:
                if blob != cid:
                    raise ValueError("a one-piece file's root is its leaf")
                hashes: tuple[bytes, ...] = (cid,)  # one object for both, as hash_file gives
            else:
                hashes = tuple(blob[i : i + HASH_LEN] for i in range(0, len(blob), HASH_LEN))
            return CatalogEntry(
                content_id=cid,
                path=path,
                name=os.path.basename(path),
                size=size,
                mtime_ns=mtime,
                inode=_from_sql_int(inode),
                device=_from_sql_int(device),
                piece_length=plen,
                piece_hashes=hashes,
            )
        except (TypeError, ValueError):
            return None

    def put(self, rows: Iterable[tuple[CatalogEntry, int]]) -> None:
        """Insert or replace entries (each with its ctime_ns), in one transaction."""
        values = [
            (
                e.path,
                e.content_id,
                e.size,
                e.mtime_ns,
                ctime,
                _to_sql_int(e.inode),
                _to_sql_int(e.device),
                e.piece_length,
                b"".join(e.piece_hashes),
            )
            for e, ctime in rows
        ]
        if not values:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?)", values)

    def delete(self, paths: Iterable[str]) -> None:
        values = [(p,) for p in paths]
        if not values:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM files WHERE path = ?", values)

    def close(self) -> None:
        with self._lock:
            self._db.close()


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


_StatKey = tuple[int, int, int, int, int]


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
            for path, key in self._walk(self._roots(problems), check, problems, watch):
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
        trees = [t for i, t in enumerate(trees) if not any(_under(t, u) for u in trees[:i])]
        under = tuple(t + os.sep for t in trees)
        stale = {p for p in known if p in trees or p.startswith(under)}
        found: dict[str, tuple[CatalogEntry, int] | None] = {}
        fresh_paths: set[str] = set()
        try:
            walk_roots = [t for t in trees if self._inside(t, roots, directory=True)]
            for path, key in self._walk(walk_roots, check, problems, watch):
                if path not in writing:
                    row, fresh = self._index(path, key, known.get(path), check, problems)
                    found[path] = row
                    if fresh:
                        fresh_paths.add(path)
            for path in set(files) - found.keys():
                check()
                found[path] = None
                if path in writing or not self._inside(path, roots, directory=False):
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
        return self._roots({})

    def _roots(self, problems: dict[str, tuple[str, str]]) -> list[str]:
        """The shares as real paths, each usable one once."""
        roots = []
        for share in self.share_dirs:
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

    @staticmethod
    def _inside(path: str, roots: list[str], directory: bool) -> bool:
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
        return any(where == r or _under(where, r) for r in roots)

    def _walk(
        self,
        roots: list[str],
        check: Callable[[], None],
        problems: dict[str, tuple[str, str]],
        watch: _WatchJob | None,
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
                continue  # a tree gone since its event; _roots reports a share
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
                        found = self._visit(de, stack, seen_dirs, problems)
                        if found is not None:
                            yield found
            except FileNotFoundError:
                pass  # removed since it was found; its parent's event says so
            except OSError as e:
                problems[directory] = ("warn", f"cannot list it: {e.strerror or e}")

    @staticmethod
    def _visit(
        de: os.DirEntry[str],
        stack: list[str],
        seen_dirs: set[tuple[int, int]],
        problems: dict[str, tuple[str, str]],
    ) -> tuple[str, tuple[int, int, int, int, int]] | None:
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

    def _report(self, problems: dict[str, tuple[str, str]], replace: bool) -> None:
        """Log each problem not logged before; a full scan (``replace``) forgets fixed ones."""
        for path in sorted(problems.keys() - self._warned):
            level, reason = problems[path]
            getattr(_log, level)("catalog skipped {path}: {reason}", path=path, reason=reason)
        if replace:
            self._warned = set(problems)
        else:
            self._warned |= problems.keys()


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory + os.sep)


# Watching the shares with inotify(7). Constants are Linux's (as in
# twisted.internet.inotify), defined here so that importing this module
# never needs inotify.
_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_IN_ISDIR = 0x40000000
_DIR_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_DONT_FOLLOW
)
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, length of the name


class _InotifyCalls:
    """inotify(7) through ctypes, with errno.

    Twisted's own ``_inotify`` loads libc without ``use_errno``, so a full
    watch table (ENOSPC) looks like a directory that vanished (ENOENT);
    this one tells them apart. Raises ``OSError`` if inotify is missing.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        for function in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            if not hasattr(libc, function):
                raise OSError(errno.ENOSYS, f"libc has no {function}")
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.inotify_rm_watch.restype = ctypes.c_int
        self._libc = libc

    def _error(self, call: str, path: str | None = None) -> OSError:
        code = ctypes.get_errno()
        return OSError(code, f"{call}: {os.strerror(code)}", path)

    def init(self) -> int:
        fd: int = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise self._error("inotify_init1")
        return fd

    def add(self, fd: int, path: str, mask: int) -> int:
        """Watch a directory; the same directory twice gives the same wd. Any thread."""
        wd: int = self._libc.inotify_add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            raise self._error("inotify_add_watch", path)
        return wd

    def remove(self, fd: int, wd: int) -> None:
        self._libc.inotify_rm_watch(fd, wd)  # EINVAL if the kernel dropped it already


class _WatchJob:
    """The watches one catalog job adds as it walks, in its thread.

    Read back on the reactor thread once the job's Deferred fires. Stops
    at the first error other than a directory gone or unreadable (which
    the walk reports): usually the per-user watch limit.
    """

    def __init__(self, calls: _InotifyCalls, fd: int) -> None:
        self.calls = calls
        self.fd = fd
        self.added: list[tuple[int, str]] = []
        self.error: OSError | None = None

    def __call__(self, directory: str) -> None:
        if self.error is not None:
            return
        try:
            self.added.append((self.calls.add(self.fd, directory, _DIR_MASK), directory))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                self.error = e


@dataclass(slots=True)
class _PathState:
    due: float  # when to look at it, unless it is being written
    first: float  # when it was first seen changed
    writing: bool = False
    dropped: bool = False  # being written, and taken once to leave the index


class _Pending:
    """What the watcher saw change, coalesced per path, until a job takes it.

    Pure bookkeeping on times given by the caller. A file is looked at
    ``SETTLE`` s after its last close or move (or ``MAX_DELAY`` s after its
    first event, if events keep coming); one written to and not closed is
    left alone until it is closed, or quiet for ``WRITE_QUIET`` s (a
    truncate by path never closes); one created but not yet written (a hard
    link; a writer about to start) waits ``CREATE_QUIET`` s. A file being
    written is also taken once at once, so that the job drops what the
    index had for it (its old hash no longer holds). More than
    ``LIMIT`` paths and the lot is dropped for a full rescan (``full``).
    """

    SETTLE = 0.2
    MAX_DELAY = 5.0
    CREATE_QUIET = 2.0
    WRITE_QUIET = 10.0
    LIMIT = 10_000

    def __init__(self) -> None:
        self.paths: dict[str, _PathState] = {}
        self.trees: dict[str, float] = {}
        self.full = False

    def __len__(self) -> int:
        return len(self.paths) + len(self.trees)

    def _state(self, path: str, now: float, due: float) -> _PathState | None:
        st = self.paths.get(path)
        if st is None:
            if self.full:
                return None  # a full rescan comes: it will see this
            if len(self) >= self.LIMIT:
                self.overflow()
                return None
            st = self.paths[path] = _PathState(due=due, first=now)
        return st

    def closed(self, path: str, now: float) -> None:
        """Closed after writing, moved in, or its metadata changed."""
        st = self._state(path, now, now + self.SETTLE)
        if st is not None:
            st.writing = st.dropped = False
            st.due = min(now + self.SETTLE, st.first + self.MAX_DELAY)

    def attributes(self, path: str, now: float) -> None:
        st = self._state(path, now, now + self.SETTLE)
        if st is not None and not st.writing:
            st.due = min(now + self.SETTLE, st.first + self.MAX_DELAY)

    def modified(self, path: str, now: float) -> None:
        st = self._state(path, now, now + self.WRITE_QUIET)
        if st is not None:
            st.writing = True
            st.due = now + self.WRITE_QUIET

    def created(self, path: str, now: float) -> None:
        st = self._state(path, now, now + self.CREATE_QUIET)
        if st is not None and not st.writing:
            st.due = max(st.due, now + self.CREATE_QUIET)

    def removed(self, path: str, now: float) -> None:
        st = self._state(path, now, now)
        if st is not None:
            st.writing = False
            st.due = now

    def tree(self, path: str, now: float) -> None:
        """A directory appeared, went or moved: everything under it is looked at."""
        if self.full:
            return
        if path not in self.trees and len(self) >= self.LIMIT:
            self.overflow()
            return
        self.trees[path] = now + self.SETTLE

    def overflow(self) -> None:
        self.paths.clear()
        self.trees.clear()
        self.full = True

    def writing(self) -> frozenset[str]:
        return frozenset(p for p, st in self.paths.items() if st.writing)

    def next_due(self) -> float | None:
        dues = [st.first if st.writing and not st.dropped else st.due for st in self.paths.values()]
        dues += self.trees.values()
        return min(dues) if dues else None

    def take(self, now: float) -> tuple[list[str], list[str]]:
        """The files and trees due by ``now``, no longer pending, and files to drop.

        A file being written is in the list once (and stays pending): the
        job, told it is being written, drops it from the index.
        """
        files = []
        for p, st in list(self.paths.items()):
            if st.due <= now:
                del self.paths[p]
                files.append(p)
            elif st.writing and not st.dropped:
                st.dropped = True
                files.append(p)
        trees = [t for t, due in self.trees.items() if due <= now]
        for t in trees:
            del self.trees[t]
        return files, trees


class _ShareWatcher:
    """Turns inotify events on the shares' directories into ``_Pending`` changes.

    Reactor thread. Directories are watched by the catalog's jobs as they
    walk (``_WatchJob``); ``merge`` learns their watch descriptors when a
    job ends. Events for a descriptor not yet learnt, while a job runs, are
    held (at most ``HOLD`` of them) and replayed by ``merge``.

    Built on ``twisted.internet.inotify.INotify`` for the descriptor and its
    reactor plumbing, but reads events itself: Twisted's reader drops queue
    overflows (wd -1), closes the whole inotify descriptor when any watched
    directory is deleted, and maps watches by path, which a renamed
    directory makes wrong.
    """

    HOLD = 4096

    def __init__(
        self, reactor: Any, pending: _Pending, roots: Callable[[], list[str]], changed: Any
    ) -> None:
        from twisted.internet.inotify import INotify

        calls = _InotifyCalls()
        watcher = self

        class Reader(INotify):
            _inotify = calls  # type: ignore[assignment]  # __init__ calls _inotify.init()

            def _doRead(self, data: bytes) -> None:
                buf = self._buffer + data
                events = []
                offset = 0
                while len(buf) - offset >= _EVENT.size:
                    wd, mask, _cookie, size = _EVENT.unpack_from(buf, offset)
                    end = offset + _EVENT.size + size
                    if end > len(buf):
                        break
                    events.append((wd, mask, buf[offset + _EVENT.size : end].rstrip(b"\0")))
                    offset = end
                self._buffer = buf[offset:]
                watcher.events(events)

        self.calls = calls
        self._reader = Reader(reactor)
        self._reactor = reactor
        self._pending = pending
        self._roots = roots
        self._changed = changed  # called after events added something to pending
        self._paths: dict[int, str] = {}  # wd -> directory
        self._held: list[tuple[int, int, bytes]] = []
        self._dropped: set[int] = set()  # removed by us; their last events still come
        self.busy = False  # a job that may add watches is running

    @property
    def fd(self) -> int:
        return int(self._reader.fileno())

    def start(self) -> None:
        self._reader.startReading()

    def pause(self) -> None:
        self._reader.stopReading()

    def close(self) -> None:
        self._reader.stopReading()
        fd, self._reader._fd = self._reader._fd, -1
        if fd >= 0:
            os.close(fd)
        self._paths.clear()
        self._held.clear()

    def job(self) -> _WatchJob:
        return _WatchJob(self.calls, self.fd)

    def __len__(self) -> int:
        return len(self._paths)

    def merge(self, added: list[tuple[int, str]]) -> None:
        for wd, path in added:
            self._paths[wd] = path
            self._dropped.discard(wd)
        held, self._held = self._held, []
        if held:
            self.events(held)

    def events(self, events: list[tuple[int, int, bytes]]) -> None:
        now = self._reactor.seconds()
        pending = self._pending
        for wd, mask, name in events:
            if mask & _IN_Q_OVERFLOW:
                pending.overflow()
                continue
            directory = self._paths.get(wd)
            if mask & _IN_IGNORED:
                self._paths.pop(wd, None)
                self._dropped.discard(wd)
                continue
            if directory is None:
                if self.busy and wd not in self._dropped:
                    if len(self._held) < self.HOLD:
                        self._held.append((wd, mask, name))
                    else:
                        pending.overflow()
                continue
            if not name:  # the watched directory itself
                if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                    self._unwatch(directory)
                    if directory in self._roots():
                        pending.tree(directory, now)
                continue
            try:
                path = os.path.join(directory, name.decode("utf-8"))
            except UnicodeDecodeError:
                continue  # not UTF-8: never indexed (the scan says why)
            if mask & _IN_ISDIR:
                if mask & _IN_MOVED_FROM:
                    self._unwatch(path)
                if mask & (_IN_CREATE | _IN_MOVED_TO | _IN_MOVED_FROM | _IN_DELETE):
                    pending.tree(path, now)
            elif mask & (_IN_DELETE | _IN_MOVED_FROM):
                pending.removed(path, now)
            elif mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO):
                pending.closed(path, now)
            elif mask & _IN_MODIFY:
                pending.modified(path, now)
            elif mask & _IN_ATTRIB:
                pending.attributes(path, now)
            elif mask & _IN_CREATE:
                pending.created(path, now)
        self._changed()

    def _unwatch(self, directory: str) -> None:
        """Stop watching a directory that left (its watch would report old paths)."""
        for wd, path in list(self._paths.items()):
            if path == directory or _under(path, directory):
                del self._paths[wd]
                self._dropped.add(wd)
                self.calls.remove(self.fd, wd)


@functools.lru_cache(maxsize=128)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


# What one look-up may cost, whatever the catalog's size (issue 12): a query
# answers with at most a few hundred files, and a pattern examines at most
# MATCH_SCAN names from where its literal prefix starts in the sorted index.
MATCH_LIMIT = 256
MATCH_SCAN = 1024
_LITERAL = re.compile(r"[^*?\[]*")


class _LookupIndex:
    """Names and content ids sorted once per catalog change, for bisecting."""

    def __init__(self, entries: tuple[CatalogEntry, ...]) -> None:
        self.entries = entries
        by_name = sorted(entries, key=lambda e: e.name.lower())
        self.names = [e.name.lower() for e in by_name]
        self.by_name = by_name
        by_id = sorted(entries, key=lambda e: e.content_id)
        self.ids = [e.content_id for e in by_id]
        self.by_id = by_id
        # Names reversed, for patterns whose literal part is a suffix ("*.iso").
        by_rname = sorted(entries, key=lambda e: e.name.lower()[::-1])
        self.rnames = [e.name.lower()[::-1] for e in by_rname]
        self.by_rname = by_rname


@implementer(ICatalog)
class Catalog:
    """The shared files, indexed in memory on the reactor thread.

    ``start()`` runs the first scan and fires when it completes; then a scan
    runs ``rescan_interval`` seconds after the previous one ends, so scans
    never overlap. Scans run in ``threadpool`` (the reactor's by default);
    the reactor thread only swaps in each finished index, so look-ups never
    block and always see one whole scan.

    With ``watch``, the shares' directories are also watched with inotify
    (Linux): a file closed after writing, moved in, changed or removed is
    indexed (or dropped) a fraction of a second after it settles, by a job
    that looks at those paths only (``_Pending`` says when). A file open
    for writing is not indexed until it is closed. Where inotify is
    missing, or the watch limit is hit, this is logged once and the
    periodic rescan is all there is; it stays the safety net in any case.
    Jobs, scans and updates alike, run one at a time.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        state_dir: Path,
        share_dirs: list[Path],
        piece_length: int,
        rescan_interval: float,
        threadpool: Any = None,
        watch: bool = False,
    ) -> None:
        if piece_length < 1:
            raise ValueError(f"piece_length must be >= 1, got {piece_length}")
        if rescan_interval <= 0:
            raise ValueError(f"rescan_interval must be > 0, got {rescan_interval}")
        self._reactor = reactor
        self._threadpool = threadpool
        self.piece_length = piece_length
        self.rescan_interval = rescan_interval
        self._scanner = _Scanner(Path(state_dir) / STORE_NAME, share_dirs, piece_length)
        self._entries: tuple[CatalogEntry, ...] = ()
        self._by_id: dict[bytes, CatalogEntry] = {}
        self._lookup_index: _LookupIndex | None = None
        self._observers: list[Callable[[list[CatalogEntry]], object]] = []
        self._running = False
        self._cancel = threading.Event()
        self._scanning: Deferred[Any] | None = None
        self._delayed: Any = None
        self._this_scan: list[Deferred[None]] = []  # fire when the running scan ends
        self._next_scan: list[Deferred[None]] = []  # fire when the next scan ends
        self._idle: list[Deferred[None]] = []  # fire when no scan runs (stop)
        self._watch = watch
        self._watcher: _ShareWatcher | None = None
        self._pending = _Pending()
        self._job: _WatchJob | None = None  # watches the running job adds
        self._full = False  # the running job is a full scan
        self._kick_call: Any = None

    # Look-ups (reactor thread)

    def get(self, content_id: bytes) -> CatalogEntry | None:
        return self._by_id.get(content_id)

    def _index(self) -> _LookupIndex:
        index = self._lookup_index
        if index is None or index.entries is not self._entries:
            index = self._lookup_index = _LookupIndex(self._entries)
        return index

    def match(
        self, pattern: str, limit: int = MATCH_LIMIT, scan: int = MATCH_SCAN
    ) -> list[CatalogEntry]:
        """Entries whose name matches a shell pattern, case-insensitively, by name.

        Bounded whatever the catalog's size: at most ``limit`` entries, found
        among at most ``scan`` names from where the pattern's literal prefix
        starts in the sorted names, or its literal suffix in the sorted reversed
        names (an exact name, ``ubuntu*`` and ``*.iso`` are found by bisection;
        ``*x*`` looks at the first ``scan`` names only).
        """
        regex = _compile(pattern)
        index = self._index()
        m = _LITERAL.match(pattern)
        literal = m.group().lower() if m else ""
        if not literal.isascii():
            literal = ""  # case folding beyond ASCII: no safe prefix, bounded scan
        names, by_name = index.names, index.by_name
        if not literal:
            # No literal prefix: a literal suffix ("*.iso") bisects the reversed names.
            m = _LITERAL.match(pattern[::-1])
            suffix = m.group().lower() if m else ""
            if suffix and suffix.isascii():
                literal, names, by_name = suffix, index.rnames, index.by_rname
        start = bisect.bisect_left(names, literal)
        found = []
        for i in range(start, min(len(names), start + scan)):
            if not names[i].startswith(literal):
                break
            entry = by_name[i]
            if regex.match(entry.name):
                found.append(entry)
                if len(found) >= limit:
                    break
        if names is index.rnames:
            found.sort(key=lambda e: e.name.lower())
        return found

    def match_prefix(self, prefix: str, limit: int = MATCH_LIMIT) -> list[CatalogEntry]:
        """Entries whose content id starts with the lowercase hex digits ``prefix``
        (at most ``limit``, found by bisection)."""
        index = self._index()
        whole = bytes.fromhex(prefix[: len(prefix) // 2 * 2])
        found: list[CatalogEntry] = []
        for i in range(bisect.bisect_left(index.ids, whole), len(index.ids)):
            if not index.ids[i].startswith(whole):
                break
            if not prefix_matches(prefix, index.ids[i]):
                continue
            if not found or found[-1].content_id != index.ids[i]:
                found.append(index.by_id[i])
            if len(found) >= limit:
                break
        return found

    def entries(self) -> list[CatalogEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def subscribe(self, callback: Callable[[list[CatalogEntry]], object]) -> None:
        """Call ``callback(entries)`` after each scan that changed the index."""
        self._observers.append(callback)

    def unsubscribe(self, callback: Callable[[list[CatalogEntry]], object]) -> None:
        if callback in self._observers:
            self._observers.remove(callback)

    # Lifecycle

    def start(self) -> Deferred[None]:
        """Run the first scan; the Deferred fires when it completes.

        If it fails the Deferred errbacks and the catalog still rescans every
        ``rescan_interval`` (the state directory may become usable): call
        ``stop()`` in any case.
        """
        if self._running:
            raise RuntimeError("catalog already started")
        self._running = True
        self._cancel.clear()
        if self._watch:
            self._start_watching()
        d: Deferred[None] = Deferred()
        self._next_scan.append(d)
        self._begin()
        return d

    def rescan(self) -> Deferred[None]:
        """Scan now (or right after the scan in progress); fires when that scan completes."""
        if not self._running:
            raise RuntimeError("catalog is not running")
        d: Deferred[None] = Deferred()
        self._next_scan.append(d)
        if self._scanning is None:
            self._begin()
        return d

    @property
    def watching(self) -> bool:
        """Whether changes are picked up as they happen (else only by the rescan)."""
        return self._watcher is not None

    def stop(self) -> Deferred[None]:
        """Stop rescanning, abort a scan in progress, close the store.

        Fires once no catalog work is left in any thread and no call is
        scheduled.
        """
        self._running = False
        for call in (self._delayed, self._kick_call):
            if call is not None and call.active():
                call.cancel()
        self._delayed = self._kick_call = None
        self._cancel.set()
        waiters, self._next_scan = self._next_scan, []
        for w in waiters:
            w.callback(None)
        if self._scanning is not None:
            d: Deferred[None] = Deferred()
            self._idle.append(d)
        else:
            d = succeed(None)
        watcher, self._watcher = self._watcher, None
        self._pending = _Pending()
        if watcher is not None:
            watcher.pause()
            d.addCallback(lambda _: watcher.close())
        d.addCallback(lambda _: deferToThreadPool(self._reactor, self._pool(), self._scanner.close))
        return d

    def _start_watching(self) -> None:
        try:
            self._watcher = _ShareWatcher(
                self._reactor, self._pending, self._scanner.roots, self._changed
            )
        except (ImportError, OSError) as e:
            self._log.warn(
                "cannot watch the shared directories ({error}): new and changed files"
                " are found by the rescan every {interval}s",
                error=str(e),
                interval=self.rescan_interval,
            )
            return
        self._watcher.start()

    def _stop_watching(self, error: OSError) -> None:
        """Give up watching (the watch limit, most likely): the rescan carries on alone."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        self._log.warn(
            "cannot watch {path} ({error}); no longer watching the shared directories:"
            " new and changed files are found by the rescan every {interval}s"
            " (raise fs.inotify.max_user_watches to watch {dirs}+ directories)",
            path=error.filename,
            error=error.strerror or str(error),
            interval=self.rescan_interval,
            dirs=len(watcher),
        )
        watcher.close()
        self._pending = _Pending()

    def _changed(self) -> None:
        """The watcher added to ``_pending``: look again within ``SETTLE`` s (now on overflow)."""
        if not self._running:
            return
        if self._pending.full and self._scanning is None:
            self._begin()
        elif self._kick_call is None or not self._kick_call.active():
            self._kick_call = self._reactor.callLater(_Pending.SETTLE, self._kick)
        elif self._kick_call.getTime() > self._reactor.seconds() + _Pending.SETTLE:
            self._kick_call.reset(_Pending.SETTLE)  # was waiting for a writer

    def _pool(self) -> Any:
        return self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()

    def _begin(self) -> None:
        """A full scan, now."""
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self._this_scan, self._next_scan = self._next_scan, []
        # The walk sees every change made before it; only the files being
        # written stay pending (to be skipped, and looked at once closed).
        pending = self._pending
        pending.full = False
        pending.trees.clear()
        for path in [p for p, st in pending.paths.items() if not st.writing]:
            del pending.paths[path]
        self._full = True
        self._run(self._scanner.scan, self._cancel)

    def _update(self, files: list[str], trees: list[str]) -> None:
        """Look at the paths the watcher saw change, now."""
        self._full = False
        self._run(self._scanner.update, files, trees, self._cancel)

    def _run(self, job: Callable[..., _ScanResult], *args: Any) -> None:
        watcher = self._watcher
        self._job = None if watcher is None else watcher.job()
        if watcher is not None:
            watcher.busy = True
        d = deferToThreadPool(
            self._reactor, self._pool(), job, *args, self._job, self._pending.writing()
        )
        self._scanning = d
        d.addCallbacks(self._scanned, self._failed)

    def _periodic(self) -> None:
        self._delayed = None
        if self._scanning is None:
            self._begin()
        else:
            self._pending.full = True  # after the job in progress

    def _kick(self) -> None:
        """Start an update for whatever is due, or come back when something is."""
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        if not self._running or self._scanning is not None:
            return  # _finished kicks again
        if self._pending.full:
            self._begin()
            return
        now = self._reactor.seconds()
        files, trees = self._pending.take(now)
        if files or trees:
            self._update(files, trees)
            return
        due = self._pending.next_due()
        if due is not None:
            self._kick_call = self._reactor.callLater(max(0.0, due - now), self._kick)

    def _scanned(self, result: _ScanResult) -> None:
        if not result.cancelled:
            if result.changed:
                self._entries = result.entries
                self._by_id = result.by_id
                for callback in list(self._observers):
                    try:
                        callback(list(result.entries))
                    except Exception:
                        self._log.failure("catalog observer {callback!r} failed", callback=callback)
            if result.full:
                # A rescan that found nothing new is routine: debug, not a line a minute.
                quiet = not (result.changed or result.hashed or result.removed)
                self._log.emit(
                    LogLevel.debug if quiet else LogLevel.info,
                    "catalog scan done: {files} files, {hashed} hashed, {removed} removed"
                    " in {seconds}s",
                    files=len(result.entries),
                    hashed=result.hashed,
                    removed=result.removed,
                    seconds=round(result.seconds, 3),
                )
            elif result.hashed or result.removed:
                self._log.info(
                    "catalog updated: {files} files, {hashed} hashed, {removed} removed"
                    " in {seconds}s",
                    files=len(result.entries),
                    hashed=result.hashed,
                    removed=result.removed,
                    seconds=round(result.seconds, 3),
                )
        self._finished(None)

    def _failed(self, failure: Any) -> None:
        if not self._this_scan:
            self._log.failure("catalog scan failed", failure)
        self._finished(failure)

    def _finished(self, failure: Any) -> None:
        self._scanning = None
        job, self._job = self._job, None
        watcher = self._watcher
        if watcher is not None and job is not None:
            watcher.busy = False
            watcher.merge(job.added)
            if job.error is not None:
                self._stop_watching(job.error)
        waiters, self._this_scan = self._this_scan, []
        idle, self._idle = self._idle, []
        if self._running:
            if self._next_scan or self._pending.full:
                self._begin()
            else:
                if self._full:
                    self._delayed = self._reactor.callLater(self.rescan_interval, self._periodic)
                self._kick()
        for w in waiters:
            if failure is None:
                w.callback(None)
            else:
                w.errback(failure)
        for w in idle:
            w.callback(None)
