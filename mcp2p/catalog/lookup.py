"""Look-ups in the index: name patterns and content id prefixes, bounded whatever its size.

Pure (no I/O): the catalog builds one ``_LookupIndex`` per change of its
entries, on the reactor thread, and asks it.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re

from mcp2p.catalog.hashing import CatalogEntry
from mcp2p.wire.query import prefix_matches


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

    def match(self, pattern: str, limit: int, scan: int) -> list[CatalogEntry]:
        """Entries whose name matches a shell pattern, case-insensitively (``Catalog.match``)."""
        regex = _compile(pattern)
        m = _LITERAL.match(pattern)
        literal = m.group().lower() if m else ""
        if not literal.isascii():
            literal = ""  # case folding beyond ASCII: no safe prefix, bounded scan
        names, by_name = self.names, self.by_name
        if not literal:
            # No literal prefix: a literal suffix ("*.iso") bisects the reversed names.
            m = _LITERAL.match(pattern[::-1])
            suffix = m.group().lower() if m else ""
            if suffix and suffix.isascii():
                literal, names, by_name = suffix, self.rnames, self.by_rname
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
        if names is self.rnames:
            found.sort(key=lambda e: e.name.lower())
        return found

    def match_prefix(self, prefix: str, limit: int) -> list[CatalogEntry]:
        """Entries whose content id starts with ``prefix`` (``Catalog.match_prefix``)."""
        whole = bytes.fromhex(prefix[: len(prefix) // 2 * 2])
        found: list[CatalogEntry] = []
        for i in range(bisect.bisect_left(self.ids, whole), len(self.ids)):
            if not self.ids[i].startswith(whole):
                break
            if not prefix_matches(prefix, self.ids[i]):
                continue
            if not found or found[-1].content_id != self.ids[i]:
                found.append(self.by_id[i])
            if len(found) >= limit:
                break
        return found
