"""APIService: the one local control interface, HTTP + JSON on 127.0.0.1.

Used by the ``mcp2p`` command, scripts and (later) the status page.

- ``GET /api/status``: node id, services, counters.
- ``GET /api/catalog``: the files shared here.
- ``POST /api/search``: ``{"method": "query"|"sap", "pattern": "*.iso"}``,
  ``{"content_id": HEX}`` or (method query) ``{"content_id_prefix": 8-63 HEX}``,
  optional ``answers``, ``max_hops``, ``timeout``, ``reply_mode``; answers
  with the search result.
- ``POST /api/fetch``: ``{"target": NAME_OR_CONTENT_ID_OR_PREFIX, "out_dir": ABSOLUTE_PATH}``,
  optional ``mode``, ``rate`` (bit/s), ``sources``, ``code``; answers ``{"id": N}``.
  ``out_dir`` (default: the first of ``[fetching] download_dirs``) must be an
  existing directory that, symlinks resolved, is one of the download dirs or
  inside one; else 400 naming them.
- ``GET /api/transfers/N?since=K``: events of transfer N from the K-th on,
  its state and result. ``DELETE /api/transfers/N`` cancels it (it resumes
  when fetched again).

- ``GET /`` (the status page), ``/api/overview``, ``/api/transfers``,
  ``/metrics``: see `mcp2p.api.statuspage`.

Requests whose Host header is not a loopback name are refused (a web page
in a browser on this host must not drive the daemon by DNS rebinding).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from mcp2p import __version__
from mcp2p.api.statuspage import StatusPage
from mcp2p.discovery.query import file_json

_log = Logger()

PORT_FILE = "api.port"
MAX_BODY = 64 * 1024
LOOPBACK_HOSTS = {b"127.0.0.1", b"localhost", b"[::1]"}


class BadRequest(Exception):
    pass


def search_options(body: dict[str, Any], schedule: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """Validate a search request body; returns (method, keyword arguments)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    method = body.get("method", "query")
    if method not in ("query", "sap"):
        raise BadRequest("method must be 'query' or 'sap'")
    pattern, cid = body.get("pattern"), body.get("content_id")
    prefix = body.get("content_id_prefix")
    if sum(x is not None for x in (pattern, cid, prefix)) != 1:
        raise BadRequest("give exactly one of pattern, content_id and content_id_prefix")
    kwargs: dict[str, Any] = {"pattern": None, "content_id": None}
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern or len(pattern.encode()) > 255:
            raise BadRequest("pattern must be a string of 1-255 bytes")
        if "\x00" in pattern:
            raise BadRequest("pattern must not contain NUL")
        kwargs["pattern"] = pattern
    elif prefix is not None:
        if not isinstance(prefix, str) or not re.fullmatch(r"[0-9a-fA-F]{8,63}", prefix):
            raise BadRequest("content_id_prefix must be 8-63 hex digits")
        if method != "query":
            raise BadRequest(
                "content_id_prefix needs method 'query' (the SAP directory is searched "
                "by pattern or whole content id)"
            )
        kwargs["content_id_prefix"] = prefix.lower()
    else:
        try:
            raw = bytes.fromhex(cid) if isinstance(cid, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise BadRequest("content_id must be 64 hex digits")
        kwargs["content_id"] = raw
    if method == "query":
        answers = body.get("answers")
        if answers is not None:
            if not isinstance(answers, int) or not 1 <= answers <= 255:
                raise BadRequest("answers must be an integer in [1, 255]")
            kwargs["answers"] = answers
        max_hops = body.get("max_hops")
        if max_hops is not None:
            if not isinstance(max_hops, int) or not 1 <= max_hops <= 255:
                raise BadRequest("max_hops must be an integer in [1, 255]")
            rings = tuple(h for h in schedule if h < max_hops) + (max_hops,)
            kwargs["schedule"] = rings
        timeout = body.get("timeout")
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or not 0.05 <= timeout <= 60:
                raise BadRequest("timeout must be a number of seconds in [0.05, 60]")
            kwargs["timeout"] = float(timeout)
        mode = body.get("reply_mode")
        if mode is not None:
            if mode not in ("unicast", "multicast"):
                raise BadRequest("reply_mode must be 'unicast' or 'multicast'")
            kwargs["reply_mode"] = mode
    return method, kwargs


def fetch_options(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a fetch request body; returns keyword arguments for FetchingService.fetch."""
    from pathlib import Path

    target = body.get("target")
    if not isinstance(target, str) or not target or len(target.encode()) > 255:
        raise BadRequest(
            "target must be a file name or a content id (or 8-63 of its hex digits), 1-255 bytes"
        )
    if "\x00" in target:
        raise BadRequest("target must not contain NUL")
    out: dict[str, Any] = {}
    out_dir = body.get("out_dir")
    if out_dir is not None:
        # Where the daemon may write is checked by FetchingService.fetch against
        # [fetching] download_dirs; without out_dir the first of them is used.
        if not isinstance(out_dir, str) or not Path(out_dir).is_absolute():
            raise BadRequest("out_dir must be an absolute path")
        if "\x00" in out_dir:
            raise BadRequest("out_dir must not contain NUL")
        out["out_dir"] = Path(out_dir)
    mode = body.get("mode")
    if mode is not None:
        if mode not in ("multicast", "unicast"):
            raise BadRequest("mode must be 'multicast' or 'unicast'")
        out["mode"] = mode
    rate = body.get("rate")
    if rate is not None:
        if not isinstance(rate, int) or not 8000 <= rate <= 10**12:
            raise BadRequest("rate must be an integer in bit/s, at least 8000")
        out["rate"] = rate
    sources = body.get("sources")
    if sources is not None:
        if not isinstance(sources, int) or not 1 <= sources <= 64:
            raise BadRequest("sources must be an integer in [1, 64]")
        out["sources"] = sources
    code = body.get("code")
    if code is not None:
        if code not in ("plain", "raptorq"):
            raise BadRequest("code must be 'plain' or 'raptorq'")
        out["code"] = code
    return out


class _JSON(resource.Resource):
    isLeaf = True

    def __init__(self, node: Any) -> None:
        super().__init__()
        self.node = node
        self.page = StatusPage(node)
        self.refused: dict[int, int] = {}  # HTTP status >= 400 -> requests answered so

    def render(self, request: Any) -> Any:
        host = (request.getHeader(b"host") or b"").rsplit(b":", 1)[0]
        if host not in LOOPBACK_HOSTS:
            return self._reply(request, 403, {"error": "only loopback Host names are served"})
        path = request.path.rstrip(b"/")
        try:
            if request.method == b"GET" and path == b"/api/status":
                return self._reply(request, 200, self.status())
            if request.method == b"GET" and path == b"/api/catalog":
                return self._reply(request, 200, self.catalog())
            if request.method == b"POST" and path == b"/api/search":
                return self.search(request)
            if request.method == b"POST" and path == b"/api/fetch":
                return self._reply(request, 200, self.fetch(request))
            if path.startswith(b"/api/transfers/"):
                return self.transfer(request, path)
            if request.method == b"GET":
                page = self.page.route(request, path)
                if page is not None:
                    return page
        except BadRequest as e:
            return self._reply(request, 400, {"error": str(e)})
        return self._reply(request, 404, {"error": "no such endpoint"})

    def _reply(self, request: Any, code: int, body: Any) -> bytes:
        if code >= 400:
            self.refused[code] = self.refused.get(code, 0) + 1
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode() + b"\n"

    def status(self) -> dict[str, Any]:
        n = self.node
        return {
            "version": __version__,
            "node_id": n.identity.node_id.hex(),
            "public_key": n.identity.public_key.hex(),
            "interface": str(n.config.node.interface),
            "shared_files": len(n.serving.catalog),
            "discovery": n.discovery.stats(),
        }

    def catalog(self) -> dict[str, Any]:
        return {"files": [file_json(o) for o in self.node.serving.offers()]}

    def _body(self, request: Any) -> Any:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise BadRequest("body too large")
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise BadRequest("body is not JSON") from None

    def fetch(self, request: Any) -> dict[str, Any]:
        body = self._body(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        kwargs = fetch_options(body)
        from mcp2p.transfer.downloads import OutDirRefused

        try:
            transfer = self.node.fetching.fetch(body["target"], **kwargs)
        except OutDirRefused as e:
            raise BadRequest(str(e)) from None
        return {"id": transfer.id}

    def transfer(self, request: Any, path: bytes) -> bytes:
        try:
            tid = int(path.rsplit(b"/", 1)[1])
        except ValueError:
            raise BadRequest("transfer id must be an integer") from None
        transfer = self.node.fetching.transfers.get(tid)
        if transfer is None:
            return self._reply(request, 404, {"error": f"no transfer {tid}"})
        if request.method == b"DELETE":
            if transfer.deferred is not None and not transfer.deferred.called:
                transfer.deferred.cancel()
            return self._reply(request, 200, {"id": tid, "state": transfer.state})
        try:
            since = int(request.args.get(b"since", [b"0"])[0])
        except ValueError:
            raise BadRequest("since must be an integer") from None
        events, total = transfer.since(since)
        return self._reply(
            request,
            200,
            {
                "id": tid,
                "state": transfer.state,
                "result": transfer.result,
                "events": events,
                "next": total,
            },
        )

    def search(self, request: Any) -> Any:
        body = self._body(request)
        method, kwargs = search_options(body, self.node.config.discovery.ring_schedule)
        d = self.node.discovery.search(method, **kwargs)

        def done(result: Any) -> None:
            if not request.finished and not request._disconnected:
                request.write(self._reply(request, 200, result.to_json()))
                request.finish()

        def failed(f: Any) -> None:
            _log.failure("search failed", f)
            if not request.finished and not request._disconnected:
                request.write(self._reply(request, 500, {"error": f.getErrorMessage()}))
                request.finish()

        d.addCallbacks(done, failed)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET


class APISite(server.Site):
    """Each request is a debug event, not an access-log line: with no logPath,
    Site writes one through twisted.python.log at info (noisy=False does not
    stop it), and ``mcp2p get`` polls four times a second."""

    def log(self, request: Any) -> None:
        _log.debug(
            "API {method} {uri!r}: {code}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=request.code,
        )


class APIService(Service):
    name = "api"  # type: ignore[assignment]

    def __init__(self, node: Any) -> None:
        self.node = node
        self.port: Any = None
        self.resource: _JSON | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.resource = _JSON(self.node)
        site = APISite(self.resource)
        site.displayTracebacks = False
        site.noisy = False
        from mcp2p.app import listen_or_exit

        self.port = listen_or_exit(
            lambda: self.node.reactor.listenTCP(
                self.node.config.api.port, site, interface="127.0.0.1"
            ),
            "[api] port",
        )
        actual = self.port.getHost().port
        path = self.node.config.node.state_dir / PORT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{actual}\n")
        os.replace(tmp, path)
        _log.info("local API on http://127.0.0.1:{port}/api/status", port=actual)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        try:
            (self.node.config.node.state_dir / PORT_FILE).unlink()
        except OSError:
            pass
        return defer.maybeDeferred(port.stopListening) if port is not None else None
