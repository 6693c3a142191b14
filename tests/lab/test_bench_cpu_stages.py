"""bench_cpu's stage split alone (``--stages-only``): no root, no namespaces,
every socket on 127.0.0.1. Performance is measured by the bench, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STAGES = (
    "recv_per_datagram",
    "digest",
    "take_lists",
    "store_write_block",
    "receiver_to_store",
    "store_write_blocks",
    "fetch_plain",
    "raptorq_add_many_0pct",
    "raptorq_add_many_1pct",
    "fetch_raptorq_0pct",
    "fetch_raptorq_1pct",
    "fetch_plain_batch4",
    "fetch_raptorq_0pct_batch4",
)


def test_stages_only_prints_and_writes_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "stages.json"
    cp = subprocess.run(
        [sys.executable, "-m", "mcp2p.lab.bench_cpu", "--stages-only"]
        + ["--stage-pieces", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "µs/pkt" not in cp.stdout  # no daemons, no peers
    stages = json.loads(out.read_text())["stages_us_per_packet"]
    assert stages["packets"] == 2 * -(-(1 << 20) // 1400)
    for key in STAGES:
        assert key in cp.stdout
        assert stages[key] > 0, key


def test_a_lossy_stream_holds_what_was_kept_and_the_repair_the_sn_sends() -> None:
    from mcp2p.core.blockcode import RaptorQCode
    from mcp2p.lab.bench_cpu import _synthetic, lossy_stream
    from mcp2p.wire.layout import Layout

    data, manifest, _, _ = _synthetic(2)
    layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
    code = RaptorQCode()
    stream, dropped = lossy_stream(data, manifest, 0.01, seed=3)
    k = code.source_symbols(layout, 0)
    sources = [s for s in stream if s[1] < k]
    repair = [s for s in stream if s[1] >= k]
    assert dropped > 0 and len(sources) == 2 * k - dropped
    assert len(repair) == dropped + 2 * code.repair_overhead(layout, 0)
    decoder = code.decoder(layout)
    writes = decoder.add_many(stream)
    assert sorted((offset, bytes(piece)) for offset, piece in writes) == [
        (0, data[: 1 << 20]),
        (1 << 20, data[1 << 20 :]),
    ]
