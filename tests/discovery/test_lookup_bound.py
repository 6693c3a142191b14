"""Issue 12: a responder's look-up costs the same whatever the catalog's size."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from mcp2p.catalog import MATCH_LIMIT, MATCH_SCAN, Catalog, CatalogEntry


def catalog_of(n: int, tmp: Path) -> Catalog:
    cat = Catalog(
        reactor=None, state_dir=tmp, share_dirs=[], piece_length=1 << 20, rescan_interval=60
    )
    entries = tuple(
        CatalogEntry(
            content_id=hashlib.sha256(str(i).encode()).digest(),
            path=f"/share/file-{i:06d}.dat",
            name=f"file-{i:06d}.dat",
            size=1000,
            mtime_ns=0,
            inode=i,
            device=1,
            piece_length=1 << 20,
            piece_hashes=(),
        )
        for i in range(n)
    )
    cat._entries = entries  # what a finished scan swaps in
    cat._by_id = {e.content_id: e for e in entries}
    return cat


def _cost(cat: Catalog, pattern: str) -> float:
    cat.match(pattern)  # builds the index once per catalog change
    times = []
    for _ in range(15):
        t = time.perf_counter()
        cat.match(pattern)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def test_lookup_cost_does_not_grow_with_the_catalog(tmp_path: Path) -> None:
    """Pattern look-ups were a scan of every name: "*" took 892 us at 5k entries
    and 7,557 us at 20k (an exact name 709 / 5,800 us). Now MATCH_LIMIT results
    from at most MATCH_SCAN names from the literal prefix's place in a sorted
    index: "*" 83 / 87 us, an exact name 2 / 2 us, "*nothing*" 475 / 490 us."""
    small = catalog_of(5_000, tmp_path / "a")
    large = catalog_of(20_000, tmp_path / "b")
    for pattern in ("*", "*nothing*", "file-0012*"):
        ratio = _cost(large, pattern) / _cost(small, pattern)
        assert ratio < 2.0, (pattern, ratio)
    assert len(large.match("*")) == MATCH_LIMIT
    assert len(large.match("*99*")) < MATCH_SCAN
    # exact names and literal prefixes are found by bisection, wherever they are
    assert [e.name for e in large.match("FILE-019999.DAT")] == ["file-019999.dat"]
    assert len(large.match("file-01999*")) == 10
    cid = large.match("file-017000.dat")[0].content_id
    assert [e.content_id for e in large.match_prefix(cid.hex()[:9])] == [cid]
    assert [e.content_id for e in large.match_prefix(cid.hex()[:10])] == [cid]


def test_a_literal_suffix_is_found_by_bisection_wherever_it_sorts(tmp_path: Path) -> None:
    """``*.iso`` among 20,000 other names: the .iso files sort far past the first
    MATCH_SCAN names, and the reversed-name index still finds every one."""
    cat = catalog_of(20_000, tmp_path)
    extra = tuple(
        CatalogEntry(
            content_id=hashlib.sha256(f"iso{i}".encode()).digest(),
            path=f"/share/zz-{i}.ISO",
            name=f"zz-{i}.ISO",
            size=1000,
            mtime_ns=0,
            inode=100_000 + i,
            device=1,
            piece_length=1 << 20,
            piece_hashes=(),
        )
        for i in range(5)
    )
    cat._entries = cat._entries + extra
    cat._by_id = {e.content_id: e for e in cat._entries}
    assert [e.name for e in cat.match("*.iso")] == [f"zz-{i}.ISO" for i in range(5)]
    assert [e.name for e in cat.match("*-3.iso")] == ["zz-3.ISO"]
    assert len(cat.match("*.dat")) == MATCH_LIMIT
