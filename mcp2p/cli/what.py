"""How WHAT is read: a content id, a content id prefix, or a name (pattern).

Pure: the searches ``mcp2p search WHAT`` tries in turn, the filter of each
one's files, and the words for "not found".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

FULL_ID = re.compile(r"[0-9a-fA-F]{64}")
ID_PREFIX = re.compile(r"[0-9a-fA-F]{8,63}")

Keep = Callable[[dict[str, Any]], bool]


def _prefix_keep(prefix: str) -> Keep:
    return lambda f: str(f["content_id"]).startswith(prefix)


def search_attempts(what: str, method: str) -> list[tuple[dict[str, Any], Keep | None]]:
    """The searches ``mcp2p search WHAT`` tries in turn, each with a filter of its files."""
    if FULL_ID.fullmatch(what):
        return [({"method": method, "content_id": what.lower()}, None)]
    if not ID_PREFIX.fullmatch(what):
        return [({"method": method, "pattern": what}, None)]
    prefix = what.lower()
    if method == "sap":
        # The SAP directory is already here: list it once, keep ids then names.
        import fnmatch

        folded = what.casefold()

        def by_id_or_name(f: dict[str, Any]) -> bool:
            return str(f["content_id"]).startswith(prefix) or fnmatch.fnmatchcase(
                str(f["name"]).casefold(), folded
            )

        return [({"method": "sap", "pattern": "*"}, by_id_or_name)]
    if method != "query":
        # A plugin's method knows patterns, not prefixes: the digits are a name.
        return [({"method": method, "pattern": what}, None)]
    # An SN's offer is only a claim: keep what really starts with the prefix.
    return [
        ({"method": "query", "content_id_prefix": prefix}, _prefix_keep(prefix)),
        ({"method": "query", "pattern": what}, None),
    ]


def keep_files(result: dict[str, Any], keep: Keep | None) -> dict[str, Any]:
    if keep is None:
        return result
    servers = []
    for s in result["servers"]:
        files = [f for f in s["files"] if keep(f)]
        if files:
            servers.append({**s, "files": files})
    return {**result, "servers": servers}


def count_files(result: dict[str, Any]) -> int:
    return sum(len(s["files"]) for s in result["servers"])


def not_found_text(what: str) -> str:
    if FULL_ID.fullmatch(what):
        return f"no node offers content id {what.lower()}"
    if ID_PREFIX.fullmatch(what):
        return (
            f"no node offers a file whose content id starts with {what.lower()}, "
            f"nor one named {what!r}"
        )
    return f"no node offers a file matching {what!r}"
