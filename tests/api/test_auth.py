"""Who may use the local API: a whole node's APIService on an ephemeral loopback
port, asked over real HTTP (http.client in a thread, the Host header as given),
and the ``mcp2p`` command against a real daemon.

Each attack of issue 10 is a test here that the API before the token answered
otherwise (200 or 404 where this asks 401, 403, 405 or 415).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import globalLogPublisher

from mcp2p.api.client import ApiClient, Refused, TokenUnreadable, UnixHTTPConnection
from mcp2p.app import build
from mcp2p.commands import MCP2P
from tests.nodes import free_udp_port, make_node_dir, node_config, node_ini
from tests.test_daemon import start_daemon, stop_daemon

JSON = {"Content-Type": "application/json"}
# What an HTML form or a fetch() without a preflight can send.
SIMPLE_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,  # no Content-Type at all (a Blob without a type)
]


def simple_body(content_type: str | None, fields: dict[str, Any]) -> bytes:
    """The JSON a page smuggles in a simple request's body (a form of enctype
    text/plain makes exactly this with one field named like the JSON's start);
    as multipart, the same fields as a form sends them."""
    if content_type and content_type.startswith("multipart/"):
        parts = "".join(
            f'--x\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        return (parts + "--x--\r\n").encode()
    return json.dumps(fields).encode()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
) -> Reply:
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@dataclass
class Api:
    node: Any
    port: int
    state_dir: Path

    def token(self) -> str:
        try:
            return (self.state_dir / "api.token").read_text().strip()
        except FileNotFoundError:  # the API before the token had none
            return "no-token-file"

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: bool | str = True,
        headers: dict[str, str] | None = None,
        body: Any = None,
        host: str | None = None,
    ) -> Reply:
        """One request; ``token`` True sends the daemon's, a string sends that one."""
        sent = {"Host": host if host is not None else f"127.0.0.1:{self.port}"}
        if token is not False:
            sent["Authorization"] = f"Bearer {self.token() if token is True else token}"
        sent.update(headers or {})
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return await threads.deferToThread(_exchange, conn, method, path, sent, data)

    async def login(self) -> str:
        """The session cookie's value, as a browser gets it from the login address."""
        reply = await self.request("GET", f"/?token={self.token()}", token=False)
        assert reply.status == 303, reply.body
        [cookie] = reply.headers.get_all("Set-Cookie") or []
        return cookie.split(";")[0].split("=", 1)[1]


async def start_node(root: Path, **api: str) -> Any:
    make_node_dir(root, {"notes.txt": b"hello\n"})
    (root / "downloads").mkdir(exist_ok=True)
    config = node_config(
        root, free_udp_port(), free_udp_port(), discovery={"methods": "query, sap"}, api=api
    )
    top = build(config, reactor)
    top.startService()
    await top.node.serving.ready
    return top


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    top = await start_node(tmp_path)
    try:
        yield Api(top.node, top.node.api.port.getHost().port, top.node.config.node.state_dir)
    finally:
        await top.stopService()


def fetch_body(api: Api) -> dict[str, Any]:
    return {"target": "notes.txt", "out_dir": str(api.state_dir.parent / "downloads")}


# -- the token ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_file_is_0600_new_at_each_start_and_gone_at_stop(tmp_path: Path) -> None:
    tokens = []
    for _ in range(2):
        top = await start_node(tmp_path)
        path = top.node.config.node.state_dir / "api.token"
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        tokens.append(path.read_text().strip())
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".api.token")] == []
        await top.stopService()
        assert not path.exists()
    assert tokens[0] != tokens[1]
    assert all(len(t) >= 43 for t in tokens)  # 32 random bytes, base64


@pytest_twisted.ensureDeferred
async def test_a_symlink_at_the_token_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "api.token").symlink_to(victim)
    top = await start_node(tmp_path)
    try:
        assert victim.read_text() == "keep me\n"
        assert not (tmp_path / "state" / "api.token").is_symlink()
    finally:
        await top.stopService()


