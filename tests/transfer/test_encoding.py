"""Repair symbols made in worker processes (`mcp2p.transfer.encoding`,
`mcp2p.transfer.encodeworker`): the same symbols as the SN makes itself,
real processes on the real reactor, and every way a worker can fail ending
in a failed job (the session then encodes itself), never a wrong symbol."""

from __future__ import annotations

import io
import os
import random
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mcp2p.core.blockcode import RaptorQCode
from mcp2p.transfer import encoding
from mcp2p.transfer.encodeworker import (
    MAX_PIECE,
    REPLY,
    REQUEST,
    read_piece,
    repair_batch,
    serve,
)
from mcp2p.transfer.encoding import EncodeFailed, EncodeWorkers
from mcp2p.wire.layout import Layout

BLOCK = 1400
PIECE = 64 * BLOCK


def piece_job(piece: int = 1, size: int = 3 * PIECE + 500) -> tuple[RaptorQCode, Layout, bytes]:
    data = random.Random(piece).randbytes(size)
    return RaptorQCode(), Layout(size, PIECE, BLOCK), data


def inline_symbols(code: RaptorQCode, layout: Layout, data: bytes, piece: int, n: int) -> list:
    enc = code.encoder(layout, lambda offset, length: data[offset : offset + length])
    k = code.source_symbols(layout, piece)
    return [enc.symbol(piece, k + i)[2] for i in range(n)]


def shared(tmp_path: Path, data: bytes) -> tuple[str, int, int]:
    """The file a session has open: (path, device, inode)."""
    path = tmp_path / "shared.bin"
    path.write_bytes(data)
    st = os.stat(path)
    return str(path), st.st_dev, st.st_ino


def job_of(code: RaptorQCode, layout: Layout, data: bytes, piece: int) -> tuple:
    job = code.encoder(layout, lambda o, n: data[o : o + n]).job(piece)
    assert job is not None
    return job


def frame(job: int, spec: tuple, file: tuple[str, int, int]) -> bytes:
    k, t, first, stop, offset, length = spec
    raw = file[0].encode()
    return REQUEST.pack(job, k, t, first, stop, file[1], file[2], offset, length, len(raw)) + raw


def replies(out: bytes) -> list[tuple[int, int, bytes]]:
    got = []
    while out:
        job, ok, n = REPLY.unpack_from(out)
        got.append((job, ok, out[REPLY.size : REPLY.size + n]))
        out = out[REPLY.size + n :]
    return got


def test_a_batch_is_the_symbols_the_encoder_makes_itself(tmp_path: Path) -> None:
    code, layout, data = piece_job()
    file = shared(tmp_path, data)
    for piece in (0, layout.pieces - 1):  # a whole piece and the short last one
        k, t, first, stop, offset, length = job_of(code, layout, data, piece)
        made = repair_batch(read_piece(*file, offset, length), t, k, first, stop)
        assert len(made) == stop * t
        want = inline_symbols(code, layout, data, piece, stop)
        assert [made[i * t : (i + 1) * t] for i in range(stop)] == want


def test_the_worker_answers_each_request_in_order_and_ends_at_eof(tmp_path: Path) -> None:
    code, layout, data = piece_job()
    file = shared(tmp_path, data)
    k, t, _, _, offset, length = job_of(code, layout, data, 0)
    stdin = io.BytesIO(
        frame(7, (k, t, 0, 5, offset, length), file) + frame(8, (k, t, 3, 4, offset, length), file)
    )
    stdout = io.BytesIO()
    assert serve(stdin, stdout) == 0
    got = replies(stdout.getvalue())
    assert [(job, ok, len(p)) for job, ok, p in got] == [(7, 1, 5 * t), (8, 1, t)]
    assert got[1][2] == got[0][2][3 * t : 4 * t]


