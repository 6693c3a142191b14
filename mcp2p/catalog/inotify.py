"""Watching the shares with inotify(7): the kernel calls, the watches a job adds, the events read.

``_ShareWatcher`` lives on the reactor thread and turns events into
``_Pending`` changes; ``_WatchJob`` adds watches from a scan job's thread
as it walks. Linux only; where inotify is missing, building the watcher
raises ``OSError`` and the catalog relies on its periodic rescan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable
from typing import Any

from mcp2p.catalog.pending import _Pending
from mcp2p.catalog.walk import under

# inotify(7)'s constants are Linux's (as in twisted.internet.inotify),
# defined here so that importing this module never needs inotify.
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
            if path == directory or under(path, directory):
                del self._paths[wd]
                self._dropped.add(wd)
                self.calls.remove(self.fd, wd)
