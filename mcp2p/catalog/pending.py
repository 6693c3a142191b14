"""What the watcher saw change, coalesced per path until a catalog job takes it.

Pure bookkeeping on times given by the caller (no I/O, no clock of its own).
"""

from __future__ import annotations

from dataclasses import dataclass


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