def test_a_job_that_cannot_be_done_is_a_failed_reply_not_an_end(tmp_path: Path) -> None:
    """Bad symbol numbers, a file replaced since the session opened it (another
    inode), one cut short, one gone, a piece over the bound: each fails its
    job, and the next job is answered."""
    code, layout, data = piece_job()
    path, dev, ino = file = shared(tmp_path, data)
    k, t, _, stop, offset, length = job_of(code, layout, data, 1)
    other = tmp_path / "other.bin"
    other.write_bytes(data)
    cases = {
        b"out of range": (frame(1, (k, t, 9, 9, offset, length), file)),
        b"no longer the file": frame(1, (k, t, 0, stop, offset, length), (str(other), dev, ino)),
        b"file changed": frame(1, (k, t, 0, stop, len(data) - 10, length), file),
        b"FileNotFoundError": frame(1, (k, t, 0, stop, offset, length), (path + "x", dev, ino)),
        b"is over": frame(1, (k, t, 0, stop, 0, MAX_PIECE + 1), file),
    }
    for why, bad in cases.items():
        stdout = io.BytesIO()
        assert serve(io.BytesIO(bad + frame(2, (k, t, 0, 1, offset, length), file)), stdout) == 0
        (job, ok, text), (job2, ok2, _) = replies(stdout.getvalue())
        assert (job, ok, job2, ok2) == (1, 0, 2, 1) and why in text, why


@pytest.mark.parametrize(
    "stdin",
    [
        REQUEST.pack(1, 1, BLOCK, 0, 1, 0, 0, 0, 10, 10) + b"short",  # the path ends early
        REQUEST.pack(1, 1, BLOCK, 0, 1, 0, 0, 0, 10, 0)[:7],  # a header cut short
    ],
)
def test_a_broken_frame_ends_the_worker_with_status_2(stdin: bytes) -> None:
    stdout = io.BytesIO()
    assert serve(io.BytesIO(stdin), stdout) == 2
    assert stdout.getvalue() == b""


@pytest_twisted.ensureDeferred
async def test_a_worker_process_makes_the_batch_and_stops_on_eof(tmp_path: Path) -> None:
    code, layout, data = piece_job()
    file = shared(tmp_path, data)
    pool = EncodeWorkers(reactor, 1)
    try:
        spec = job_of(code, layout, data, 1)
        stop = spec[3]
        jobs = [pool.submit(*spec, *file) for _ in range(3)]
        assert all(d is not None for d in jobs)
        made = await defer.gatherResults(jobs)
        want = b"".join(inline_symbols(code, layout, data, 1, stop))
        assert made == [want] * 3
        assert pool.counters["started"] == 1 and pool.counters["jobs"] == 3
    finally:
        await pool.stop()
    assert pool.workers == [] and pool.submit(*spec, *file) is None


@pytest_twisted.ensureDeferred
async def test_a_full_worker_takes_no_more_jobs(tmp_path: Path) -> None:
    code, layout, data = piece_job()
    file = shared(tmp_path, data)
    pool = EncodeWorkers(reactor, 1, max_jobs=2)
    try:
        spec = job_of(code, layout, data, 0)
        taken = [pool.submit(*spec, *file) for _ in range(3)]
        assert taken[2] is None and pool.counters["busy"] == 1
        await defer.gatherResults([d for d in taken if d is not None])
        assert pool.submit(*spec, *file) is not None  # room again
    finally:
        await pool.stop()


FAKE_WORKERS = {
    # answers a job it was not asked (id + 1)
    "stranger": "import sys,struct; h=sys.stdin.buffer.read(48); j=struct.unpack('!I',h[:4])[0];"
    " sys.stdout.buffer.write(struct.pack('!IBI', j + 1, 1, 0)); sys.stdout.flush();"
    " sys.stdin.buffer.read()",
    # answers with fewer bytes than the symbols asked for
    "short": "import sys,struct; h=sys.stdin.buffer.read(48); j=struct.unpack('!I',h[:4])[0];"
    " sys.stdout.buffer.write(struct.pack('!IBI', j, 1, 3) + b'abc'); sys.stdout.flush();"
    " sys.stdin.buffer.read()",
    # dies at once
    "dead": "import sys; sys.exit(3)",
}


@pytest.mark.parametrize("kind", sorted(FAKE_WORKERS))
@pytest_twisted.ensureDeferred
async def test_a_worker_that_answers_wrongly_or_dies_fails_its_job(kind: str) -> None:
    pool = EncodeWorkers(reactor, 1, argv=[sys.executable, "-c", FAKE_WORKERS[kind]])
    try:
        d = pool.submit(1, BLOCK, 0, 2, 0, 100, "/nonexistent", 1, 2)
        assert d is not None
        with pytest.raises(EncodeFailed):
            await d
        assert pool.counters["failed"] == 1
    finally:
        await pool.stop()


