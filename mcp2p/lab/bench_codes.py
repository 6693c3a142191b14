"""Benchmark the block codes: encode and decode speed, RaptorQ decode failures.

    python -m mcp2p.lab.bench_codes
    python -m mcp2p.lab.bench_codes --pieces 64 --trials 1000 --json codes.json

Speeds are of the codes as the sender and the receiver use them (through
``IBlockCode``, symbols of ``--block`` bytes in pieces of ``--piece``
bytes, the file in memory), in MB/s of file content:

- plain: every block once, encoded then decoded;
- raptorq source: the source symbols only (read from the file, joined);
- raptorq repair: K + overhead repair symbols per piece (each piece encoded
  by the package, then decoded from repair symbols alone: the worst case);
- raptorq package: the ``raptorq`` package alone (``Encoder.with_defaults``
  + ``get_encoded_packets(0)``; ``Decoder`` fed K + 2 repair packets).

Failure rates: over ``--trials`` pieces of ``--piece`` bytes (and
``--small-trials`` of 64 KiB), a random K + 2 of the first 4K symbols
(source and repair mixed, as a lossy channel leaves them) are fed one by
one: a piece that needed more than K (K + 1) symbols failed at K (K + 1).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import raptorq

from mcp2p.core.blockcode import PlainCode, RaptorQCode
from mcp2p.lab.bench import write_json
from mcp2p.wire.layout import Layout


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def bench_plain(data: bytes, layout: Layout) -> dict[str, float]:
    code = PlainCode()
    enc = code.encoder(layout, lambda o, n: data[o : o + n])
    t0 = time.perf_counter()
    symbols = [enc.symbol(u, 0) for u in range(code.units(layout))]
    t1 = time.perf_counter()
    dec = code.decoder(layout)
    for s in symbols:
        dec.add(*s)
    t2 = time.perf_counter()
    return {"encode_mbps": _mbps(len(data), t1 - t0), "decode_mbps": _mbps(len(data), t2 - t1)}


def bench_raptorq(data: bytes, layout: Layout) -> dict[str, float]:
    code = RaptorQCode()
    read = lambda o, n: data[o : o + n]  # noqa: E731
    out: dict[str, float] = {}
    # Source symbols: what a lossless channel needs.
    enc = code.encoder(layout, read)
    t0 = time.perf_counter()
    symbols = [
        enc.symbol(p, n)
        for p in range(layout.pieces)
        for n in range(code.source_symbols(layout, p))
    ]
    t1 = time.perf_counter()
    dec = code.decoder(layout)
    done = sum(len(dec.add(*s)) for s in symbols)
    t2 = time.perf_counter()
    assert done == layout.pieces
    out["source_encode_mbps"] = _mbps(len(data), t1 - t0)
    out["source_decode_mbps"] = _mbps(len(data), t2 - t1)
    # Repair symbols only: every piece encoded, every piece solved.
    enc = code.encoder(layout, read)
    t0 = time.perf_counter()
    symbols = []
    for p in range(layout.pieces):
        k = code.source_symbols(layout, p)
        symbols += [enc.symbol(p, n) for n in range(k, k + code.need(layout, p))]
    t1 = time.perf_counter()
    dec = code.decoder(layout)
    done = sum(len(dec.add(*s)) for s in symbols)
    t2 = time.perf_counter()
    assert done == layout.pieces
    out["repair_encode_mbps"] = _mbps(len(data), t1 - t0)
    out["repair_decode_mbps"] = _mbps(len(data), t2 - t1)
    # The package alone, for comparison.
    t = code.symbol_size(layout)
    pieces = [data[o : o + layout.piece_length] for o in range(0, len(data), layout.piece_length)]
    t0 = time.perf_counter()
    for piece in pieces:
        raptorq.Encoder.with_defaults(piece, t).get_encoded_packets(0)
    t1 = time.perf_counter()
    packets = []
    for piece in pieces:
        k = -(-len(piece) // t)
        packets.append(raptorq.Encoder.with_defaults(piece, t).get_encoded_packets(k + 2)[k:])
    t2 = time.perf_counter()
    for piece, repair in zip(pieces, packets, strict=True):
        decoder = raptorq.Decoder.with_defaults(len(piece), t)
        for packet in repair:
            if decoder.decode(packet) is not None:
                break
    t3 = time.perf_counter()
    out["package_encode_mbps"] = _mbps(len(data), t1 - t0)
    out["package_decode_mbps"] = _mbps(len(data), t3 - t2)
    return out


def failure_rates(piece: int, block: int, trials: int, seed: int = 1) -> dict[str, Any]:
    """How often K, K + 1, K + 2 random symbols of a piece do not decode it."""
    rng = random.Random(seed)
    data = rng.randbytes(piece)
    layout = Layout(piece, piece, block)
    code = RaptorQCode(repair_ratio=3)
    enc = code.encoder(layout, lambda o, n: data[o : o + n])
    k = code.source_symbols(layout, 0)
    pool = [enc.symbol(0, n) for n in range(4 * k)]
    needed = {0: 0, 1: 0, 2: 0}
    beyond = 0
    for _ in range(trials):
        dec = code.decoder(layout)
        used = k + 11  # more than K + 10: never decoded
        for n, symbol in enumerate(rng.sample(pool, k + 10), 1):
            writes = dec.add(*symbol)
            if writes:
                assert writes == [(0, data)]
                used = n
                break
        beyond += used > k + 10
        for extra in needed:
            if used > k + extra:
                needed[extra] += 1
    return {
        "piece": piece,
        "K": k,
        "trials": trials,
        "failures": {f"K+{e}": n for e, n in needed.items()} | {"K+10": beyond},
        "rates": {f"K+{e}": n / trials for e, n in needed.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piece", type=int, default=1 << 20, help="piece bytes")
    parser.add_argument("--block", type=int, default=1400, help="symbol bytes")
    parser.add_argument("--pieces", type=int, default=32, help="pieces in the speed test")
    parser.add_argument("--trials", type=int, default=2000, help="decodes of a --piece piece")
    parser.add_argument("--small-trials", type=int, default=40000, help="decodes of 64 KiB")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    size = args.pieces * args.piece - args.block // 2  # a short last piece and block
    data = random.Random(0).randbytes(size)
    layout = Layout(size, args.piece, args.block)
    mib = f"{args.pieces} x {args.piece >> 10} KiB pieces, {args.block}-byte symbols"
    results: dict[str, Any] = {"layout": mib}

    results["plain"] = plain = bench_plain(data, layout)
    print(f"speed, MB/s of file ({mib}):")
    print(
        f"  plain            encode {plain['encode_mbps']:7.0f}  decode {plain['decode_mbps']:7.0f}"
    )
    results["raptorq"] = rq = bench_raptorq(data, layout)
    for name in ("source", "repair", "package"):
        print(
            f"  raptorq {name:8} encode {rq[name + '_encode_mbps']:7.0f}"
            f"  decode {rq[name + '_decode_mbps']:7.0f}"
        )

    print("raptorq decode failures with a random K + e of the first 4K symbols:")
    results["failures"] = []
    for piece, trials in ((args.piece, args.trials), (64 << 10, args.small_trials)):
        t0 = time.perf_counter()
        r = failure_rates(piece, args.block, trials)
        results["failures"].append(r)
        rates = "  ".join(
            f"{e}: {n}/{trials} ({n / trials:.1e})" for e, n in list(r["failures"].items())[:3]
        )
        print(f"  {piece >> 10} KiB (K={r['K']}): {rates}  ({time.perf_counter() - t0:.1f} s)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
