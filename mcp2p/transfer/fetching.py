"""FetchingService: the CN side of transfers (filled in by the fetch issue).

It owns the download directory now, so that the daemon's layout of state
is settled from the start.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service


class FetchingService(Service):
    name = "fetching"  # type: ignore[assignment]

    def __init__(self, node: Any) -> None:
        self.node = node
        self.transfers: dict[bytes, Any] = {}

    def startService(self) -> None:  # noqa: N802
        self.node.config.fetching.download_dir.mkdir(parents=True, exist_ok=True)
        super().startService()
