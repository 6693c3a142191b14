"""A drop-in discovery method for the tests: answers searches from a JSON file.

Enabled by ``[discovery] methods = query, static`` with this directory as
``[node] plugins_dir``, and told where its file is by::

    [plugin:static]
    file = offers.json   # relative to the config file's directory

The file is what ``/api/search`` answers (``{"servers": [...]}``, each server
with ``node_id``, ``public_key``, ``address`` and ``files``), so a search
saved from one network can be searched later, on a node that cannot reach it.
Every entry is checked when the method is made (a bad file stops the daemon
with one line); the file is read again on a search after it changed, and a
bad new version is counted and logged while the last good one keeps
answering. ``mcp2p search --method static PATTERN`` searches it (fnmatch, no
case, like the SAP directory), ``content_id`` matches whole ids.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.core.ring import ServerRecord
from mcp2p.discovery.query import SearchResult
from mcp2p.interfaces import IDiscoveryMethod, IDiscoveryMethodPlugin
from mcp2p.wire.types import NODE_ID_LEN, PUBLIC_KEY_LEN, FileOffer

_log = Logger()

MAX_FILE = 4 << 20  # bytes: an offers file larger than this is refused, not read
_FILE_FIELDS = ("name", "size", "block_length", "piece_length", "session_id", "port", "rate")


def _hex(obj: dict[str, Any], key: str, length: int) -> bytes:
    value = obj.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != length:
        raise ValueError(f"{key} must be {2 * length} hex digits")
    return raw


def _offer(obj: Any) -> FileOffer:
    if not isinstance(obj, dict):
        raise ValueError("a file must be a JSON object")
    for key in (*_FILE_FIELDS, "control_port"):
        if key not in obj:
            raise ValueError(f"a file has no {key}")
    for key in (*_FILE_FIELDS[1:], "control_port"):
        if type(obj[key]) is not int:
            raise ValueError(f"{key} must be an integer")
    if not isinstance(obj["name"], str):
        raise ValueError("name must be a string")
    source = obj.get("source")
    return FileOffer(  # checks every range and address rule of a wire offer
        content_id=_hex(obj, "content_id", 32),
        name=obj["name"],
        size=obj["size"],
        block_length=obj["block_length"],
        piece_length=obj["piece_length"],
        session_id=obj["session_id"],
        group=ipaddress.ip_address(str(obj.get("group"))),
        source=None if source is None else ipaddress.ip_address(str(source)),
        port=obj["port"],
        rate=obj["rate"],
        control_port=obj["control_port"],
    )


def parse_offers(data: bytes) -> list[ServerRecord]:
    """The servers of an offers file; ``ValueError`` saying what is wrong and where."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise ValueError(f"not JSON: {e}") from None
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, list):
        raise ValueError('expected a JSON object with a "servers" list')
    records = []
    for i, s in enumerate(servers):
        try:
            if not isinstance(s, dict):
                raise ValueError("must be a JSON object")
            address = ipaddress.ip_address(str(s.get("address")))
            files = s.get("files")
            if not isinstance(files, list):
                raise ValueError("files must be a list")
            record = ServerRecord(
                _hex(s, "node_id", NODE_ID_LEN),
                _hex(s, "public_key", PUBLIC_KEY_LEN),
                str(address),
                None,  # a distance measured elsewhere, maybe long ago: unknown here
                0.0,
                complete=True,
            )
            for j, f in enumerate(files):
                try:
                    offer = _offer(f)
                except ValueError as e:
                    raise ValueError(f"files[{j}]: {e}") from None
                record.files[offer.content_id] = offer
        except ValueError as e:
            raise ValueError(f"servers[{i}]: {e}") from None
        records.append(record)
    return records


def _read(path: Path) -> tuple[tuple[int, int], list[ServerRecord]]:
    """(mtime, size) and the servers of ``path``; ``ValueError`` naming the file."""
    try:
        st = path.stat()
        if st.st_size > MAX_FILE:
            raise ValueError(f"larger than {MAX_FILE} bytes")
        return (st.st_mtime_ns, st.st_size), parse_offers(path.read_bytes())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"[plugin:static] file {path}: {why}") from None


@implementer(IDiscoveryMethod)
class StaticMethod:
    name = "static"

    def __init__(self, path: Path, exclude: bytes | None = None) -> None:
        self.path = path
        self.exclude = exclude  # this node's own id: never offered to itself
        self.stamp, self.servers = _read(path)
        self.counters = {"searches": 0, "answers": 0, "reloads": 0, "reload_failed": 0}

    def start(self) -> None:
        _log.info(
            "static offers from {path}: {servers} servers",
            path=str(self.path),
            servers=len(self.servers),
        )

    def stop(self) -> None:
        return None

    def _reload(self) -> None:
        try:
            stamp = self.path.stat()
            if (stamp.st_mtime_ns, stamp.st_size) == self.stamp:
                return
            self.stamp, self.servers = _read(self.path)
            self.counters["reloads"] += 1
        except (OSError, ValueError) as e:
            self.counters["reload_failed"] += 1
            _log.warn("kept the last good offers: {error}", error=str(e))

    def search(self, pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        started = time.monotonic()
        self.counters["searches"] += 1
        self._reload()
        folded = None if pattern is None else pattern.casefold()
        found = []
        for server in self.servers:
            if server.node_id == self.exclude:
                continue
            files = {
                cid: offer
                for cid, offer in server.files.items()
                if (content_id is None or cid == content_id)
                and (folded is None or fnmatch.fnmatchcase(offer.name.casefold(), folded))
            }
            if files:
                found.append(
                    ServerRecord(
                        server.node_id,
                        server.public_key,
                        server.address,
                        None,
                        0.0,
                        files=files,
                        complete=True,
                    )
                )
        self.counters["answers"] += len(found)
        result = SearchResult(found, "file", 0, [], 0, time.monotonic() - started)
        return defer.succeed(result)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "servers": len(self.servers)}


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _StaticPlugin:
    name = "static"

    def make(self, node: Any) -> IDiscoveryMethod:
        settings = node.config.plugins.get("static", {})
        if not settings.get("file"):
            raise ValueError("discovery method static needs [plugin:static] file = PATH")
        path = Path(node.config.base_dir, settings["file"])
        return StaticMethod(path, exclude=node.identity.node_id)


static = _StaticPlugin()
