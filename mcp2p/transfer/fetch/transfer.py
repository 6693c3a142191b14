"""The whole transfer (``Transfer.run``: find, manifest, subscribe, wait,
deliver, in the order the package's docstring gives), the totals it
reports, and its end: every source unsubscribed and closed, the store closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorThreads

from mcp2p.core.display import display_text
from mcp2p.transfer.control import Unsubscribe
from mcp2p.transfer.fetch.common import FetchError, _log
from mcp2p.transfer.fetch.supervise import TICK, Supervision
from mcp2p.transfer.store import StoreError


class Transfer(Supervision):
    """The layer of ``Fetch`` that runs the transfer from start to end."""

    def _background(self) -> Any:
        """The store's flushes in the reactor's thread pool: fdatasync blocks
        for as long as the disk takes (10-30 ms a flush in the lab, 17 of
        them per 100 MiB; seconds on a slow disk), and meanwhile the reactor
        must read its sockets. None where the reactor has no threads (a
        test's Clock): the store flushes in place. A flush that fails ends
        the fetch, as a failed write does."""
        reactor = self.reactor
        if not IReactorThreads.providedBy(reactor):
            return None

        def run(work: Any, done: Any) -> None:
            d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), work)

            def failed(f: Any) -> None:
                done(f.value)
                self._fail(FetchError(str(f.value)))

            d.addCallbacks(lambda _: done(None), failed)

        return run

    async def run(self) -> Path:
        try:
            content_id = await self._find()
            first = await self._manifest(content_id)
            assert self.manifest is not None
            from mcp2p.transfer.store import PartialFile

            self._check_space()
            self.store = PartialFile.open(self.out_dir, self.config.node.state_dir, self.manifest)
            self.store.background = self._background()
            # The plain code's blocks go straight to the store (which keeps one
            # byte per block): a decoder would only keep a second such map.
            self.decoder = None if self.per_block else self.code.decoder(self.manifest.layout)
            if hasattr(self.decoder, "max_pending"):  # its buffers within [fetching] max_in_flight
                self.decoder.max_pending = self.config.fetching.max_in_flight
            self.event(
                "manifest",
                name=self.manifest.name,
                size=self.manifest.size,
                content_id=content_id.hex(),
                pieces=self.manifest.layout.pieces,
                verified=self.store.verified_pieces,
            )
            if not self.store.complete:
                self.sources = [first]
                for extra in self.candidates[: self.max_sources - 1]:
                    self.candidates.remove(extra)
                    self.sources.append(extra)
                await self._start_sources(self.sources, self._missing())
                self.loop = task.LoopingCall(self._tick)
                self.loop.clock = self.reactor
                self.loop.start(TICK, now=False)
                await self.done
            path = self.store.finalize()
            self._record_use()
            self.event(
                "done",
                path=str(path),
                elapsed=self.reactor.seconds() - self.started,
                bytes=self.manifest.size,
                store=dict(self.store.counters),
                receivers=[dict(s.receiver.counters) for s in self.sources if s.receiver],
                **self.counters,
            )
            return Path(path)
        finally:
            if self.done.called:
                self.done.addErrback(lambda f: None)  # failed before run() awaited it
            await self._close()

    def totals(self) -> dict[str, float]:
        """Every counter of this transfer, its receivers' summed (the longest
        forged hold: their maximum), the store's as ``store_...``."""
        out: dict[str, float] = dict(self.counters)
        for source in self.sources:
            if source.receiver is None:
                continue
            for key, value in source.receiver.counters.items():
                if key == "forged_hold_max":
                    out[key] = max(out.get(key, 0.0), value)
                else:
                    out[key] = out.get(key, 0) + value
        if self.store is not None:
            for key, value in self.store.counters.items():
                out["store_" + key] = value
            out["bytes_verified"] = self.store.bytes_verified
        return out

    async def _close(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        closing = {id(s): s for s in self.sources + self.candidates + self.connected}
        for source in closing.values():  # the manifest's source too, when no subscribe followed
            was, source.state = source.state, "closed"
            if source.client is not None and was == "active":
                try:
                    await source.client.callRemote(Unsubscribe, subscription=source.subscription)
                except Exception:  # closing anyway
                    pass
            if source.port is not None:
                await defer.maybeDeferred(source.port.stopListening)
                source.port = None
            if source.client is not None:
                client, source.client = source.client, None
                if client.transport is not None:
                    client.transport.loseConnection()
                await client.lost
        if self.store is not None:
            try:
                self.store.close()
            except StoreError as e:  # a full disk: the fetch's own error says so already
                _log.warn("progress not recorded: {error}", error=display_text(str(e)))
