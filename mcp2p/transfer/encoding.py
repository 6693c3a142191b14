"""Worker processes that make RaptorQ repair symbols off the SN's reactor.

The raptorq package holds the GIL while it encodes a piece (12-20 ms a MiB,
several times that on a busy host), so a thread would stall the reactor as
much as encoding in it does: a session that stops sending for 50 ms empties
its link's queue, and the link idles. ``EncodeWorkers`` runs ``[serving]
encode_workers`` processes of `mcp2p.transfer.encodeworker` (started when
first needed) and names each a piece of a file, which it reads itself; the
session puts the symbols that come back into its encoder's cache
(`Session._prefetch`).

Nothing depends on a worker: ``submit`` returns None when none can take the
job (all busy, or disabled), a job fails when its worker dies or answers
what was not asked, and the session then encodes in its own process as
before. A worker that ends unexpectedly is replaced at the next job, at
most MAX_RESTARTS times; after that the pool stays disabled (logged once).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import OrderedDict
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from mcp2p.transfer.encodeworker import MAX_PIECE, REPLY, REQUEST

_log = Logger()

MAX_JOBS = 4  # jobs queued at one worker at most (each reply a piece's K/4 symbols)
MAX_RESTARTS = 3  # workers started again after an unexpected end, then none
STOP_TIMEOUT = 5.0  # seconds a worker may take to end after its stdin closed
MAX_STDERR = 4000  # characters of a worker's stderr kept for the log
F_SETPIPE_SZ = 1031  # Linux fcntl
PIPE_SIZE = 1 << 20  # a reply of K/4 symbols of a 1 MiB piece is 256 KiB


class EncodeFailed(Exception):
    """A job came back failed, or its worker ended or answered wrongly."""


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: EncodeWorkers) -> None:
        self.pool = pool
        self.buf = bytearray()
        # job id -> (its Deferred, the reply's length when it succeeds)
        self.pending: OrderedDict[int, tuple[defer.Deferred[bytes], int]] = OrderedDict()
        self.stderr = ""
        self.ended = False
        self.stopping = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def submit(self, job: int, request: bytes, expect: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.pending[job] = (d, expect)
        assert self.transport is not None
        self.transport.write(request)
        return d

    def outReceived(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= REPLY.size:
            job, ok, n = REPLY.unpack_from(buf)
            waiting = self.pending.get(job)
            # Replies come in order, each as long as asked (or a short failure):
            # anything else is a broken worker, not a result to use.
            if waiting is None or job != next(iter(self.pending)) or n > max(waiting[1], 1000):
                self._broken(f"reply to job {job} of {n} bytes was not asked for")
                return
            if len(buf) < REPLY.size + n:
                return
            payload = bytes(buf[REPLY.size : REPLY.size + n])
            del buf[: REPLY.size + n]
            del self.pending[job]
            d, expect = waiting
            if ok == 1 and n == expect:
                d.callback(payload)
            else:
                d.errback(EncodeFailed(payload[:1000].decode("utf-8", "replace") or "failed"))

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data.decode("utf-8", "replace"))[-MAX_STDERR:]

    def _broken(self, why: str) -> None:
        _log.warn("encode worker: {why}; stopping it", why=why)
        self.buf.clear()
        try:
            assert self.transport is not None
            self.transport.signalProcess("KILL")
        except (error.ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        pending, self.pending = self.pending, OrderedDict()
        self.pool._ended(self, reason, pending_jobs=len(pending))  # before a job's errback acts
        for d, _ in pending.values():
            d.errback(EncodeFailed("the encode worker ended"))
        self.done.callback(None)


class EncodeWorkers:
    """Up to ``workers`` encode processes; ``submit`` hands one a piece."""

    def __init__(
        self,
        reactor: Any,
        workers: int = 1,
        max_jobs: int = MAX_JOBS,
        argv: list[str] | None = None,
    ) -> None:
        if workers < 0 or max_jobs < 1:
            raise ValueError("workers >= 0 and max_jobs >= 1 are needed")
        self.reactor = reactor
        self.size = workers
        self.max_jobs = max_jobs
        self.argv = argv or [sys.executable, "-m", "mcp2p.transfer.encodeworker"]
        self.workers: list[_Worker] = []
        self.restarts = 0
        self.disabled = workers == 0
        self.stopped = False
        self._ids = itertools.count(1)
        self.counters = {"jobs": 0, "busy": 0, "failed": 0, "started": 0}

    def submit(
        self,
        k: int,
        symbol_size: int,
        first: int,
        stop: int,
        offset: int,
        length: int,
        path: str,
        dev: int,
        ino: int,
    ) -> defer.Deferred[bytes] | None:
        """Repair symbols ``first`` .. ``stop - 1`` of the piece of K source
        symbols at ``offset``, ``length`` bytes, of the file at ``path`` (inode
        ``dev``, ``ino``: the worker checks it reads the file the session has
        open), joined (`encodeworker.repair_batch`), from a worker; None if no
        worker can take the job now (the caller encodes as it would have)."""
        raw = path.encode("utf-8", "surrogateescape")
        if length > MAX_PIECE or not 0 <= first < stop or symbol_size <= 0 or len(raw) > 0xFFFF:
            raise ValueError(f"not a job: {length} bytes, symbols {first}..{stop}")
        worker = self._free_worker()
        if worker is None:
            self.counters["busy"] += 1
            return None
        job = next(self._ids) & 0xFFFFFFFF
        header = REQUEST.pack(job, k, symbol_size, first, stop, dev, ino, offset, length, len(raw))
        self.counters["jobs"] += 1
        d = worker.submit(job, header + raw, (stop - first) * symbol_size)

        def failed(f: Any) -> Any:
            self.counters["failed"] += 1
            return f

        d.addErrback(failed)
        return d

    def _free_worker(self) -> _Worker | None:
        """The live worker with the fewest jobs, if it has room; a new one
        while fewer than ``size`` run."""
        if self.disabled or self.stopped:
            return None
        live = [w for w in self.workers if not w.ended and not w.stopping]
        if len(live) < self.size:
            started = self._start()
            if started is not None:
                return started
        free = min(live, key=lambda w: len(w.pending), default=None)
        if free is not None and len(free.pending) < self.max_jobs:
            return free
        return None

    def _start(self) -> _Worker | None:
        worker = _Worker(self)
        try:
            self.reactor.spawnProcess(
                worker, self.argv[0], self.argv, env=dict(os.environ), usePTY=False
            )
        except Exception as e:  # no process support (a test's reactor), no executable, ...
            self._disable(f"cannot start an encode worker: {e}")
            return None
        self.counters["started"] += 1
        self.workers.append(worker)
        _grow_pipe(worker)
        return worker

    def _ended(self, worker: _Worker, reason: Any, pending_jobs: int) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if self.stopped or worker.stopping:
            return
        self.restarts += 1
        why = " ".join(worker.stderr.split())[-300:]
        _log.warn(
            "encode worker ended ({reason}), {jobs} jobs lost{why}",
            reason=reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else reason,
            jobs=pending_jobs,
            why=f": {why}" if why else "",
        )
        if self.restarts > MAX_RESTARTS:
            self._disable(f"encode workers ended {self.restarts} times")

    def _disable(self, why: str) -> None:
        if not self.disabled:
            self.disabled = True
            _log.warn("{why}: sessions encode in the daemon from now on", why=why)

    def stop(self) -> defer.Deferred[Any]:
        """End every worker (EOF on its stdin; KILL after STOP_TIMEOUT)."""
        self.stopped = True
        waits = []
        for worker in list(self.workers):
            if worker.ended:
                continue
            worker.stopping = True
            try:
                assert worker.transport is not None
                worker.transport.closeStdin()
            except (OSError, error.ProcessExitedAlready):
                pass
            kill = self.reactor.callLater(STOP_TIMEOUT, _kill, worker)
            worker.done.addCallback(_cancel, kill)
            waits.append(worker.done)
        return defer.gatherResults(waits, consumeErrors=True)


def _grow_pipe(worker: _Worker) -> None:
    """Make the worker's stdout pipe hold a whole reply (Linux F_SETPIPE_SZ), so
    it writes one without waiting for the reactor to read the first 64 KiB."""
    try:
        import fcntl

        reader = worker.transport.pipes[1]  # type: ignore[union-attr]
        fcntl.fcntl(reader.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, KeyError, OSError):
        pass  # another platform, or over /proc/sys/fs/pipe-max-size: 64 KiB then


def _cancel(result: None, call: Any) -> None:
    if call.active():
        call.cancel()


def _kill(worker: _Worker) -> None:
    try:
        assert worker.transport is not None
        worker.transport.signalProcess("KILL")
    except (error.ProcessExitedAlready, OSError):
        pass
