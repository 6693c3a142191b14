"""`mcp2p.atomicfile.write_atomic`: the one way state files are replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mcp2p.atomicfile import write_atomic


def test_writes_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        write_atomic(tmp_path / "a", b"x", 0o600)
        write_atomic(tmp_path / "b", b"y", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert (tmp_path / "a").read_bytes() == b"x"


def test_a_symlink_at_the_name_is_replaced_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"keep")
    (tmp_path / "state").symlink_to(secret)
    write_atomic(tmp_path / "state", b"new")
    assert secret.read_bytes() == b"keep"
    assert not (tmp_path / "state").is_symlink()
    assert (tmp_path / "state").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret", "state"]


def test_a_symlink_at_a_fixed_temporary_name_is_removed_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"keep")
    (tmp_path / "p.json.tmp").symlink_to(secret)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_atomic("p.json", b"{}", 0o600, dir_fd=fd, tmp_name="p.json.tmp")
    finally:
        os.close(fd)
    assert secret.read_bytes() == b"keep"
    assert (tmp_path / "p.json").read_bytes() == b"{}"
    assert not (tmp_path / "p.json.tmp").exists()


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")
    with pytest.raises(IsADirectoryError):
        (tmp_path / "d").mkdir()
        write_atomic(tmp_path / "d", b"new")  # rename over a directory fails
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]
