"""``Catalog``: the index of shared files on the reactor thread.

It schedules the jobs that keep the index up to date (full scans every
``rescan_interval``, updates of what the watcher saw change), one at a
time in a thread pool, swaps in each job's finished index and answers
look-ups from memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from mcp2p.catalog.hashing import CatalogEntry
from mcp2p.catalog.inotify import _ShareWatcher, _WatchJob
from mcp2p.catalog.lookup import MATCH_LIMIT, MATCH_SCAN, _LookupIndex
from mcp2p.catalog.pending import _Pending
from mcp2p.catalog.scanner import _Scanner, _ScanResult
from mcp2p.catalog.store import STORE_NAME
from mcp2p.interfaces import ICatalog


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
        return self._index().match(pattern, limit, scan)

    def match_prefix(self, prefix: str, limit: int = MATCH_LIMIT) -> list[CatalogEntry]:
        """Entries whose content id starts with the lowercase hex digits ``prefix``
        (at most ``limit``, found by bisection)."""
        return self._index().match_prefix(prefix, limit)

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
