"""The daemon writes only where its owner allowed: ``[fetching] download_dirs``.

Each attack from issue 10 (a local user asks the daemon, maybe root, to write
elsewhere) is a request here, over real HTTP to a node in this process: the
API answers 400 naming the allowed directories, and nothing is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from mcp2p.app import build
from mcp2p.config import config_from_string, load_config
from mcp2p.errors import ConfigError
from tests.nodes import free_udp_port, make_node_dir, node_config, node_ini

SAMPLE = "debian-13.iso"


# -- [fetching] download_dirs in the config ---------------------------------------------


def test_default_is_downloads_beside_the_config(tmp_path: Path) -> None:
    ini = tmp_path / "etc" / "node.ini"
    ini.parent.mkdir()
    ini.write_text("[node]\nstate_dir = s\n")
    assert load_config(ini).fetching.download_dirs == (ini.parent.resolve() / "downloads",)


def test_a_list_relative_to_the_config_first_is_the_default(tmp_path: Path) -> None:
    text = "[fetching]\ndownload_dirs = dl, /srv/a\n  ../b\n  dl\n"
    config = config_from_string(text, "x.ini", tmp_path)
    base = tmp_path.resolve()
    assert config.fetching.download_dirs == (base / "dl", Path("/srv/a"), base / "../b")


@pytest.mark.parametrize("value", ["", " , ", "\n  ,\n"])
def test_an_empty_list_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string(f"[fetching]\ndownload_dirs ={value}\n", "x.ini")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("x.ini: [fetching] download_dirs")
    assert "a list of directories" in message


def test_the_old_key_is_refused_naming_the_new_one() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string("[fetching]\ndownload_dir = /srv/dl\n", "old.ini")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("old.ini: [fetching] download_dir is no longer read")
    assert "use download_dirs" in message
    with pytest.raises(ConfigError, match="command line: fetching.download_dir .*download_dirs"):
        config_from_string("", "x.ini", overrides=[("fetching", "download_dir", "/x")])


# -- the check, on real directories -----------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """dl (allowed), dl/sub, outside (not allowed), dl/escape -> outside,
    link -> real (an owner's symlinked download dir)."""
    dl, outside, real = tmp_path / "dl", tmp_path / "outside", tmp_path / "real"
    for d in (dl / "sub", outside, real):
        d.mkdir(parents=True)
    (dl / "escape").symlink_to(outside)
    (tmp_path / "link").symlink_to(real)
    return {"root": tmp_path, "dl": dl, "outside": outside, "real": real, "link": tmp_path / "link"}


def test_inside_or_equal_is_accepted_and_resolved(tree: dict[str, Path]) -> None:
    from mcp2p.transfer.downloads import open_out_dir

    allowed = (tree["dl"], tree["link"])
    for asked, resolved in [
        (tree["dl"], tree["dl"]),
        (tree["dl"] / "sub", tree["dl"] / "sub"),
        (tree["dl"] / "sub" / ".." / "sub", tree["dl"] / "sub"),
        (tree["link"], tree["real"]),  # the owner's symlink: where writes land counts
        (tree["real"], tree["real"]),
    ]:
        out = open_out_dir(asked, allowed)
        try:
            assert out.resolved == resolved
            assert out.real_path() == resolved
            assert os.path.samefile(out.store_path, resolved)
        finally:
            out.close()


@pytest.mark.parametrize(
    "asked",
    [
        "outside",
        "dl/../outside",
        "dl/sub/../../outside",
        "dl/escape",  # a symlink inside an allowed dir, pointing out
        "dl/escape/deeper",
        "dlx",  # a sibling whose name starts like the allowed one
        "/",
    ],
)
def test_outside_is_refused_naming_the_allowed_dirs(tree: dict[str, Path], asked: str) -> None:
    from mcp2p.transfer.downloads import OutDirRefused, open_out_dir

    path = tree["root"] / asked
    with pytest.raises(OutDirRefused) as info:
        open_out_dir(path, (tree["dl"],))
    message = str(info.value)
    assert "is not inside the directories this daemon may write to" in message
    assert f"{tree['dl']} ([fetching] download_dirs)" in message


@pytest.mark.parametrize("asked", ["dl", "./dl", "", "/tmp/a\x00b"])
def test_relative_or_nul_is_refused(tree: dict[str, Path], asked: str) -> None:
    from mcp2p.transfer.downloads import OutDirRefused, open_out_dir

    with pytest.raises(OutDirRefused, match="must be an absolute path"):
        open_out_dir(Path(asked) if "\x00" not in asked else asked, (tree["dl"],))  # type: ignore[arg-type]


def test_a_missing_subdirectory_is_refused_not_made(tree: dict[str, Path]) -> None:
    from mcp2p.transfer.downloads import OutDirRefused, open_out_dir

    with pytest.raises(OutDirRefused, match="does not exist .*create it first"):
        open_out_dir(tree["dl"] / "new" / "deeper", (tree["dl"],))
    assert not (tree["dl"] / "new").exists()


def test_a_swap_between_resolving_and_opening_is_refused(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dl/sub resolves inside dl; before it is opened, the user replaces it by a
    symlink to outside: the component walk (O_NOFOLLOW) refuses it."""
    from mcp2p.transfer import downloads

    resolve = downloads.resolve_out_dir

    def then_swap(out_dir: Path, allowed: Any) -> tuple[Path, Path]:
        result = resolve(out_dir, allowed)
        (tree["dl"] / "sub").rename(tree["dl"] / "sub.old")
        (tree["dl"] / "sub").symlink_to(tree["outside"])
        return result

    monkeypatch.setattr(downloads, "resolve_out_dir", then_swap)
    with pytest.raises(downloads.OutDirRefused, match="replaced by a symlink"):
        downloads.open_out_dir(tree["dl"] / "sub", (tree["dl"],))


def test_a_swap_after_the_check_does_not_redirect_the_store(tree: dict[str, Path]) -> None:
    """The store opens the directory the check held open, not the path again: a
    directory replaced by a symlink to outside after the check (while the fetch
    searches) gets nothing written through it."""
    from mcp2p.transfer.downloads import open_out_dir
    from mcp2p.transfer.store import PartialFile
    from tests.transfer.test_store import make_manifest

    data = os.urandom(70_000)
    manifest = make_manifest(data, name="x.bin")
    out = open_out_dir(tree["dl"] / "sub", (tree["dl"],))
    try:
        (tree["dl"] / "sub").rename(tree["dl"] / "moved")
        (tree["dl"] / "sub").symlink_to(tree["outside"])
        partial = PartialFile.open(out.store_path, tree["root"] / "state", manifest)
        for index in range(manifest.layout.blocks):
            offset, length = manifest.layout.block_span(index)
            partial.write_block(index, data[offset : offset + length])
        final = partial.finalize()
        assert out.real_path() == tree["dl"] / "moved"
        assert out.shown(str(final)) == str(tree["dl"] / "moved" / "x.bin")
    finally:
        out.close()
    assert (tree["dl"] / "moved" / "x.bin").read_bytes() == data
    assert list(tree["outside"].iterdir()) == []


# -- the API, over HTTP, to nodes in this process -------------------------------------


def _token_headers(state_dir: Path) -> dict[str, str]:
    """The bearer token, once the API has one (issue 10, part A)."""
    token = state_dir / "api.token"
    if token.is_file():
        return {"authorization": "Bearer " + token.read_text().strip()}
    return {}


def _http(port: int, state_dir: Path, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {
        "content-type": "application/json",
        "x-mcp2p": "1",  # what the API asks of scripts (issue 10, part A)
        **_token_headers(state_dir),
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class CN:
    def __init__(self, top: Any) -> None:
        self.top = top
        self.node = top.node
        self.port = top.node.api.port.getHost().port

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        state = self.node.config.node.state_dir
        return await threads.deferToThread(_http, self.port, state, method, path, body)  # type: ignore[no-any-return]

    async def fetch(self, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/api/fetch", {"target": SAMPLE, **body})

    async def wait(self, tid: int) -> dict[str, Any]:
        deadline = reactor.seconds() + 20
        while True:
            code, state = await self.call("GET", f"/api/transfers/{tid}")
            assert code == 200, state
            if state["state"] != "running":
                return state  # type: ignore[no-any-return]
            assert reactor.seconds() < deadline, state
            await task.deferLater(reactor, 0.05, lambda: None)


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    """An SN sharing SAMPLE and a CN whose download_dirs are dl and link (-> real)."""
    qport, sport = free_udp_port(), free_udp_port()
    make_node_dir(tmp_path / "sn", {SAMPLE: 150_000})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "outside").mkdir()
    rings = {"answers_wanted": "1", "ring_schedule": "1, 2"}
    sn = build(node_config(tmp_path / "sn", qport, sport, discovery=rings), reactor)
    dirs = f"{tmp_path / 'dl'}, {tmp_path / 'link'}"
    cn_config = node_config(
        tmp_path / "cn", qport, sport, discovery=rings, fetching={"download_dirs": dirs}
    )
    cn = build(cn_config, reactor)
    return tmp_path, sn, cn


async def _started(nodes: Any) -> tuple[Path, Any, CN]:
    root, sn, cn = nodes
    sn.startService()
    cn.startService()
    await sn.node.serving.ready
    return root, sn, CN(cn)


async def _stopped(sn: Any, cn: CN) -> None:
    await cn.top.stopService()
    await sn.stopService()


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest_twisted.ensureDeferred
async def test_api_refuses_out_dirs_outside_and_writes_nothing(nodes: Any) -> None:
    root, sn, cn = await _started(nodes)
    try:
        (root / "dl" / "escape").symlink_to(root / "outside")
        allowed = f"{root / 'dl'}, {root / 'link'} ([fetching] download_dirs)"
        for out_dir in [
            root / "outside",
            root / "dl" / ".." / "outside",
            root / "dl" / "escape",  # planted symlink inside an allowed dir
        ]:
            code, answer = await cn.fetch(out_dir=str(out_dir))
            assert code == 400, answer
            assert "is not inside the directories this daemon may write to" in answer["error"]
            assert answer["error"].endswith(allowed)
        code, answer = await cn.fetch(out_dir="dl")
        assert (code, answer["error"]) == (400, "out_dir must be an absolute path")
        code, answer = await cn.fetch(out_dir=str(root / "dl" / "missing"))
        assert code == 400 and "does not exist" in answer["error"]
        assert cn.node.fetching.transfers == {}  # nothing was started
        await task.deferLater(reactor, 0.5, lambda: None)  # what a fetch would take to start
        assert _files(root / "outside") == []
        assert not (root / "dl" / "missing").exists()
    finally:
        await _stopped(sn, cn)


@pytest_twisted.ensureDeferred
async def test_api_fetches_into_the_first_dir_and_inside_allowed_ones(nodes: Any) -> None:
    root, sn, cn = await _started(nodes)
    original = (root / "sn" / "share" / SAMPLE).read_bytes()
    try:
        # No out_dir: the first download dir, made by the daemon at start.
        code, answer = await cn.fetch()
        assert code == 200, answer
        state = await cn.wait(answer["id"])
        assert state["state"] == "done", state
        assert state["result"] == str(root / "dl" / SAMPLE)
        assert state["events"][-1]["path"] == str(root / "dl" / SAMPLE)
        assert (root / "dl" / SAMPLE).read_bytes() == original
        # An existing subdirectory of the second, asked for through the owner's
        # symlink: accepted, written where the symlink leads.
        (root / "real" / "isos").mkdir()
        code, answer = await cn.fetch(out_dir=str(root / "link" / "isos"))
        assert code == 200, answer
        state = await cn.wait(answer["id"])
        assert state["result"] == str(root / "real" / "isos" / SAMPLE), state
        assert (root / "real" / "isos" / SAMPLE).read_bytes() == original
        assert not any("/proc/" in json.dumps(e) for e in state["events"])
    finally:
        await _stopped(sn, cn)


# -- real daemons and the CLI -------------------------------------------------------------


def test_cli_get_through_a_daemon_default_dir_and_refusal(tmp_path: Path) -> None:
    from tests.test_daemon import mcp2p, start_daemon, stop_daemon

    qport, sport = free_udp_port(), free_udp_port()
    rings = {"answers_wanted": "1", "ring_schedule": "1, 2"}
    sn = make_node_dir(tmp_path / "sn", {SAMPLE: 120_000})
    sn_proc = start_daemon(sn, node_ini(sn, qport, sport, discovery=rings))
    try:
        cn = tmp_path / "cn"
        cn.mkdir()
        cn_proc = start_daemon(cn, node_ini(cn, qport, sport, discovery=rings))
        try:
            (cn / "mcp2p.ini").write_text((cn / "node.ini").read_text())
            # -o elsewhere: the daemon's one-line refusal, exit 2, nothing written.
            elsewhere = tmp_path / "elsewhere"
            refused = mcp2p("get", SAMPLE, "-o", str(elsewhere), cwd=cn)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            [line] = refused.stderr.splitlines()
            assert line.startswith("mcp2p: the daemon refused the request: out_dir ")
            assert line.endswith(f"{cn / 'downloads'} ([fetching] download_dirs)")
            # No -o: the daemon's first download dir, not the working directory.
            got = mcp2p("get", SAMPLE, cwd=cn)
            assert got.returncode == 0, got.stdout + got.stderr
            assert f"done: {cn / 'downloads' / SAMPLE}" in got.stdout
            assert (cn / "downloads" / SAMPLE).read_bytes() == (sn / "share" / SAMPLE).read_bytes()
            assert not (cn / SAMPLE).exists()
            assert _files(elsewhere) == []
        finally:
            stop_daemon(cn_proc)
    finally:
        assert stop_daemon(sn_proc) in (0, -signal.SIGTERM)


def test_cli_help_says_where_get_writes() -> None:
    from mcp2p.commands import MCP2P

    out = subprocess.run([*MCP2P, "get", "--help"], capture_output=True, text=True, timeout=30)
    text = " ".join(out.stdout.split())
    assert "download_dirs" in text and "--no-daemon" in text
    assert "the default is the current directory" in text
