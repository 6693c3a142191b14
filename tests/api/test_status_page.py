"""The status page in a real headless Chromium, against two real daemons.

The CN fetches a file slowly from the SN (a rate ceiling), so that while
Chromium loads the pages a transfer is under way on one node and a session
is sending on the other. A share whose name is HTML checks that the page
writes what nodes supply as text, never as markup.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mcp2p.api import statuspage
from tests.api.helpers import Api, daemon_pair, wait_for

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian chromium is not installed (make test installs it as root: DEBS)",
)
HOSTILE = '<b id="xss">bold<i>.txt'  # a legal file name, and markup if shown as HTML
SIZE = 2_000_000
RATE = 800_000  # bit/s: the fetch takes about 20 s, the page checks a few


def chromium(page_url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium on ``page_url``; its stdout. Only loopback is reachable:
    every name but 127.0.0.1 fails to resolve, background services are off."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        page_url,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out.decode()


class Dom(HTMLParser):
    """The text of each element with an id or a data-transfer, and every tag's attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        key = a.get("id") or (f"transfer-{a['data-transfer']}" if "data-transfer" in a else None)
        if key is not None:
            self.text.setdefault(key, "")
        if tag not in ("meta", "link", "br", "img", "input"):
            self.open.append((tag, key))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self.open:
            if key is not None:
                self.text[key] += data


def load(api: Api, tmp_path: Path, name: str) -> Dom:
    html = chromium(api.page_url, tmp_path / f"profile-{name}", "--dump-dom")
    return Dom(html)


@needs_chromium
def test_status_page_shows_node_shares_session_and_transfer(tmp_path: Path) -> None:
    files = {"big.bin": SIZE, HOSTILE: b"hi\n"}
    with daemon_pair(tmp_path, files, serving={"control_port": "0", "min_rate": "100k"}) as (
        sn,
        cn,
    ):
        wait_for("both files indexed", lambda: len(sn.json("/api/catalog")["files"]) == 2)
        tid = cn.json("/api/fetch", {"target": "big.bin", "rate": RATE})["id"]
        wait_for(
            "the first bytes",
            lambda: cn.json("/api/transfers")["transfers"][0]["bytes"] > 0,
        )
        sn_id = sn.json("/api/status")["node_id"]
        cn_id = cn.json("/api/status")["node_id"]
        cn_dom = load(cn, tmp_path, "cn")
        sn_dom = load(sn, tmp_path, "sn")
        chromium(
            cn.page_url,
            tmp_path / "profile-shot",
            "--window-size=1200,800",
            f"--screenshot={tmp_path / 'cn.png'}",
        )
        state = cn.json(f"/api/transfers/{tid}", method="DELETE")["state"]
    assert state in ("running", "failed", "done")

    # The CN: who it is, the transfer under way with a progress bar, the SN as a peer.
    assert cn_dom.text["node-id"] == cn_id
    assert cn_dom.text["updated"].startswith("updated"), cn_dom.text["updated"]
    row = cn_dom.text[f"transfer-{tid}"]
    assert "big.bin" in row and ("running" in row or "done" in row), row
    assert sn_id[:12] in row  # its source
    bars = [a for tag, a in cn_dom.tags if tag == "progress"]
    assert len(bars) == 1 and bars[0]["max"] == str(SIZE)
    assert 0 < int(bars[0]["value"] or 0) <= SIZE
    assert sn_id[:12] in cn_dom.text["peers"]
    assert "127.0.0.1" in cn_dom.text["peers"]
    assert "discovery.query.searches" in cn_dom.text["counters"]

    # The SN: its shares (the hostile name as text, not markup) and the session to the CN.
    assert sn_dom.text["node-id"] == sn_id
    assert "2 files" in sn_dom.text["shares-summary"]
    assert "big.bin" in sn_dom.text["shares"]
    assert HOSTILE in sn_dom.text["shares"]
    assert "xss" not in sn_dom.text and not any(t in ("b", "i") for t, _ in sn_dom.tags)
    assert "big.bin" in sn_dom.text["sessions"] and cn_id[:12] in sn_dom.text["sessions"]
    assert "multicast" in sn_dom.text["sessions"]
    assert (tmp_path / "cn.png").stat().st_size > 10_000
    if os.environ.get("MCP2P_SCREENSHOT"):  # to look at it: MCP2P_SCREENSHOT=path.png
        shutil.copy(tmp_path / "cn.png", os.environ["MCP2P_SCREENSHOT"])


def test_page_resources_carry_a_strict_policy(tmp_path: Path) -> None:
    """The page, its script and style come from the node itself, with a CSP
    that allows nothing inline and no framing; the script never parses data as HTML."""
    with daemon_pair(tmp_path, {"a.txt": b"a\n"}) as (sn, _):
        for path, kind in (
            ("/", "text/html"),
            ("/static/status.js", "text/javascript"),
            ("/static/status.css", "text/css"),
            ("/api/overview", "application/json"),
            ("/api/transfers", "application/json"),
        ):
            code, headers, body = sn.request(path)
            assert code == 200, (path, code, body)
            assert headers["content-type"].startswith(kind)
            csp = headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
        code, _, _ = sn.request("/static/../service.py")
        assert code == 404
        code, _, _ = sn.request("/static/nothing.js")
        assert code == 404
    html = (statuspage.STATIC / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html and "http" not in html
    js = (statuspage.STATIC / "status.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js
