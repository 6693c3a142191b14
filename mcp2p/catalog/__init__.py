"""The catalog: which files this node shares, and their content ids.

Three parts, by thread:

- ``hash_file`` and ``CatalogStore`` block (file reads, SQLite); they run
  only in a worker thread.
- ``_Scanner`` is one scan's worth of work (walk, reuse, hash, persist),
  run as one job in the thread pool; it owns the store and the previous
  scan's results between jobs. At most one job runs at a time.
- ``Catalog`` lives on the reactor thread: it schedules scans, swaps in
  each scan's finished index and answers look-ups from memory.

One module per job: ``hashing`` (one file's content id), ``store`` (the
hashes on disk), ``walk`` (which files the shares hold), ``scanner`` (scan
and update jobs, and when a stored hash is trusted), ``pending`` and
``inotify`` (what the watcher saw change), ``lookup`` (bounded look-ups by
name pattern and id prefix), ``schedule`` (``Catalog``).
"""

from mcp2p.catalog.hashing import (
    CatalogEntry,
    FileChangedError,
    NotRegularFileError,
    hash_file,
)
from mcp2p.catalog.lookup import MATCH_LIMIT, MATCH_SCAN
from mcp2p.catalog.scanner import RACY_WINDOW_NS, ScanCancelled
from mcp2p.catalog.schedule import Catalog
from mcp2p.catalog.store import STORE_NAME, CatalogStore

__all__ = [
    "MATCH_LIMIT",
    "MATCH_SCAN",
    "RACY_WINDOW_NS",
    "STORE_NAME",
    "Catalog",
    "CatalogEntry",
    "CatalogStore",
    "FileChangedError",
    "NotRegularFileError",
    "ScanCancelled",
    "hash_file",
]
