"""display_name: names from the network shown without control or bidi characters."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p import cli
from mcp2p.core.display import display_name, display_path, display_text, parse_display_name

# What must never reach a terminal or a log line from a name.
FORBIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
DANGEROUS = st.sampled_from(
    ["\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c", "\x1b", "\x9b"]
    + ["\n", "\r", "\x00", "\x7f", "\\", "/", "-", "\udc80", "\u2028"]
)
NAMES = st.lists(st.one_of(st.characters(), DANGEROUS), max_size=40).map("".join)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("debian-13.iso", "debian-13.iso"),
        ("ünïcødé ✓ 日本.txt", "ünïcødé ✓ 日本.txt"),
        ("invoice\u202egnp.exe", "invoice\\u202egnp.exe"),
        ("\u2066a\u2069\u200e\u200f\u061c", "\\u2066a\\u2069\\u200e\\u200f\\u061c"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("csi\x9b31m", "csi\\x9b31m"),
        ("two\nlines\r", "two\\x0alines\\x0d"),
        ("-rf", "./-rf"),
        ("--help", "./--help"),
        ("a-b", "a-b"),
        ("back\\slash", "back\\\\slash"),
        ("\\u202e", "\\\\u202e"),  # the text of an escape is not an escape
        ("a/b", "a\\x2fb"),
        ("./-x", ".\\x2f-x"),  # cannot be mistaken for the prefix
        ("bad\udcff", "bad\\udcff"),
    ],
)
def test_examples(name: str, shown: str) -> None:
    assert display_name(name) == shown
    assert parse_display_name(shown) == name


@given(NAMES)
def test_output_is_safe_and_reversible(name: str) -> None:
    shown = display_name(name)
    assert not FORBIDDEN.search(shown)
    assert not shown.startswith("-")
    shown.encode("utf-8")  # printable: no lone surrogate left
    assert parse_display_name(shown) == name


@given(NAMES, NAMES)
def test_different_names_look_different(a: str, b: str) -> None:
    if a != b:
        assert display_name(a) != display_name(b)


@given(NAMES)
def test_text_and_path_keep_slashes_but_nothing_unsafe(text: str) -> None:
    assert not FORBIDDEN.search(display_text(text))
    assert "/" not in text or "/" in display_text(text)
    shown = display_path(text)
    assert not FORBIDDEN.search(shown) and not shown.startswith("-")
    assert display_path("/srv/dl/\u202eexe.txt") == "/srv/dl/\\u202eexe.txt"


def test_cli_output_shows_names_escaped() -> None:
    """print_result and Progress: a hostile name from an SN never reaches the terminal raw."""
    name = "-x\u202egpj.exe\x1b[31m"
    out, err = io.StringIO(), io.StringIO()
    show = cli.Progress(False, out, err)
    show({"event": "manifest", "name": name, "size": 10, "pieces": 1, "verified": 0})
    show({"event": "done", "path": f"/srv/dl/{name}", "elapsed": 1.0, "bytes": 10})
    show({"event": "failed", "error": f"no node offers {name}"})
    show.candidates = [{"content_id": "ab" * 32, "size": 1, "name": name, "nodes": ["n1"]}]
    show({"event": "failed", "error": "ambiguous"})
    text = out.getvalue() + err.getvalue()
    assert "./-x\\u202egpj.exe\\x1b[31m" in text
    assert not FORBIDDEN.search(text.replace("\n", ""))


def test_search_listing_shows_names_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    f = {"content_id": "cd" * 32, "size": 5, "name": "\u202eevil\n-line"}
    server = {"node_id": "ef" * 32, "address": "127.0.0.1", "distance": 1, "rtt": 0.01}
    result = {"servers": [{**server, "files": [f]}], "elapsed": 0.1, "reason": "enough"}
    assert cli.print_result(result, as_json=False) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "\\u202eevil\\x0a-line" in out
    assert not FORBIDDEN.search(out.replace("\n", ""))
    assert len(out.splitlines()) == 2  # header and one row: no forged line


def test_store_log_lines_show_names_escaped(tmp_path: Path) -> None:
    """The daemon's log: a remote name with a bidi override is written escaped."""
    import os

    from twisted.logger import formatEvent, globalLogPublisher

    from mcp2p.transfer.store import PartialFile
    from tests.transfer.test_store import make_manifest

    data = os.urandom(5000)
    manifest = make_manifest(data, name="\u202eevil\u2066.bin")
    (tmp_path / "dl").mkdir()
    lines: list[str] = []

    def observer(event: dict) -> None:  # type: ignore[type-arg]
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        partial = PartialFile.open(tmp_path / "dl", tmp_path / "state", manifest)
        for index in range(manifest.layout.blocks):
            offset, length = manifest.layout.block_span(index)
            partial.write_block(index, data[offset : offset + length])
        partial.finalize()
    finally:
        globalLogPublisher.removeObserver(observer)
    [done] = [line for line in lines if "complete at" in line]
    assert done.startswith("\\u202eevil\\u2066.bin complete at ")
    assert not FORBIDDEN.search(done)
