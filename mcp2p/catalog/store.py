"""The catalog's hashes on disk (``CatalogStore``): one SQLite file in the state directory.

Blocking (SQLite): used from the catalog's worker thread only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from mcp2p.catalog.hashing import CatalogEntry
from mcp2p.wire.merkle import HASH_LEN, piece_count

STORE_NAME = "catalog.sqlite"


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
