"""ApiClient: the one way this package calls a daemon's local API.

Used by the ``mcp2p`` command (`mcp2p.cli.call_daemon`), the lab's probes and
drivers, and the tests::

    client = ApiClient(state_dir, port=7780)       # TCP, with the token
    client = ApiClient(state_dir, unix_socket=p)    # the Unix socket, no token
    client.call("POST", "/api/fetch", {"target": "x.iso", "out_dir": "/tmp"})

Over TCP every request carries ``Authorization: Bearer TOKEN``, the token
read from ``STATE_DIR/api.token`` at each call (the daemon makes a new one
each time it starts, so a long-lived client is never left with a stale one).
Over the Unix socket no token is sent: the socket file's permissions decide
who may connect (see `mcp2p.api.service`). Every request with a body is
``Content-Type: application/json``, the only type the API takes.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp2p.config import Config

TOKEN_FILE = "api.token"
PORT_FILE = "api.port"
MAX_TOKEN_BYTES = 1024


class ApiError(Exception):
    """A call that did not get a JSON answer; ``str()`` is one line for a user."""


class NoDaemon(ApiError):
    """Nothing listens where the daemon's API should be."""


class TokenUnreadable(ApiError):
    """The token file exists (or should) but this user cannot read it."""

    def __init__(self, path: Path, reason: str, missing: bool = False) -> None:
        super().__init__(f"cannot read the API token {path} ({reason})")
        self.path = path
        self.reason = reason
        self.missing = missing


class Refused(ApiError):
    """The daemon answered with an HTTP error; ``message`` is its ``error`` field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class NotADaemon(ApiError):
    """Something answered, but not with JSON."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over an AF_UNIX stream socket (``Host: localhost``)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = os.fspath(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def read_token(state_dir: str | os.PathLike[str]) -> str:
    """The daemon's API token; OSError when it cannot be read, ValueError when
    the file holds no token."""
    with open(Path(state_dir) / TOKEN_FILE, "rb") as f:
        raw = f.read(MAX_TOKEN_BYTES + 1)
    token = raw.strip().decode("ascii", "replace")
    if not token or len(raw) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable():
        raise ValueError("not a token")
    return token


def read_port(state_dir: str | os.PathLike[str]) -> int | None:
    """The port the daemon wrote to its state directory, or None."""
    try:
        port = int((Path(state_dir) / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


class ApiClient:
    """Calls to one daemon: over ``unix_socket`` when given, else TCP 127.0.0.1:``port``."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        port: int | None = None,
        unix_socket: str | os.PathLike[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.unix_socket = Path(unix_socket) if unix_socket else None
        if port is None and self.unix_socket is None:
            port = read_port(self.state_dir)
        if self.unix_socket is None and (port is None or not 0 < port < 65536):
            raise ValueError(f"no API port: {port!r}")
        self.port = port

    @classmethod
    def for_config(cls, config: Config, tcp: bool = False) -> ApiClient | None:
        """The client the ``mcp2p`` command uses: the Unix socket when ``[api]
        unix_socket`` names one that exists (unless ``tcp``), else TCP on the
        port the daemon wrote to its state directory, else ``[api] port``.
        None when there is no port to try (``[api] port = 0`` and no file)."""
        state_dir = config.node.state_dir
        path = config.api.unix_socket
        if path is not None and not tcp and os.path.exists(path):
            return cls(state_dir, unix_socket=path)
        port = read_port(state_dir) or config.api.port
        return cls(state_dir, port=port) if 0 < port < 65536 else None

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def where(self) -> str:
        """Where the daemon is asked, for messages."""
        return str(self.unix_socket) if self.unix_socket else self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login_url(self) -> str:
        """The address a browser opens to log in (it trades the token for a cookie)."""
        return f"{self.base_url}/?token={self.token()}"

    def token(self) -> str:
        try:
            return read_token(self.state_dir)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            missing = isinstance(e, FileNotFoundError)
            raise TokenUnreadable(self.token_path, reason, missing) from None
        except ValueError as e:
            raise TokenUnreadable(self.token_path, str(e)) from None

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        """A new, not yet connected, connection to the daemon."""
        if self.unix_socket is not None:
            return UnixHTTPConnection(self.unix_socket, timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self) -> dict[str, str]:
        """What every request carries: the JSON content type and, over TCP, the token
        (TokenUnreadable when it cannot be read; none when the file does not exist,
        so that the daemon's 401 says what is wrong)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.unix_socket is None:
            try:
                headers["Authorization"] = f"Bearer {self.token()}"
            except TokenUnreadable as e:
                if not e.missing:
                    raise
        return headers

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 60
    ) -> tuple[int, bytes]:
        """One request: (HTTP status, body). NoDaemon when nothing listens; the
        token is read only once something does (a stale file of a stopped
        daemon is no error)."""
        conn = self.connection(timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise NoDaemon(f"no daemon answers at {self.where} ({e})") from None
            data = None if body is None else json.dumps(body).encode()
            try:
                conn.request(method, path, body=data, headers=self.headers())
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise NoDaemon(f"the daemon at {self.where} stopped answering ({e})") from None
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """The daemon's JSON answer; Refused for an HTTP error, with its message."""
        status, raw = self.request(method, path, body, timeout)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise Refused(status, str(message or raw[:200].decode("utf-8", "replace")))
        if answer is None and raw.strip() != b"null":
            raise NotADaemon(f"{self.where} answered, but not as an mcp2p daemon ([api] port)")
        return answer