@pytest_twisted.ensureDeferred
async def test_without_the_token_401_with_a_wrong_one_401_with_it_200(api: Api) -> None:
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mcp2p.api.service" and "refused" in event.get(
            "log_format", ""
        ):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        for path in ("/api/status", "/api/catalog", "/", "/metrics", "/api/transfers/1"):
            none = await api.request("GET", path, token=False)
            assert none.status == 401, (path, none.body)
            assert none.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in none.json()["error"]
            token = api.token()
            wrong_token = ("y" if token[0] == "x" else "x") + token[1:]  # never the token itself
            wrong = await api.request("GET", path, token=wrong_token)
            assert wrong.status == 401, path
        for scheme in ("Basic", "Token"):
            other = await api.request(
                "GET",
                "/api/status",
                token=False,
                headers={"Authorization": f"{scheme} {api.token()}"},
            )
            assert other.status == 401
        ok = await api.request("GET", "/api/status")
        assert ok.status == 200, ok.body
        assert ok.json()["api"]["refused"]["token"] == 12
    finally:
        globalLogPublisher.removeObserver(observer)
    # Twelve refusals, one log line (the rest wait for the minute's summary).
    assert len(seen) == 1


# -- no state change from a browser ------------------------------------------------------


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
@pytest_twisted.ensureDeferred
async def test_a_cross_origin_simple_post_is_refused(
    api: Api, content_type: str | None, with_token: bool
) -> None:
    """What a web page's form sends: no preflight, so it must die on its type."""
    headers = {"Origin": "http://evil.example", "Cookie": "mcp2p_session=guess"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    reply = await api.request(
        "POST",
        "/api/fetch",
        token=with_token,
        headers=headers,
        body=simple_body(content_type, fetch_body(api)),
    )
    assert reply.status == 415, reply.body
    assert not any(h.lower().startswith("access-control-") for h in reply.headers)
    assert api.node.fetching.transfers == {}
    assert list((api.state_dir.parent / "downloads").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_delete_needs_the_json_type_too(api: Api) -> None:
    reply = await api.request("DELETE", "/api/transfers/1", headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    missing = await api.request("DELETE", "/api/transfers/1")
    assert missing.status == 415


@pytest_twisted.ensureDeferred
async def test_a_change_with_the_cookie_needs_the_custom_header(api: Api) -> None:
    cookie = await api.login()
    search = {"method": "sap", "pattern": "*.iso"}
    bare = await api.request(
        "POST",
        "/api/search",
        token=False,
        body=search,
        headers={**JSON, "Cookie": f"mcp2p_session={cookie}"},
    )
    assert bare.status == 403, bare.body
    assert "X-MCP2P" in bare.json()["error"]
    wrong = await api.request(
        "POST",
        "/api/search",
        token=False,
        body=search,
        headers={**JSON, "Cookie": f"mcp2p_session={cookie}", "X-MCP2P": "yes"},
    )
    assert wrong.status == 403
    ok = await api.request(
        "POST",
        "/api/search",
        token=False,
        body=search,
        headers={**JSON, "Cookie": f"mcp2p_session={cookie}", "X-MCP2P": "1"},
    )
    assert ok.status == 200, ok.body
    assert "servers" in ok.json()
    # The cookie is enough to read; a forged one is not.
    read = await api.request(
        "GET", "/api/status", token=False, headers={"Cookie": f"mcp2p_session={cookie}"}
    )
    assert read.status == 200
    forged = await api.request(
        "GET", "/api/status", token=False, headers={"Cookie": f"mcp2p_session={api.token()}"}
    )
    assert forged.status == 401


@pytest_twisted.ensureDeferred
async def test_a_preflight_is_refused_without_any_cors_header(api: Api) -> None:
    for token in (False, True):
        reply = await api.request(
            "OPTIONS",
            "/api/fetch",
            token=token,
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-mcp2p",
            },
        )
        assert reply.status in (403, 405), reply.body
        assert not any(h.lower().startswith("access-control-") for h in reply.headers)


# -- the Host header ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_only_the_exact_loopback_host_and_port_are_served(api: Api) -> None:
    other = api.port + 1 if api.port < 65535 else api.port - 1
    refused = [
        "127.0.0.1:evil",
        "evil.com",
        f"evil.com:{api.port}",
        f"127.0.0.1:{other}",
        "127.0.0.1",
        "localhost",
        f"localhost.:{api.port}",
        f"127.0.0.1.evil.com:{api.port}",
        f"127.0.0.2:{api.port}",
        "",
    ]
    for host in refused:
        reply = await api.request("GET", "/api/status", host=host)
        assert reply.status == 403, (host, reply.status)
    # Host is checked before anything else: also for a login and a form post.
    login = await api.request("GET", f"/?token={api.token()}", token=False, host="evil.com")
    assert login.status == 403 and "Set-Cookie" not in login.headers
    post = await api.request(
        "POST", "/api/fetch", host="127.0.0.1:evil", headers=JSON, body=fetch_body(api)
    )
    assert post.status == 403 and api.node.fetching.transfers == {}
    for host in (
        f"127.0.0.1:{api.port}",
        f"localhost:{api.port}",
        f"[::1]:{api.port}",
        f"LocalHost:{api.port}",
    ):
        reply = await api.request("GET", "/api/status", host=host)
        assert reply.status == 200, host
    status = (await api.request("GET", "/api/status")).json()
    assert status["api"]["refused"]["host"] == len(refused) + 2


@pytest_twisted.ensureDeferred
async def test_two_host_headers_are_refused(api: Api) -> None:
    def send() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        try:
            conn.putrequest("GET", "/api/status", skip_host=True)
            conn.putheader("Host", f"127.0.0.1:{api.port}")
            conn.putheader("Host", "evil.com")
            conn.putheader("Authorization", f"Bearer {api.token()}")
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()

    assert await threads.deferToThread(send) == 403


# -- the browser's login --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_sets_an_httponly_strict_cookie_and_redirects_without_the_token(
    api: Api,
) -> None:
    reply = await api.request("GET", f"/?token={api.token()}", token=False)
    assert reply.status in (302, 303)
    assert reply.headers["Location"] == "/"
    [cookie] = reply.headers.get_all("Set-Cookie") or []
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, value = name_value.split("=", 1)
    assert name == "mcp2p_session"
    assert value and value != api.token() and api.token() not in cookie
    flags = {a.split("=")[0].lower(): a.partition("=")[2].lower() for a in attributes}
    assert "httponly" in flags
    assert flags["samesite"] == "strict"
    assert flags["path"] == "/"
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert "no-store" in reply.headers["Cache-Control"]
    browser = {"Cookie": f"mcp2p_session={value}"}
    status = await api.request("GET", "/api/status", token=False, headers=browser)
    assert status.status == 200
    page = await api.request("GET", "/", token=False, headers=browser)
    assert page.status != 401  # the status page's own answer
    wrong = await api.request("GET", "/?token=" + "A" * 43, token=False)
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers


# -- the Unix socket --------------------------------------------------------------------


def _unix_request(path: Path, method: str, url: str, headers: dict[str, str], body: Any) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    return _exchange(UnixHTTPConnection(path, timeout=10), method, url, headers, data)


@pytest_twisted.ensureDeferred
async def test_the_unix_socket_is_0660_and_needs_no_token_but_json(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    # A socket left by a daemon that died is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    top = await start_node(tmp_path, unix_socket=str(sock))
    try:
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        status = await threads.deferToThread(
            _unix_request, sock, "GET", "/api/status", {"Host": "whatever"}, None
        )
        assert status.status == 200, status.body
        assert status.json()["node_id"] == top.node.identity.node_id.hex()
        form = await threads.deferToThread(
            _unix_request,
            sock,
            "POST",
            "/api/search",
            {"Content-Type": "text/plain"},
            {"method": "sap", "pattern": "*"},
        )
        assert form.status == 415
        client = ApiClient(top.node.config.node.state_dir, unix_socket=sock)
        found = await threads.deferToThread(
            client.call, "POST", "/api/search", {"method": "sap", "pattern": "*"}
        )
        assert "servers" in found
    finally:
        await top.stopService()
    assert not sock.exists()


@pytest_twisted.ensureDeferred
async def test_a_file_at_the_socket_path_is_left_alone_and_stops_the_start(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "api.sock"
    sock.write_text("not a socket\n")
    make_node_dir(tmp_path, {})
    config = node_config(tmp_path, free_udp_port(), free_udp_port(), api={"unix_socket": str(sock)})
    top = build(config, reactor)
    with pytest.raises(SystemExit):
        top.node.api.startService()
    assert sock.read_text() == "not a socket\n"
    assert top.node.api.port is None  # the TCP port was not opened either


# -- the client and the mcp2p command -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_client_sends_the_token_and_says_what_a_401_means(api: Api) -> None:
    client = ApiClient(api.state_dir, port=api.port)
    status = await threads.deferToThread(client.call, "GET", "/api/status")
    assert status["node_id"] == api.node.identity.node_id.hex()
    assert client.login_url() == f"http://127.0.0.1:{api.port}/?token={api.token()}"
    (api.state_dir / "api.token").write_text("stale\n")
    with pytest.raises(Refused) as refused:
        await threads.deferToThread(client.call, "GET", "/api/status")
    assert refused.value.status == 401
    (api.state_dir / "api.token").unlink()
    with pytest.raises(Refused):
        await threads.deferToThread(client.call, "GET", "/api/status")
    (api.state_dir / "api.token").mkdir()
    with pytest.raises(TokenUnreadable):
        await threads.deferToThread(client.call, "GET", "/api/status")


def run_cli(*args: str, cwd: Path, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    return subprocess.run(
        [*nobody, *MCP2P, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MCP2P_CONFIG": ""},
    )


def test_the_cli_uses_the_token_prints_the_login_url_and_says_when_it_cannot_read_it() -> None:
    # A directory another user can enter (pytest's own is 0700), for the part run as nobody.
    root = Path(tempfile.mkdtemp(prefix="mcp2p-auth-"))
    try:
        root.chmod(0o755)
        make_node_dir(root, {"notes.txt": b"hi\n"})
        proc = start_daemon(root, node_ini(root, free_udp_port(), free_udp_port()))
        try:
            ini = str(root / "node.ini")
            status = run_cli("-c", ini, "status", cwd=root)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["api"]["refused"]["token"] == 0
            url = run_cli("-c", ini, "status", "--url", cwd=root)
            assert url.returncode == 0, url.stderr
            port = (root / "state" / "api.port").read_text().strip()
            token = (root / "state" / "api.token").read_text().strip()
            assert url.stdout == f"http://127.0.0.1:{port}/?token={token}\n"

            token_path = root / "state" / "api.token"
            if os.geteuid() == 0:
                if shutil.which("setpriv") is None:
                    pytest.skip("setpriv is missing: cannot run the CLI as another user")
                denied = run_cli("-c", ini, "status", cwd=root, as_nobody=True)
            else:
                token_path.chmod(0)
                denied = run_cli("-c", ini, "status", cwd=root)
                token_path.chmod(0o600)
            assert denied.returncode == 4, denied.stdout + denied.stderr
            assert denied.stderr == (
                f"mcp2p: cannot read the API token {token_path} (permission denied): "
                "run as the daemon's user, or use [api] unix_socket\n"
            )
            token_path.write_text("stale\n")
            stale = run_cli("-c", ini, "status", cwd=root)
            assert stale.returncode == 4
            assert stale.stderr.count("\n") == 1 and "HTTP 401" in stale.stderr
        finally:
            stop_daemon(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
