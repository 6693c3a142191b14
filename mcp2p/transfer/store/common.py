"""What every part of the store shares: its errors, the piece event, the manifest it reads."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Buffer = bytes | bytearray | memoryview

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ManifestLike(Protocol):
    """What the store needs of ``mcp2p.wire.manifest.Manifest``."""

    @property
    def content_id(self) -> bytes: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def piece_length(self) -> int: ...
    @property
    def block_length(self) -> int: ...
    @property
    def piece_hashes(self) -> Sequence[bytes]: ...


class StoreError(OSError):
    """The download cannot go on in this directory (disk full, I/O error).

    ``str()`` is one line naming the file; ``errno`` is the cause's.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class VerifyError(StoreError):
    """``finalize`` found pieces that no longer verify; they are wanted again."""

    def __init__(self, message: str, pieces: list[int]) -> None:
        super().__init__(errno.EIO, message)
        self.pieces = pieces


@dataclass(frozen=True, slots=True)
class PieceEvent:
    """A piece's blocks are all in: it verified (``ok``) or is wanted again."""

    piece: int
    ok: bool


def libc_function(name: str, argtypes: list[Any]) -> Any:
    """libc's function ``name`` (errno kept for ``ctypes.get_errno``),
    returning an int and taking ``argtypes``; None where this libc has none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _store_error(exc: OSError, verb: str, path: Path) -> StoreError:
    """One line naming the file; "disk full" when that is the cause."""
    if exc.errno in _DISK_FULL:
        message = f"disk full: cannot {verb} {path} ({os.strerror(exc.errno)})"
    elif exc.errno == errno.ELOOP:
        message = f"cannot {verb} {path}: it is a symbolic link"
    else:
        message = f"cannot {verb} {path}: {exc.strerror or exc}"
    return StoreError(exc.errno, message, str(path))
