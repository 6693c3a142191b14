"""What the target names and who offers it: a content id, a content id
prefix or a name resolved to one content id (`Resolution._find`), the
answering nodes judged by the trust policy and ranked, the signed manifest
fetched and verified, the disk space checked, and the SNs used remembered."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, NoReturn

from twisted.internet import defer

from mcp2p.core import fetchplan
from mcp2p.core.display import display_text
from mcp2p.core.ring import ServerRecord
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import GetManifest
from mcp2p.transfer.fetch.common import (
    FULL_ID,
    ID_PREFIX,
    Ambiguous,
    FetchError,
    NotFound,
    Source,
    _log,
)
from mcp2p.transfer.fetch.control import SourceControl
from mcp2p.transfer.fetch.helpers import _endpoint
from mcp2p.transfer.store import part_name
from mcp2p.trust.keys import node_id_of
from mcp2p.trust.policy import Candidate, Standing, choose
from mcp2p.wire.manifest import decode_manifest, verify_manifest
from mcp2p.wire.query import prefix_matches
from mcp2p.wire.types import FileOffer

if TYPE_CHECKING:
    from mcp2p.discovery.query import SearchResult

MAX_MANIFEST = 64 << 20


class Resolution(SourceControl):
    """The layer of ``Fetch`` that finds the content and its manifest."""

    async def _find(self) -> bytes:
        """The content id the target names, with ``self.candidates`` offering it.

        Precedence: 64 hex digits are a content id, nothing else. 8-63 hex
        digits are first a content id prefix (as git abbreviates object
        names): one QUERY asks SNs for the files whose id starts with them;
        one matching id is the answer, several are ``Ambiguous``. Only when
        no node offers such an id are they tried as a file name. Anything
        else is a file name (exact). A name is a label, not a vote: when
        several content ids answer to it, the one trusted nodes offer is
        taken, else ``Ambiguous`` lists them, unless ``pick`` says how to
        choose (`mcp2p.trust.policy.choose`).

        Offers of nodes the ``[trust] policy`` refuses (a key changed; under
        ``pinned``, every node not in known_nodes) are dropped; trusted SNs
        are tried first.
        """
        content_id: bytes | None = None
        result: SearchResult | None = None
        if FULL_ID.fullmatch(self.target):
            content_id = bytes.fromhex(self.target)
            result = await self.search(
                pattern=None, content_id=content_id, answers=self.max_sources
            )
        elif ID_PREFIX.fullmatch(self.target):
            content_id, result = await self._resolve_prefix(self.target.lower())
        if content_id is None:
            # A name is resolved among every answer the search waits for, so
            # the other files it stands for are seen, not only the nearest.
            answers = max(self.max_sources, self.config.discovery.answers_wanted)
            result = await self.search(pattern=self.target, content_id=None, answers=answers)
            content_id = await self._resolve_name(result)
        assert result is not None  # every branch above searched
        await self._judge(result.servers)
        found = [
            Source(s, s.files[content_id], mode=self.mode)
            for s in result.servers
            if content_id in s.files and self._believed(s)
        ]
        if not found:
            self._not_found(f"no node offers content {content_id.hex()}")
        found.sort(key=self._rank)
        self.candidates = found
        self.event("found", content_id=content_id.hex(), sources=[c.to_json() for c in found])
        return content_id

    async def _judge(self, servers: list[ServerRecord]) -> None:
        """Each answering node's standing under the trust policy, in ``self.standings``
        (the key servers, where the policy asks them, are asked all at once)."""
        asked: dict[bytes, defer.Deferred[Standing]] = {}
        for s in servers:
            if s.node_id in self.standings or s.node_id in asked:
                continue
            if node_id_of(s.public_key) != s.node_id:
                self.standings[s.node_id] = Standing.REFUSED
                continue
            address = _endpoint(s)
            now = self.trust.standing_now(s.node_id, s.public_key, address)
            if now is None:
                asked[s.node_id] = self.trust.standing_of(s.node_id, s.public_key, address)
            else:
                self.standings[s.node_id] = now
        for node_id, d in asked.items():
            self.standings[node_id] = await d

    def _believed(self, server: ServerRecord) -> bool:
        return self.standings.get(server.node_id) not in (None, Standing.REFUSED)

    def _rank(self, c: Source) -> tuple[bool, int, int]:
        trusted = self.standings.get(c.server.node_id) is Standing.TRUSTED
        return fetchplan.rank(trusted, c.server.distance, c.offer.rate)

    async def _resolve_name(self, result: SearchResult) -> bytes:
        """The content id the name ``self.target`` stands for among the offers of
        ``result`` (nodes the policy refuses left out), or NotFound / Ambiguous."""
        await self._judge(result.servers)
        offers: dict[bytes, tuple[FileOffer, list[ServerRecord]]] = {}
        for server in result.servers:
            if not self._believed(server):
                continue
            for f in server.files.values():
                if f.name == self.target:
                    offers.setdefault(f.content_id, (f, []))[1].append(server)
        if not offers:
            what = f"a file named {self.target!r}"
            if ID_PREFIX.fullmatch(self.target):
                what = f"a file whose content id starts with {self.target.lower()}, nor " + what
            self._not_found(f"no node offers {what}")
        candidates = [
            Candidate(
                cid,
                f.name,
                f.size,
                tuple(sorted(s.node_id for s in servers)),
                sum(self.standings.get(s.node_id) is Standing.TRUSTED for s in servers),
                min((s.distance for s in servers if s.distance is not None), default=None),
            )
            for cid, (f, servers) in offers.items()
        ]
        chosen = choose(candidates, self.pick)
        if chosen is None:
            shown = sorted(candidates, key=lambda c: (-c.trusted, -len(c.nodes), c.content_id))
            self.event(
                "ambiguous",
                name=self.target,
                candidates=[c.to_json() for c in shown],
            )
            trusted = sum(1 for c in candidates if c.trusted)
            why = (
                "trusted nodes offer several of them"
                if trusted > 1
                else "no trusted node offers any of them"
            )
            raise Ambiguous(
                f"name {self.target!r} is ambiguous: {len(candidates)} different files "
                f"({why}); give a content id, or --pick nearest|most|trusted"
            )
        if len(candidates) > 1:
            _log.info(
                "name {name} stands for {count} files: took {content_id} ({how})",
                name=display_text(self.target),
                count=len(candidates),
                content_id=chosen.content_id.hex()[:16],
                how=f"--pick {self.pick}" if self.pick else "the one trusted nodes offer",
            )
        return chosen.content_id

    async def _resolve_prefix(self, prefix: str) -> tuple[bytes | None, SearchResult]:
        """The one content id starting with ``prefix`` that nodes offer, or None."""
        result = await self.search(
            pattern=None, content_id=None, content_id_prefix=prefix, answers=self.max_sources
        )
        matches: dict[bytes, tuple[FileOffer, list[str]]] = {}
        await self._judge(result.servers)
        for server in result.servers:
            if not self._believed(server):
                continue
            for f in server.files.values():
                if prefix_matches(prefix, f.content_id):  # an SN's answer is only a claim
                    matches.setdefault(f.content_id, (f, []))[1].append(server.node_id.hex())
        if len(matches) > 1:
            candidates = [
                {
                    "content_id": cid.hex(),
                    "size": f.size,
                    "name": f.name,
                    "nodes": sorted(nodes),
                }
                for cid, (f, nodes) in sorted(matches.items(), key=lambda m: m[1][0].name)
            ]
            self.event("ambiguous", prefix=prefix, candidates=candidates)
            raise Ambiguous(
                f"content id prefix {prefix} is ambiguous: {len(matches)} files match; "
                "give more digits"
            )
        if not matches:
            return None, result
        [content_id] = matches
        return content_id, result

    def _not_found(self, message: str) -> NoReturn:
        self.event("not_found", target=self.target, error=message)
        raise NotFound(message)

    async def _manifest(self, content_id: bytes) -> Source:
        errors: list[str] = []
        f = self.config.fetching
        while self.candidates:
            why = self.budget.over_tried(self.candidates[0].server.node_id)
            if why:
                raise FetchError(why + ": " + "; ".join(errors[-3:]))
            source = self.candidates.pop(0)
            try:
                client = await self._connect(source)
                data = b""
                while True:
                    part = await self._timed(
                        client.callRemote(GetManifest, content_id=content_id, offset=len(data))
                    )
                    if (
                        part["total"] > MAX_MANIFEST
                        or not part["data"]
                        and len(data) < part["total"]
                    ):
                        raise ProtocolError("manifest too large or truncated")
                    data += part["data"]
                    if len(data) >= part["total"]:
                        break
                manifest = decode_manifest(
                    data, max_piece_length=f.max_piece_length, max_size=f.max_file_size
                )
                verify_manifest(manifest, content_id, source.server.public_key)
                self.manifest = manifest
                return source
            except Exception as e:  # try the next candidate
                errors.append(f"{source.name}: {e}")
                _log.warn(
                    "manifest from {node} refused: {error}",
                    node=source.name,
                    error=display_text(str(e)),
                )
                self._drop(source, "manifest failed")
        raise FetchError("no usable manifest: " + "; ".join(errors))

    def _check_space(self) -> None:
        """Fail with "disk full" before allocating anything when the download
        directory cannot hold the bytes still missing (what a part file of
        ours already holds counts as there)."""
        m = self.manifest
        assert m is not None
        held = 0
        try:
            st = os.stat(self.out_dir / part_name(m.name, m.content_id), follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                held = min(m.size, st.st_blocks * 512)
        except (OSError, ValueError):
            pass
        need = m.size - held
        try:
            vfs = os.statvfs(self.out_dir)
        except OSError:
            return  # the store says what is wrong with the directory
        free = vfs.f_bavail * vfs.f_frsize
        if need > free:
            raise FetchError(
                f"disk full: {m.name!r} needs {need} bytes in {self.out_dir}, {free} free"
            )

    def _record_use(self) -> None:
        """Trust on first use: the SNs whose data made a verified file are remembered."""
        assert self.manifest is not None
        used = [s for s in self.sources if not s.refused and (s.blocks > 0 or s is self.sources[0])]
        self.trust.record_use(
            [(s.server.node_id, s.server.public_key, _endpoint(s.server)) for s in used],
            self.manifest.name,
            self.manifest.content_id,
        )
