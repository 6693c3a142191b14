"""Supervision of a running fetch: every ``TICK`` the budgets
([fetching] max_unverified, max_in_flight), stalled and silent SNs, wanted
resyncs and a progress event; and failover: the shares of dropped SNs
given to the others, to a new candidate, or to SNs found by a new search."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mcp2p.core import fetchplan
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.fetch.common import FetchError, Source
from mcp2p.transfer.fetch.resolve import Resolution
from mcp2p.transfer.store import StoreError

TICK = 0.5  # seconds between progress events, stall checks and wanted resyncs


class Supervision(Resolution):
    """The layer of ``Fetch`` that watches the sources and the budgets."""

    def _tick(self) -> None:
        try:
            self._supervise()
        except StoreError as e:  # a full disk while flushing: the fetch ends, in one line
            self._fail(FetchError(str(e)))

    def _supervise(self) -> None:
        now = self.reactor.seconds()
        why = self._over_budget()
        if why:
            self._fail(FetchError(why))
            return
        missing = self._missing()
        active = self._active()
        for source in active:
            source.share = source.share.intersection(missing)
        verdicts = fetchplan.supervise(
            now,
            [fetchplan.Watched(bool(s.share), s.last_progress, s.nudged_at) for s in active],
            bool(self.candidates),
            self.config.fetching.stall_timeout,
        )
        for source, verdict in zip(active, verdicts, strict=True):
            if verdict == "stalled":
                self._drop(source, "stalled")
            elif verdict == "nudge":
                source.nudged_at = now
                self._send_wanted(source, source.share, replace=False, nudge=True)
        if fetchplan.failover_due(
            any(s.share for s in self.sources if s.state == "dropped"),
            bool(missing),
            any(s.share for s in self._active()),
        ):
            self._redistribute()
        for source in self._active():
            self._send_wanted(source, source.share, replace=True)
        self.store.flush_due() and self.store.flush_soon()
        self._progress(now)

    def _over_budget(self) -> str:
        """Why the fetch must stop now, or "": too many bytes received without a
        piece verifying ([fetching] max_unverified), or too many held in memory
        in pieces not yet decoded ([fetching] max_in_flight)."""
        received = None  # a block code's pieces are verified before they are written
        if self.per_block:
            counters = self.store.counters
            received = (counters["written"] + counters["duplicates"]) * self.layout.block_length
        return self.budget.over_spent(
            int(getattr(self.decoder, "pending_bytes", 0)),
            received,
            self.store.bytes_verified,
            self.layout.size,
            self.last_drop,
        )

    def _received_bytes(self) -> int:
        """Bytes held: verified pieces, plus blocks written (or symbols pending)
        in pieces not yet complete. Random block order completes pieces late,
        so counting only verified pieces would show no progress for long."""
        layout = self.layout
        if self.per_block:
            missing = sum(b - a for a, b in self.store.missing_block_ranges())
            return max(0, layout.size - missing * layout.block_length)
        return int(self.store.bytes_verified + getattr(self.decoder, "pending_bytes", 0))

    def _progress(self, now: float) -> None:
        done = self._received_bytes()
        self.rate_window.append((now, done))
        self.rate_window = [(t, b) for t, b in self.rate_window if now - t <= 5.0]
        t0, b0 = self.rate_window[0]
        rate = (done - b0) / (now - t0) if now > t0 else 0.0
        total = self.manifest.size  # type: ignore[union-attr]
        self.event(
            "progress",
            bytes=done,
            verified=self.store.bytes_verified,
            total=total,
            rate=rate,
            eta=(total - done) / rate if rate > 0 else None,
            sources=[s.to_json() for s in self.sources],
        )

    def _redistribute(self) -> None:
        """Give the shares of dropped SNs to the active ones, or to new candidates."""
        if self.done.called:
            return
        dropped = [s for s in self.sources if s.state == "dropped" and s.share]
        orphaned = fetchplan.orphaned(
            self._missing(), [s.share for s in dropped], [s.share for s in self._active()]
        )
        for s in dropped:
            s.share = RangeSet()
        active = self._active()
        action = fetchplan.failover(
            orphaned,
            len(active),
            self.candidates[0].server.node_id if self.candidates else None,
            self.searching,
            self.budget,
            self.last_drop,
        )
        if isinstance(action, fetchplan.Deal):
            for s, part in zip(active, action.parts, strict=True):
                s.share.update(part)
                self._send_wanted(s, part, replace=False)
        elif isinstance(action, fetchplan.GiveUp):
            self._fail(FetchError(action.reason))
        elif isinstance(action, fetchplan.SearchAgain):
            self.searching = True
            d = defer.ensureDeferred(self._search_again())
            d.addBoth(self._searched)
        elif isinstance(action, fetchplan.TakeCandidate):
            source = self.candidates.pop(0)
            self.sources.append(source)
            d = defer.ensureDeferred(self._subscribe(source, action.units))

            def failed(f: Any) -> None:
                self._drop(source, f.getErrorMessage())
                self._redistribute()

            d.addErrback(failed)

    async def _search_again(self) -> None:
        """Every SN used failed: look for others that offer the content."""
        assert self.manifest is not None
        self.researches += 1
        tried = {s.server.node_id for s in self.sources}
        result = await self.search(
            pattern=None, content_id=self.manifest.content_id, answers=1, exclude=tuple(tried)
        )
        await self._judge(result.servers)
        for server in result.servers:
            offer = server.files.get(self.manifest.content_id)
            if offer is None or server.node_id in tried:
                continue
            if self._believed(server):
                self.candidates.append(Source(server, offer, mode=self.mode))
        self.candidates.sort(key=self._rank)
        self.event("searched", found=[c.to_json() for c in self.candidates])

    def _searched(self, result: Any) -> None:
        self.searching = False
        if self.done.called:
            return
        if not self.candidates:
            last = f" (last: {self.last_drop})" if self.last_drop else ""
            self._fail(FetchError(f"every SN failed{last} and no other node offers the content"))
            return
        self._redistribute()
