"""Two real daemons on loopback (an SN sharing files, a CN that fetches), and
a small HTTP client for their API that sends what the daemon asks of scripts
(the ``X-MCP2P`` header, and the bearer token when the daemon wrote one)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.nodes import free_udp_port, make_node_dir, node_ini
from tests.test_daemon import start_daemon, stop_daemon


class Api:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def port(self) -> int:
        return int((self.root / "state" / "api.port").read_text())

    @property
    def token(self) -> str | None:
        path = self.root / "state" / "api.token"
        return path.read_text().strip() if path.exists() else None

    @property
    def page_url(self) -> str:
        """The status page; its login URL once the daemon has a token."""
        token = self.token
        return f"http://127.0.0.1:{self.port}/" + (f"?token={token}" if token else "")

    def request(
        self, path: str, body: Any = None, method: str | None = None, host: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-MCP2P": "1", "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if host is not None:
            headers["Host"] = host
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def json(self, path: str, body: Any = None, method: str | None = None) -> Any:
        code, _, data = self.request(path, body, method)
        assert code == 200, (path, code, data)
        return json.loads(data)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def daemon_pair(
    tmp_path: Path, files: dict[str, int | bytes], **sn_sections: dict[str, str]
) -> Iterator[tuple[Api, Api]]:
    """An SN sharing ``files`` and a CN with nothing, each a ``twistd mcp2p`` process."""
    qport, sport = free_udp_port(), free_udp_port()
    sn = make_node_dir(tmp_path / "sn", files)
    cn = make_node_dir(tmp_path / "cn", {})
    sn_proc = start_daemon(sn, node_ini(sn, qport, sport, **sn_sections))
    try:
        cn_proc = start_daemon(cn, node_ini(cn, qport, sport))
        try:
            sn_api, cn_api = Api(sn), Api(cn)
            # The SN answers once its first scan indexed the files.
            wait_for("the SN's first scan", lambda: sn_api.json("/api/catalog")["files"])
            yield sn_api, cn_api
        finally:
            stop_daemon(cn_proc)
    finally:
        stop_daemon(sn_proc)
