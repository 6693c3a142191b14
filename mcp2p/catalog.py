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

import errno
import fnmatch
import functools
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mcp2p.core.merkle import CHUNK, HASH_LEN, merkle_root, piece_count, piece_hashes
from mcp2p.interfaces import ICatalog
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


class _Scanner:
    """One scan per call to ``scan``, in a worker thread; never two at once.

    Keeps between scans: the store, each indexed path's entry and ctime
    (``_known``), the paths whose hash is not yet trusted (``_racy``), and
    the paths already warned about, so a bad file is logged once, not on
    every rescan.
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

    def scan(self, cancel: threading.Event) -> _ScanResult:
        started = time.monotonic()

        def check() -> None:
            if cancel.is_set():
                raise ScanCancelled()

        if self._store is None:
            self.store_path.parent.mkdir(parents=True, exist_ok=True)
            self._store = CatalogStore(self.store_path)
        store = self._store
        if self._known is None:
            self._known = {entry.path: (entry, ctime) for entry, ctime in store.load()}
        known = self._known
        problems: dict[str, tuple[str, str]] = {}  # path -> (log level, reason)
        current: dict[str, tuple[CatalogEntry, int]] = {}
        racy: set[str] = set()
        pending: list[tuple[CatalogEntry, int]] = []
        last_flush = time.monotonic()
        hashed = 0
        try:
            # Files are handled as the walk finds them: no list of every
            # file's stat is built (and left fragmenting the heap).
            for path, key in self._walk(check, problems):
                check()
                old = known.get(path)
                if (
                    old is not None
                    and path not in self._racy
                    and old[0].piece_length == self.piece_length
                    and (old[0].size, old[0].mtime_ns, old[1], old[0].inode, old[0].device) == key
                ):
                    current[path] = old
                    continue
                hash_started = time.time_ns()
                try:
                    cid, leaves, st = hash_file(path, self.piece_length, check)
                except FileNotFoundError:
                    continue  # removed since the walk: gone, nothing to say
                except FileChangedError:
                    problems[path] = ("info", "changed while being hashed; will retry")
                    continue
                except OSError as e:
                    problems[path] = ("warn", f"cannot read it: {e.strerror or e}")
                    continue
                hashed += 1
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
                current[path] = (entry, st.st_ctime_ns)
                if max(st.st_mtime_ns, st.st_ctime_ns) >= hash_started - RACY_WINDOW_NS:
                    racy.add(path)
                else:
                    pending.append(current[path])
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
        # Racy rows are dropped too: a stale row must not outlive a restart.
        store.delete(removed | racy)
        self._known = current
        self._racy = racy
        self._report(problems)
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
            removed=len(removed),
            seconds=time.monotonic() - started,
        )

    def _walk(
        self, check: Callable[[], None], problems: dict[str, tuple[str, str]]
    ) -> Iterator[tuple[str, tuple[int, int, int, int, int]]]:
        """Regular files under the shares: absolute path and stat key, each once.

        Follows no symlink (a link is followed when it is opened, so no
        check made before can keep it inside the share), descends each
        directory once (bind mounts), and skips names ``check_name``
        rejects and paths SQLite cannot hold (not UTF-8).
        """
        seen_dirs: set[tuple[int, int]] = set()
        stack = []
        for share in self.share_dirs:
            root = os.path.realpath(share)
            try:
                root.encode("utf-8")
                st = os.stat(root)
            except (OSError, UnicodeEncodeError) as e:
                problems[root] = ("warn", f"share directory unusable: {e}")
                continue
            if (st.st_dev, st.st_ino) not in seen_dirs:
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append(root)
        while stack:
            check()
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    for de in it:
                        found = self._visit(de, stack, seen_dirs, problems)
                        if found is not None:
                            yield found
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

    def _report(self, problems: dict[str, tuple[str, str]]) -> None:
        for path in sorted(problems.keys() - self._warned):
            level, reason = problems[path]
            getattr(_log, level)("catalog skipped {path}: {reason}", path=path, reason=reason)
        self._warned = set(problems)


@functools.lru_cache(maxsize=128)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


@implementer(ICatalog)
class Catalog:
    """The shared files, indexed in memory on the reactor thread.

    ``start()`` runs the first scan and fires when it completes; then a scan
    runs ``rescan_interval`` seconds after the previous one ends, so scans
    never overlap. Scans run in ``threadpool`` (the reactor's by default);
    the reactor thread only swaps in each finished index, so look-ups never
    block and always see one whole scan.
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
        self._observers: list[Callable[[list[CatalogEntry]], object]] = []
        self._running = False
        self._cancel = threading.Event()
        self._scanning: Deferred[Any] | None = None
        self._delayed: Any = None
        self._this_scan: list[Deferred[None]] = []  # fire when the running scan ends
        self._next_scan: list[Deferred[None]] = []  # fire when the next scan ends
        self._idle: list[Deferred[None]] = []  # fire when no scan runs (stop)

    # Look-ups (reactor thread)

    def get(self, content_id: bytes) -> CatalogEntry | None:
        return self._by_id.get(content_id)

    def match(self, pattern: str) -> list[CatalogEntry]:
        """Entries whose name matches a shell pattern, case-insensitively, by path."""
        regex = _compile(pattern)
        return [e for e in self._entries if regex.match(e.name)]

    def match_prefix(self, prefix: str) -> list[CatalogEntry]:
        """Entries whose content id starts with the lowercase hex digits ``prefix``."""
        return [e for cid, e in self._by_id.items() if prefix_matches(prefix, cid)]

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

    def stop(self) -> Deferred[None]:
        """Stop rescanning, abort a scan in progress, close the store.

        Fires once no catalog work is left in any thread and no call is
        scheduled.
        """
        self._running = False
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self._cancel.set()
        waiters, self._next_scan = self._next_scan, []
        for w in waiters:
            w.callback(None)
        if self._scanning is not None:
            d: Deferred[None] = Deferred()
            self._idle.append(d)
        else:
            d = succeed(None)
        d.addCallback(lambda _: deferToThreadPool(self._reactor, self._pool(), self._scanner.close))
        return d

    def _pool(self) -> Any:
        return self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()

    def _begin(self) -> None:
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self._this_scan, self._next_scan = self._next_scan, []
        d = deferToThreadPool(self._reactor, self._pool(), self._scanner.scan, self._cancel)
        self._scanning = d
        d.addCallbacks(self._scanned, self._failed)

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
            self._log.info(
                "catalog scan done: {files} files, {hashed} hashed, {removed} removed"
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
        waiters, self._this_scan = self._this_scan, []
        idle, self._idle = self._idle, []
        if self._running:
            if self._next_scan:
                self._begin()
            else:
                self._delayed = self._reactor.callLater(self.rescan_interval, self._begin)
        for w in waiters:
            if failure is None:
                w.callback(None)
            else:
                w.errback(failure)
        for w in idle:
            w.callback(None)
