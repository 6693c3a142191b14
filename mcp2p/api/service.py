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

Who may call (Jupyter's token and Transmission's RPC are the models), checked
in this order for every path, the status page's included; each refusal is
counted (``api.refused`` in the status) and logged in summary:

1. Host: exactly ``127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT``
   with the port listened on, else 403 (a web page must not reach the daemon
   through DNS rebinding or a name that merely starts like a loopback one).
   Without a port only when PORT is 80, where HTTP clients leave it out.
2. ``OPTIONS`` (a CORS preflight): 405, never an ``Access-Control-*`` header,
   so no cross-origin request that needs one is ever sent.
3. Every other method than GET and HEAD needs ``Content-Type:
   application/json`` (charset=utf-8 allowed), else 415: an HTML form or a
   "simple" fetch() can only send text/plain, form-urlencoded or multipart.
4. The token: ``Authorization: Bearer TOKEN``, TOKEN the content of
   ``STATE_DIR/api.token`` (0600, new at each start), else the browser
   session cookie; else 401 with ``WWW-Authenticate: Bearer``. A request
   that changes state with the cookie also needs ``X-MCP2P: 1`` (403
   otherwise): a custom header, which a cross-origin page cannot send
   without the preflight refused above.

``GET /?token=TOKEN`` logs a browser in: it sets ``mcp2p_session`` (a random
value of this run, not the token; HttpOnly, SameSite=Strict) and redirects to
``/``, leaving the token out of the address bar and history.

``[api] unix_socket`` serves the same API on a Unix socket of mode 0660
without steps 1 and 4: whoever can connect to it was let through by the
file system (its directory's permissions and group), no browser can open
one, and no DNS name leads to it; the content type rule still holds.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import re
import secrets
import socket
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.web import resource, server

from mcp2p import __version__, plugins
from mcp2p.api.client import TOKEN_FILE
from mcp2p.api.statuspage import StatusPage
from mcp2p.atomicfile import write_atomic
from mcp2p.discovery.query import file_json

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorTime, IReactorUNIX

    from mcp2p.api.parts import Parts
    from mcp2p.config import APISection, NodeSection

    class IAPIReactor(IReactorTime, IReactorTCP, IReactorUNIX):
        """What the API uses of the reactor: time, and TCP and Unix listening ports."""


_log = Logger()

PORT_FILE = "api.port"
MAX_BODY = 64 * 1024
LOOPBACK_HOSTS = (b"127.0.0.1", b"localhost", b"[::1]")
COOKIE = b"mcp2p_session"
BROWSER_HEADER = b"x-mcp2p"
SAFE_METHODS = (b"GET", b"HEAD")
JSON_TYPES = (b"application/json", b"application/json;charset=utf-8")
REFUSAL_LOG_INTERVAL = 60.0  # seconds: refusals are logged at most once per interval
# Every answer, refusals included (the status page sets its own on top).
SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)
REFUSALS = ("host", "preflight", "content_type", "token", "browser_header")
NO_TOKEN = (
    "missing or wrong API token: send Authorization: Bearer TOKEN (TOKEN in the daemon's "
    "state directory, api.token), or log in at the address mcp2p status --url prints"
)


class BadRequest(Exception):
    pass