@pytest_twisted.ensureDeferred
async def test_workers_that_keep_dying_leave_the_pool_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoding, "MAX_RESTARTS", 1)
    pool = EncodeWorkers(reactor, 1, argv=[sys.executable, "-c", FAKE_WORKERS["dead"]])
    try:
        for _ in range(2):
            d = pool.submit(1, BLOCK, 0, 2, 0, 100, "/nonexistent", 1, 2)
            assert d is not None
            with pytest.raises(EncodeFailed):
                await d
        assert pool.disabled and pool.counters["started"] == 2
        assert pool.submit(1, BLOCK, 0, 2, 0, 100, "/nonexistent", 1, 2) is None
    finally:
        await pool.stop()


def test_a_job_out_of_bounds_is_refused_before_any_process() -> None:
    pool = EncodeWorkers(reactor, 1)
    for args in (
        (1, BLOCK, 0, 1, 0, MAX_PIECE + 1, "/f", 1, 2),
        (1, BLOCK, 3, 3, 0, 10, "/f", 1, 2),
        (1, 0, 0, 1, 0, 10, "/f", 1, 2),
        (1, BLOCK, 0, 1, 0, 10, "/" + "f" * 0x10000, 1, 2),
    ):
        with pytest.raises(ValueError):
            pool.submit(*args)
    assert pool.workers == []
    assert EncodeWorkers(reactor, 0).submit(1, BLOCK, 0, 1, 0, 10, "/f", 1, 2) is None


@pytest_twisted.ensureDeferred
async def test_a_lossy_session_on_the_real_reactor_sends_a_worker_s_repairs(
    tmp_path: Path,
) -> None:
    """A RaptorQ session with a real worker process: after a loss report the
    pieces going out are encoded by the worker, a later loss of one of them
    is repaired with its symbols, and the session encodes nothing itself."""
    from mcp2p.core.wanted import RangeSet
    from mcp2p.plugins import code_by_name
    from mcp2p.transfer.session import Session, Subscriber
    from mcp2p.wire.rtp import decode_packet
    from tests.transfer.fakes import Channel, DataPort

    piece, block = 16 * 1024, 1024
    data = random.Random(9).randbytes(40 * piece)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    port = DataPort()
    pool = EncodeWorkers(reactor, 1)
    session = Session(
        reactor,
        session_id=0x1234,
        layout=Layout(len(data), piece, block),
        code=code_by_name("raptorq"),
        path=str(path),
        destination=("127.0.0.1", 9),
        port=port,  # type: ignore[arg-type]
        rate=2_000_000,
        min_rate=1_000_000,
        max_rate=2_000_000,
        grace=30.0,
        on_end=lambda s: None,
        rng=random.Random(1),
        workers=pool,
    )

    async def wait(seconds: float) -> None:
        await task_deferLater(seconds)

    try:
        sub = Subscriber(1, Channel(), session)
        session.add(sub, RangeSet.full(session.units))
        await wait(0.1)
        session.report_loss(sub, RangeSet([(0, 20)]), 10)  # losses: repairs likely
        deadline = reactor.seconds() + 20
        while session.counters["prefetched"] < 3 and reactor.seconds() < deadline:
            await wait(0.05)
        assert session.counters["prefetched"] >= 3
        k = session.code.source_symbols(session.layout, 0)
        cached = set(session.encoder.cached_pieces)
        sent = [decode_packet(d) for d, _ in port.sent]
        done = {h.piece for h in sent if h.symbol == k - 1} & cached
        target = max(done)
        lost = [h.seq for h in sent if h.piece == target][:3]
        encodes, before = session.encoder.encodes, len(port.sent)
        session.report_loss(sub, RangeSet([(lost[0], lost[-1] + 1)]), 100)
        await wait(0.5)
        repairs = [decode_packet(d) for d, _ in port.sent[before:]]
        mine = [h for h in repairs if h.piece == target]
        assert [h.symbol for h in mine] == list(range(k, k + 3 + 2))
        assert session.encoder.encodes == encodes  # none made in the daemon
        own = session.code.encoder(session.layout, session._read)
        assert [h.payload for h in mine] == [own.symbol(target, h.symbol)[2] for h in mine]
    finally:
        session.end("test over")
        await pool.stop()


def task_deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
