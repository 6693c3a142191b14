"""Benchmark the catalog: hashing speed of one big file, memory for many files.

    python -m mcp2p.lab.bench_catalog --size 1GiB --dir /tmp/mcp2p-bench
    python -m mcp2p.lab.bench_catalog --files 10000 --dir /tmp/mcp2p-bench

``--size`` makes (or reuses) a file of random bytes and hashes it with
``hash_file`` twice: once after asking the kernel to drop it from the page
cache (a cold read, best effort) and once warm. ``--files`` makes (or
reuses) N small files, runs a ``Catalog`` scan in a reactor, and prints the
process RSS before and after, then the time of a second scan from the
stored hashes (a restart). ``--clean`` removes what was made. ``--json``
writes the numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp2p.catalog import RACY_WINDOW_NS, STORE_NAME, Catalog, hash_file
from mcp2p.lab.bench import parse_size, write_json
from mcp2p.lab.procstat import memory_kib


def rss_kib() -> int:
    """This process's resident set size (VmRSS), in KiB."""
    return memory_kib()["VmRSS"]


def make_big_file(path: Path, size: int) -> bool:
    """Write ``size`` random bytes to ``path`` unless it already has that size."""
    if path.exists() and path.stat().st_size == size:
        return False
    chunk = 4 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return True


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_size(directory: Path, size: int, piece_length: int, clean: bool) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{size}.bin"
    made = make_big_file(path, size)
    results: dict[str, Any] = {"size": size, "piece_length": piece_length, "made": made}
    for label in ("cold", "warm"):
        if label == "cold":
            drop_cache(path)
        t0 = time.perf_counter()
        content_id, leaves, _ = hash_file(path, piece_length)
        seconds = time.perf_counter() - t0
        results[label] = {
            "seconds": round(seconds, 4),
            "MB_per_s": round(size / seconds / 1e6, 1),
            "pieces": len(leaves),
        }
        print(
            f"hash_file {label:>4}: {size / 2**20:.0f} MiB in {seconds:.3f} s = "
            f"{size / seconds / 1e6:.0f} MB/s ({len(leaves)} pieces, "
            f"content id {content_id.hex()[:16]}...)"
        )
    if clean:
        path.unlink()
    return results


def make_small_files(root: Path, count: int) -> int:
    """``count`` files of 1-4 KiB, 1000 to a directory; returns how many were made."""
    made = 0
    for i in range(count):
        sub = root / f"d{i // 1000:03d}"
        path = sub / f"file-{i:06d}.dat"
        if path.exists():
            continue
        sub.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024 + (i * 7919) % 3072))
        made += 1
    if made:
        # A file changed within RACY_WINDOW_NS of its hash is hashed again
        # next scan, not stored: let the new files settle first.
        time.sleep(RACY_WINDOW_NS / 1e9 + 0.1)
    return made


def begin_logging() -> None:
    """Warnings to stderr. Until logging begins, Twisted buffers every event,
    and an event from a ``Logger`` attribute keeps its object alive: a
    measure of memory without this measures the buffer."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def bench_files(directory: Path, count: int, piece_length: int, clean: bool) -> dict[str, Any]:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    begin_logging()

    directory.mkdir(parents=True, exist_ok=True)
    share = directory / f"files-{count}"
    state = Path(tempfile.mkdtemp(prefix="state-", dir=directory))
    t0 = time.perf_counter()
    made = make_small_files(share, count)
    print(f"made {made} files ({count} wanted) in {time.perf_counter() - t0:.1f} s")
    results: dict[str, Any] = {"files": count}

    async def run() -> None:
        reactor.getThreadPool()  # start the pool before the first measure
        results["rss_before_kib"] = rss_kib()
        first = Catalog(reactor, state, [share], piece_length, 3600.0)
        t = time.perf_counter()
        await first.start()
        results["first_scan_s"] = round(time.perf_counter() - t, 3)
        results["indexed"] = len(first)
        results["rss_after_kib"] = rss_kib()
        await first.stop()
        del first  # a restart: the first catalog's memory is gone
        gc.collect()
        second = Catalog(reactor, state, [share], piece_length, 3600.0)
        t = time.perf_counter()
        await second.start()
        results["restart_scan_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        await second.rescan()
        results["rescan_s"] = round(time.perf_counter() - t, 3)
        results["rss_after_restart_kib"] = rss_kib()
        await second.stop()

    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    done: list[Any] = []

    def main() -> None:
        d = Deferred.fromCoroutine(run())
        d.addBoth(done.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    if done and isinstance(done[0], Failure):
        done[0].raiseException()
    store_bytes = sum(p.stat().st_size for p in state.glob(STORE_NAME + "*"))
    results["store_bytes"] = store_bytes
    before, after = results["rss_before_kib"], results["rss_after_kib"]
    print(
        f"catalog of {results['indexed']} files: first scan {results['first_scan_s']} s, "
        f"restart scan {results['restart_scan_s']} s, rescan {results['rescan_s']} s"
    )
    print(
        f"RSS before {before / 1024:.1f} MiB, after first scan {after / 1024:.1f} MiB "
        f"(+{(after - before) / 1024:.1f} MiB, {(after - before) * 1024 / count:.0f} B/file), "
        f"after restart {results['rss_after_restart_kib'] / 1024:.1f} MiB; "
        f"store {store_bytes / 2**20:.1f} MiB"
    )
    shutil.rmtree(state)
    if clean:
        shutil.rmtree(share)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where to put the test files")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--size", type=parse_size, help="hash one file of this size (1GiB)")
    group.add_argument("--files", type=int, help="scan this many small files")
    parser.add_argument("--piece-length", type=parse_size, default=1 << 20)
    parser.add_argument("--clean", action="store_true", help="remove the files made")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.size is not None:
        results = bench_size(args.dir, args.size, args.piece_length, args.clean)
    else:
        results = bench_files(args.dir, args.files, args.piece_length, args.clean)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