def _quoted(names: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``: the valid plugin names in an error message."""
    quoted = [f"'{name}'" for name in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def search_options(body: dict[str, Any], schedule: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """Validate a search request body; returns (method, keyword arguments)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    method = body.get("method", "query")
    if not isinstance(method, str) or method not in plugins.names("discovery"):
        raise BadRequest("method must be one of " + _quoted(plugins.names("discovery")))
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
        if not isinstance(code, str) or code not in plugins.names("code"):
            raise BadRequest("code must be one of " + _quoted(plugins.names("code")))
        out["code"] = code
    pick = body.get("pick")
    if pick is not None:
        # How a name that several content ids answer to is resolved (mcp2p.trust.policy.choose).
        if pick not in ("nearest", "most", "trusted"):
            raise BadRequest("pick must be 'nearest', 'most' or 'trusted'")
        out["pick"] = pick
    return out


def write_token(state_dir: Path) -> str:
    """A new random token in ``state_dir/api.token``, mode 0600, put in place
    atomically without following anything planted at its names."""
    token = secrets.token_urlsafe(32)
    write_atomic(state_dir / TOKEN_FILE, f"{token}\n".encode(), 0o600)
    return token


def _exit_line(line: str) -> NoReturn:
    """Stop the daemon with one line on the real stderr and in the log (exit 2)."""
    print(line, file=sys.__stderr__ or sys.stderr, flush=True)
    if sys.stderr is not sys.__stderr__:
        _log.error("{line}", line=line)
    raise SystemExit(2)


def clear_unix_socket(path: Path) -> None:
    """Make room for the socket at ``path``: remove a stale socket (nothing
    accepts on it), refuse anything else (a live socket, a file, a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "something that is not a socket is there; not replaced")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # a socket left by a daemon that died
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another program accepts connections on it")


class Refusals:
    """Refused requests counted by reason and logged in summary: the first of a
    quiet interval at once (whoever just got a 401 finds why), the others as
    one line per interval, however many come."""

    def __init__(self, reactor: IReactorTime, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.counts = dict.fromkeys(REFUSALS, 0)
        self._pending: dict[str, int] = {}
        self._call: Any = None

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if self._call is None:
            _log.warn(
                "refused an API request ({reason}: {message}); further refusals are "
                "summed up every {interval:.0f} s",
                reason=reason,
                message=message,
                interval=self.interval,
            )
            self._call = self.reactor.callLater(self.interval, self._flush)
        else:
            self._pending[reason] = self._pending.get(reason, 0) + 1

    def _flush(self) -> None:
        self._call = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        _log.warn(
            "refused {total} API requests in the last {interval:.0f} s ({detail})",
            total=sum(pending.values()),
            interval=self.interval,
            detail=", ".join(f"{k} {v}" for k, v in sorted(pending.items())),
        )
        self._call = self.reactor.callLater(self.interval, self._flush)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class Access:
    """The checks of the module docstring, in order; the token and the browser
    session value live here (the session value only in memory)."""

    def __init__(self, token: str, refusals: Refusals) -> None:
        self.token = token.encode()
        self.session = secrets.token_urlsafe(32).encode()
        self.refusals = refusals

    def is_login(self, request: Any) -> bool:
        return (
            request.method == b"GET"
            and request.path.rstrip(b"/") == b""
            and b"token" in request.args
        )

    def check(self, request: Any) -> tuple[int, str, str] | None:
        """None when ``request`` may go on, else (HTTP code, reason, message)."""
        local = isinstance(request.getHost(), UNIXAddress)
        if not local and not self._host_ok(request):
            return 403, "host", "the Host header must be 127.0.0.1, localhost or [::1] and the port"
        method = request.method
        if method == b"OPTIONS":
            return 405, "preflight", "no cross-origin requests (CORS preflight refused)"
        changes = method not in SAFE_METHODS
        if changes:
            raw = request.requestHeaders.getRawHeaders(b"content-type") or []
            kind = b"".join(raw[0].split()).lower() if len(raw) == 1 else b""
            if kind not in JSON_TYPES:
                return 415, "content_type", "requests that change state must be application/json"
        if local:
            return None
        if self.is_login(request):
            if not hmac.compare_digest(request.args[b"token"][0], self.token):
                return 401, "token", "wrong token in the login address: see mcp2p status --url"
            return None
        if self._bearer_ok(request):
            return None
        cookie = request.getCookie(COOKIE)
        if cookie is None or not hmac.compare_digest(cookie, self.session):
            return 401, "token", NO_TOKEN
        if changes and request.getHeader(BROWSER_HEADER) != b"1":
            return 403, "browser_header", "requests that change state need the X-MCP2P: 1 header"
        return None

    def _host_ok(self, request: Any) -> bool:
        raw = request.requestHeaders.getRawHeaders(b"host") or []
        if len(raw) != 1:
            return False
        port = str(request.getHost().port).encode()
        allowed = {name + b":" + port for name in LOOPBACK_HOSTS}
        if port == b"80":  # HTTP clients leave the default port out of Host
            allowed.update(LOOPBACK_HOSTS)
        return raw[0].lower() in allowed

    def _bearer_ok(self, request: Any) -> bool:
        raw = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(raw) != 1:
            return False
        scheme, _, value = raw[0].strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)


class _JSON(resource.Resource):
    isLeaf = True

    def __init__(self, parts: Parts, access: Access, ring_schedule: tuple[int, ...]) -> None:
        """``ring_schedule``: ``[discovery] ring_schedule``, which bounds a search's max_hops."""
        super().__init__()
        self.parts = parts
        self.access = access
        self.ring_schedule = ring_schedule
        self.refused: dict[int, int] = {}  # HTTP status >= 400 -> requests answered so
        # The page reads both tallies live, at each request.
        self.page = StatusPage(parts, self.refused, access.refusals.counts)

    def render(self, request: Any) -> Any:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        refused = self.access.check(request)
        if refused is not None:
            code, reason, message = refused
            self.access.refusals.add(reason, message)
            if code == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="mcp2p"')
            elif code == 405:
                request.setHeader(b"allow", b"GET, HEAD, POST, DELETE")
            return self._reply(request, code, {"error": message})
        if self.access.is_login(request):
            return self.login(request)
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

    def login(self, request: Any) -> bytes:
        """Trade the token in the address for the session cookie, and send the
        browser to ``/`` without it."""
        request.addCookie(COOKIE, self.access.session, path=b"/", httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"logged in: see /\n"

    def status(self) -> dict[str, Any]:
        n = self.parts
        return {
            "version": __version__,
            "node_id": n.identity.node_id.hex(),
            "public_key": n.identity.public_key.hex(),
            "interface": n.interface,
            "shared_files": len(n.serving.catalog),
            "discovery": n.discovery.stats(),
            "api": {"refused": dict(self.access.refusals.counts)},
        }

    def catalog(self) -> dict[str, Any]:
        return {"files": [file_json(o) for o in self.parts.serving.offers()]}

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
            transfer = self.parts.fetching.fetch(body["target"], **kwargs)
        except OutDirRefused as e:
            raise BadRequest(str(e)) from None
        return {"id": transfer.id}

    def transfer(self, request: Any, path: bytes) -> bytes:
        try:
            tid = int(path.rsplit(b"/", 1)[1])
        except ValueError:
            raise BadRequest("transfer id must be an integer") from None
        transfer = self.parts.fetching.transfers.get(tid)
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
        method, kwargs = search_options(body, self.ring_schedule)
        d = self.parts.discovery.search(method, **kwargs)

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

    def __init__(
        self,
        reactor: IAPIReactor,
        node: NodeSection,
        api: APISection,
        ring_schedule: tuple[int, ...],
        parts: Parts,
    ) -> None:
        """Listens on ``[api]``'s port (and socket), keeps its port and token
        files in ``[node] state_dir``; answers about and drives ``parts``."""
        self.reactor = reactor
        self.state_dir = node.state_dir
        self.api = api
        self.ring_schedule = ring_schedule
        self.parts = parts
        self.port: Any = None
        self.unix_port: Any = None
        self.resource: _JSON | None = None
        self.refusals = Refusals(reactor)

    def startService(self) -> None:
        super().startService()
        state_dir = self.state_dir
        # A new token at each start rather than one kept across restarts: a
        # token that leaked (a copied URL, a backup of the state directory)
        # dies with the daemon, and nothing has to check an old file's owner
        # and mode. Clients read the file at each call, so they follow.
        try:
            token = write_token(state_dir)
        except OSError as e:
            _exit_line(
                f"mcp2p: cannot write the API token {state_dir / TOKEN_FILE} "
                f"({(e.strerror or str(e)).lower()}): check [node] state_dir"
            )
        self.resource = _JSON(self.parts, Access(token, self.refusals), self.ring_schedule)
        site = APISite(self.resource)
        site.displayTracebacks = False
        site.noisy = False
        from mcp2p.listening import listen_or_exit

        sock_path = self.api.unix_socket
        if sock_path is not None:
            self._clear_unix(sock_path)
        self.port = listen_or_exit(
            # Twisted's own annotations refuse its Site as listenTCP's factory.
            lambda: self.reactor.listenTCP(self.api.port, site, interface="127.0.0.1"),  # type: ignore[arg-type]
            "[api] port",
        )
        if sock_path is not None:
            try:
                self.unix_port = self._listen_unix(sock_path, site)
            except SystemExit:
                port, self.port = self.port, None
                port.stopListening()
                raise
        actual = self.port.getHost().port
        write_atomic(self.state_dir / PORT_FILE, f"{actual}\n".encode(), 0o644)
        _log.info("local API on http://127.0.0.1:{port}/api/status", port=actual)

    @staticmethod
    def _clear_unix(path: Path) -> None:
        try:
            clear_unix_socket(path)
        except OSError as e:
            _exit_line(f"mcp2p: cannot listen on {path} ({e.strerror}): check [api] unix_socket")

    def _listen_unix(self, path: Path, site: Any) -> Any:
        """Listen on ``path`` too, mode 0660 (set before listen(): no connection is
        accepted while the file still has the umask's mode)."""
        from twisted.internet.error import CannotListenError

        try:
            port = self.reactor.listenUNIX(str(path), site, mode=0o660)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            _exit_line(
                f"mcp2p: cannot listen on {path} ({reason.lower()}): check [api] unix_socket"
            )
        _log.info("local API also on the Unix socket {path}", path=str(path))
        return port

    def stopService(self) -> Any:
        super().stopService()
        self.refusals.stop()
        ports = [p for p in (self.port, self.unix_port) if p is not None]
        self.port = self.unix_port = None
        for name in (PORT_FILE, TOKEN_FILE):
            try:
                (self.state_dir / name).unlink()
            except OSError:
                pass
        if not ports:
            return None
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
