"""ServingService: what this node shares and the sessions it would stream them on.

The catalog lives here (it is what the SN serves). Each content gets a
session plan the first time it is offered: a random 32-bit session id
(the RTP SSRC) and a random group from the SSM or ASM pool; the plan stays
the same for the daemon's lifetime so every OFFER and SAP announcement of
that content agrees. Streaming the sessions is issue 4's part.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mcp2p.core.groups import random_group
from mcp2p.wire.query import Query
from mcp2p.wire.types import FileOffer

_log = Logger()


class ServingService(Service):
    name = "serving"  # type: ignore[assignment]

    def __init__(self, node: Any, catalog: Any, rng: random.Random | None = None) -> None:
        self.node = node
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.plans: dict[bytes, tuple[int, Any]] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:  # noqa: N802
        super().startService()
        d = self.catalog.start()

        def scanned(_: Any) -> None:
            _log.info("sharing {files} files", files=len(self.catalog))
            if not self.ready.called:
                self.ready.callback(None)

        def failed(f: Any) -> None:
            _log.failure("first scan of the shared directories failed", f)
            if not self.ready.called:
                self.ready.callback(None)

        d.addCallbacks(scanned, failed)

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802
        super().stopService()
        return defer.maybeDeferred(self.catalog.stop)

    def _plan(self, content_id: bytes) -> tuple[int, Any]:
        plan = self.plans.get(content_id)
        if plan is None:
            s = self.node.config.serving
            pool = s.ssm_pool if s.group_mode == "ssm" else s.asm_pool
            used = {session for session, _ in self.plans.values()}
            session = self.rng.getrandbits(32)
            while session in used or session == 0:
                session = self.rng.getrandbits(32)
            plan = (session, random_group(pool, 4, self.rng))
            self.plans[content_id] = plan
        return plan

    def offer_for(self, entry: Any) -> FileOffer:
        s = self.node.config.serving
        session, group = self._plan(entry.content_id)
        source = ipaddress.ip_address(self.node.config.node.interface)
        return FileOffer(
            content_id=entry.content_id,
            name=entry.name,
            size=entry.size,
            block_length=min(s.block_length, entry.piece_length),
            piece_length=entry.piece_length,
            session_id=session,
            group=group,
            source=source if s.group_mode == "ssm" else None,
            port=s.data_port,
            rate=s.rate,
            control_port=s.control_port or 1,
        )

    def lookup(self, query: Query) -> Sequence[FileOffer]:
        """The files matching a QUERY, as offers."""
        if query.content_id is not None:
            entry = self.catalog.get(query.content_id)
            return [] if entry is None else [self.offer_for(entry)]
        assert query.pattern is not None
        return [self.offer_for(e) for e in self.catalog.match(query.pattern)]

    def offers(self) -> list[FileOffer]:
        return [self.offer_for(e) for e in self.catalog.entries()]


def name_matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())
