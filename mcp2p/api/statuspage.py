"""The operator's face of the API: the status page, its JSON, and ``/metrics``.

- ``GET /``: a static page (``static/index.html``) whose script
  (``/static/status.js``) polls the JSON endpoints below and fills it in;
  the page itself holds no data, so it needs no template and no escaping
  here: the script writes every string with ``textContent``.
- ``GET /api/overview``: node id, version, shares, sessions with their CNs
  and rates, peers with their hop distances, counters.
- ``GET /api/transfers``: the transfers, newest first (progress, rate, sources).
- ``GET /metrics``: the Prometheus text format (`mcp2p.api.metrics`).

Every answer carries a strict Content-Security-Policy (``default-src
'self'``, no inline script or style, no framing) and ``Referrer-Policy:
no-referrer`` (the login URL holds the token). `route` is called by the
API resource after its Host (and authentication) checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp2p import __version__
from mcp2p.api import metrics

if TYPE_CHECKING:
    from mcp2p.api.parts import Discovery, Fetching, Parts, Serving

STATIC = Path(__file__).parent / "static"
MAX_TRANSFERS = 100  # in GET /api/transfers, the newest
MAX_FILES = 50  # shared files listed in the overview
MAX_SUBSCRIBERS = 16  # CNs listed per session

SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        b"object-src 'none'"
    ),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}

# path (without a trailing slash) -> (file in STATIC, content type)
FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"/static/status.js": ("status.js", b"text/javascript; charset=utf-8"),
    b"/static/status.css": ("status.css", b"text/css; charset=utf-8"),
    b"/static/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}


class StatusPage:
    """Answers the GETs above for one node; ``registry`` is its own."""

    def __init__(
        self, parts: Parts, api_errors: Mapping[int, int], api_refused: Mapping[str, int]
    ) -> None:
        """``api_errors`` (HTTP status -> answers) and ``api_refused`` (reason ->
        refusals): the API's own tallies, read at each request."""
        self.parts = parts
        self.api_errors = api_errors
        self.api_refused = api_refused
        self.registry = metrics.registry_for(
            metrics.NodeCollector.of(parts, api_errors, api_refused)
        )
        self._files: dict[bytes, bytes] = {}

    def route(self, request: Any, path: bytes) -> bytes | None:
        """The body for a GET of ``path`` if it is one of ours, else None."""
        if path in FILES:
            name, content_type = FILES[path]
            body = self._files.get(path)
            if body is None:
                body = self._files[path] = (STATIC / name).read_bytes()
            return self._answer(request, content_type, body)
        if path == b"/metrics":
            return self._answer(
                request, metrics.CONTENT_TYPE.encode(), metrics.render(self.registry)
            )
        if path == b"/api/overview":
            return self._json(request, overview(self.parts, self.api_errors, self.api_refused))
        if path == b"/api/transfers":
            return self._json(request, {"transfers": transfers(self.parts.fetching)})
        return None

    def _json(self, request: Any, body: Any) -> bytes:
        return self._answer(request, b"application/json", json.dumps(body).encode() + b"\n")

    def _answer(self, request: Any, content_type: bytes, body: bytes) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return body


def transfers(fetching: Fetching) -> list[dict[str, Any]]:
    """The newest MAX_TRANSFERS transfers, newest first."""
    newest = sorted(fetching.transfers.values(), key=lambda t: -t.id)[:MAX_TRANSFERS]
    return [{**t.summary(), "counters": t.counters()} for t in newest]


def overview(
    parts: Parts, api_errors: Mapping[int, int], api_refused: Mapping[str, int]
) -> dict[str, Any]:
    serving, discovery = parts.serving, parts.discovery
    entries = sorted(serving.catalog.entries(), key=lambda e: e.name)
    return {
        "node_id": parts.identity.node_id.hex(),
        "version": __version__,
        "interface": parts.interface,
        "shares": {
            "files": len(entries),
            "bytes": sum(e.size for e in entries),
            "list": [
                {"name": e.name, "size": e.size, "content_id": e.content_id.hex()}
                for e in entries[:MAX_FILES]
            ],
        },
        "sessions": sessions(serving),
        "peers": peers(discovery, parts.identity.node_id, parts.clock.seconds()),
        "counters": {
            "discovery": discovery.stats(),
            "serving": dict(serving.counters),
            "sessions": serving.session_totals(),
            "fetching": metrics.fetch_totals(
                t.counters() for t in list(parts.fetching.transfers.values())
            ),
            "api_errors": {str(k): v for k, v in api_errors.items()},
            "api_refused": dict(api_refused),
        },
    }


def sessions(serving: Serving) -> list[dict[str, Any]]:
    out = []
    for session in serving.live_sessions()[: metrics.MAX_SESSIONS]:
        entry = serving.contents.get(session)
        subscribers = []
        for sub in list(session.subscribers.values())[:MAX_SUBSCRIBERS]:
            try:
                address = sub.client.transport.getPeer().host
            except Exception:  # a channel closing under us
                address = None
            subscribers.append(
                {
                    "node_id": (sub.client.peer_node_id or b"").hex(),
                    "address": address,
                    "ceiling": sub.ceiling,
                }
            )
        out.append(
            {
                "session_id": f"{session.session_id:08x}",
                "name": entry.name if entry is not None else None,
                "content_id": entry.content_id.hex() if entry is not None else None,
                "mode": "multicast" if session.group else "unicast",
                "destination": f"{session.destination[0]}:{session.destination[1]}",
                "state": session.state,
                "rate": int(session.rates.rate),
                "packets": session.counters["packets"],
                "bytes": session.counters["bytes"],
                "subscriber_count": len(session.subscribers),
                "subscribers": subscribers,
            }
        )
    return out


def peers(discovery: Discovery, own: bytes, now: float) -> list[dict[str, Any]]:
    """Nodes found by recent searches (with their hop distance), then nodes
    heard only through SAP (distance unknown), nearest first; ``own``: this
    node's id, left out."""
    out: dict[str, dict[str, Any]] = {}
    for peer in reversed(list(getattr(discovery, "peers", {}).values())):
        out.setdefault(peer["node_id"], {**peer, "age": now - peer["seen"]})
    sap = discovery.methods.get("sap")
    directory = getattr(sap, "directory", None)
    if directory is not None:
        for a in directory.search()[: metrics.MAX_SESSIONS * 4]:
            if a.node_id == own:
                continue
            peer = out.setdefault(
                a.node_id.hex(),
                {
                    "node_id": a.node_id.hex(),
                    "address": str(a.origin),
                    "distance": None,
                    "rtt": None,
                    "files": 0,
                    "method": "sap",
                    "age": None,
                },
            )
            if peer["method"] == "sap":
                peer["files"] += 1
    listed = list(out.values())
    listed.sort(key=lambda p: (p["distance"] is None, p["distance"] or 0, p["node_id"]))
    for peer in listed:
        peer.pop("seen", None)
    return listed
