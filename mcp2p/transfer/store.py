"""PartialFile: a CN's download on disk, crash-safe, never delivering a corrupt file.

Blocks go with ``os.pwrite`` to a sparse file ``.<name>.<cid16>.part`` in
the download directory; the progress (the bitmap of *verified* pieces) goes
to ``<state_dir>/transfers/<content id hex>.json``.

A piece's blocks are gathered in one buffer in memory and the piece is
hashed there when its last block comes: a piece that verifies is written
with one ``pwrite``, one that does not never touches the disk. At most
``BUFFER_BYTES`` of buffers are held (a window of pieces in flight); when a
new piece needs one beyond that, the buffer touched longest ago is spilled:
its blocks are written where they belong and the piece goes on on disk
(read back into a buffer when its next block comes, or read back and
hashed on disk when it completes there). Pieces larger than a quarter of
the window are assembled on disk, block by block, as before.

Crash safety rests on one ordering: a piece is marked verified in the
progress file only after its bytes were hashed, written and
``fdatasync``'ed; the progress file is replaced atomically (temp file,
fsync, rename, fsync of the directory). Marks are batched (at most
``FLUSH_PIECES`` pieces or ``FLUSH_SECONDS`` between flushes, and always at
close; finalize removes the file), so a ``kill -9`` loses at most the unflushed marks, whose
pieces are fetched again; it can never make unverified bytes count as good.
Starting over (no usable progress, or a part file missing, wrong-sized
or not ours: see below) first replaces the progress file with an empty one, so old marks never
apply to new bytes. ``finalize`` hashes the whole file once more before
it gets its final name (see there), so even a part file changed behind our back
between runs is caught.

Blocks of pieces not yet verified that are held in memory are not
recorded (the progress file's ``written`` map marks only blocks on disk):
after a crash they are wanted again, at most the window. ``close`` spills
them first, so a clean stop keeps them.

A hostile local user may write in the download directory (a /tmp-like
directory, sticky or not) and plant symlinks, hard links or FIFOs under the
names we use; the daemon may run as root. The rules, each one tested:

- The download directory is opened once (``open``) and every later
  operation is relative to that directory fd (``dir_fd=``). The path given
  (configured by the owner, or the ``out_dir`` of a request) is resolved by
  the kernel once, at open, symlinks included: legitimate symlinked
  directories are common (``~/Downloads`` -> ``/data/dl``), and refusing a
  symlink as the last component only would not stop a swapped parent
  anyway. Nothing created afterwards is ever followed, and a directory
  moved or replaced by a symlink after open keeps receiving the file (the
  fd holds the original; ``finalize`` returns where it really is). A
  missing directory is a ``StoreError``: a request never makes the daemon
  create directories (the configured one is created at daemon start).
- New files (the part file, the progress temp file) are created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` after unlinking the name (the name only:
  unlinking a symlink or a hard link never touches its target's content).
- The part file is reopened on resume with ``O_NOFOLLOW|O_NONBLOCK`` (a
  FIFO there neither blocks nor is used) and kept only if ``fstat`` shows a
  regular file owned by our euid with one link and the expected size;
  anything else is started over under a fresh file.
- The final name is made with ``link(part, final)`` then ``unlink(part)``:
  ``link`` fails with EEXIST if anything, even a dangling symlink, has that
  name, so nothing is ever replaced or written through, and the next
  ``<stem> (n)<suffix>`` is tried. Chosen over ``renameat2(RENAME_NOREPLACE)``
  because it is plain ``os`` (no ctypes) and works on NFS, which has no
  RENAME_NOREPLACE; a crash between the link and the unlink leaves a part
  file with two links, which the next run starts over and ``finalize`` then
  finds identical to the delivered file. File systems without hard links
  (FAT, some FUSE) fall back to ``renameat2(RENAME_NOREPLACE)`` through
  ctypes; with neither, ``finalize`` fails and leaves the verified part
  file, rather than risk replacing a file. Before linking, the part name is
  checked to still hold our inode, so a part file swapped behind our back
  is not delivered (a window remains between that check and the link, in a
  directory without the sticky bit, where that user could as well replace
  the delivered file afterwards: nothing of ours is written through).
- Files are created with mode 0o644 (so 0o644 & ~umask): a download made
  for another local user (``out_dir`` in their directory) is readable by
  them under the usual umask 022; the daemon's umask may restrict it
  further (077 gives 0o600), and no umask makes it group- or
  world-writable, which would let others change a verified file.
  Progress files are the daemon's own: 0o600, in a ``transfers`` directory
  created 0o700, opened with ``O_NOFOLLOW`` and required to be ours.
- An existing file counts as "identical, keep it" only if it is a regular
  file we own, not world-writable: a copy planted by someone else could be
  changed by them after we hand its path out.

Synchronous and free of Twisted except for the logger; the owner calls
``flush_due``/``flush`` from a timer if it wants marks flushed when no
piece completes for a while. ``finalize`` hashes the whole file (about
13 ms for 50 MB from the page cache here); for very large files the owner
may run it in a thread, as it touches only this object's files.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import functools
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

from mcp2p.atomicfile import write_atomic
from mcp2p.core.display import display_name, display_path
from mcp2p.wire.layout import Layout
from mcp2p.wire.merkle import hash_piece, merkle_root, piece_hashes
from mcp2p.wire.types import MAX_NAME_BYTES, check_name

Buffer = bytes | bytearray | memoryview

PROGRESS_VERSION = 1
BUFFER_BYTES = 32 << 20  # pieces in flight held in memory, at most (bytes)
FLUSH_PIECES = 16
FLUSH_SECONDS = 0.5
# Give up looking for a free "<stem> (n)<suffix>" after this many.
MAX_COLLISIONS = 1000

# New part files and the final file (through the link): see the module docstring.
FILE_MODE = 0o644
PROGRESS_MODE = 0o600
TRANSFERS = "transfers"

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Reopening a name someone else may have planted: never through a symlink,
# and a FIFO there must not block the open (fstat then refuses it).
_REOPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# link() errors meaning "this file system has no hard links" (vfat says EPERM).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
RENAME_NOREPLACE = 1  # <linux/fs.h>
# bytearray of 0/1 <-> bytes of "0"/"1", for packing the bitmap in C speed.
_TO_DIGITS = bytes.maketrans(b"\x00\x01", b"01")
_FROM_DIGITS = bytes.maketrans(b"01", b"\x00\x01")
_INVERT = bytes.maketrans(b"\x00\x01", b"\x01\x00")


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


def _store_error(exc: OSError, verb: str, path: Path) -> StoreError:
    """One line naming the file; "disk full" when that is the cause."""
    if exc.errno in _DISK_FULL:
        message = f"disk full: cannot {verb} {path} ({os.strerror(exc.errno)})"
    elif exc.errno == errno.ELOOP:
        message = f"cannot {verb} {path}: it is a symbolic link"
    else:
        message = f"cannot {verb} {path}: {exc.strerror or exc}"
    return StoreError(exc.errno, message, str(path))


def _fit_name(name: str, room: int) -> str:
    """``name`` cut (at a character boundary) to ``room`` UTF-8 bytes."""
    raw = name.encode("utf-8")
    if len(raw) <= room:
        return name
    return raw[:room].decode("utf-8", "ignore")


def part_name(name: str, content_id: bytes) -> str:
    """``.<name>.<first 16 hex of content id>.part``, the name cut to fit 255 bytes."""
    tail = f".{content_id.hex()[:16]}.part"
    return "." + _fit_name(name, MAX_NAME_BYTES - 1 - len(tail)) + tail


def collision_name(name: str, n: int) -> str:
    """``<stem> (n)<suffix>``, the stem cut so the name fits 255 bytes."""
    path = Path(name)
    stem, suffix = path.stem, path.suffix
    extra = f" ({n}){suffix}"
    return _fit_name(stem, MAX_NAME_BYTES - len(extra.encode("utf-8"))) + extra


def _temp_of(name: str) -> str:
    return name + ".tmp"


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes.append(ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """``renameat2(..., RENAME_NOREPLACE)``: ``FileExistsError`` if ``dst`` exists (even
    as a dangling symlink); ENOSYS or EINVAL where the kernel, libc or file system
    cannot."""
    function = _renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    encoded = os.fsencode(src), os.fsencode(dst)
    if function(src_dir_fd, encoded[0], dst_dir_fd, encoded[1], RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)


def _open_download_dir(path: Path) -> int:
    """The download directory as an fd; never created here (see the module docstring)."""
    try:
        return os.open(path, _OPEN_DIR)
    except FileNotFoundError as exc:
        raise StoreError(
            errno.ENOENT, f"download directory {path} does not exist", str(path)
        ) from exc
    except NotADirectoryError as exc:
        raise StoreError(
            errno.ENOTDIR, f"download directory {path} is not a directory", str(path)
        ) from exc
    except OSError as exc:
        raise _store_error(exc, "open download directory", path) from exc


def _open_progress_dir(state_dir: Path) -> int:
    """``<state_dir>/transfers`` as an fd: made 0o700 if missing, never a symlink, ours."""
    path = state_dir / TRANSFERS
    try:
        state_dir.mkdir(parents=True, exist_ok=True)  # the daemon's own, from its config
        state_fd = os.open(state_dir, _OPEN_DIR)
        try:
            try:
                os.mkdir(TRANSFERS, 0o700, dir_fd=state_fd)
            except FileExistsError:
                pass
            try:
                fd = os.open(TRANSFERS, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=state_fd)
            except NotADirectoryError:  # what O_DIRECTORY|O_NOFOLLOW says of a symlink
                if stat.S_ISLNK(os.stat(TRANSFERS, dir_fd=state_fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
        finally:
            os.close(state_fd)
    except OSError as exc:
        raise _store_error(exc, "open", path) from exc
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise StoreError(errno.EPERM, f"{path} belongs to uid {owner}, not to us", str(path))
    return fd


def _not_our_part(info: os.stat_result, size: int) -> str | None:
    """Why the file at the part name cannot be resumed, or None."""
    if not stat.S_ISREG(info.st_mode):
        return "the part file is not a regular file"
    if info.st_uid != os.geteuid():
        return f"the part file belongs to uid {info.st_uid}"
    if info.st_nlink != 1:
        return f"the part file has {info.st_nlink} links"
    if info.st_size != size:
        return f"the part file has {info.st_size} bytes, expected {size}"
    return None


def encode_bitmap(bits: bytearray) -> str:
    """0/1 bytes -> base64 of a little-endian bit string (bit i = piece i)."""
    digits = bits.translate(_TO_DIGITS)[::-1]
    value = int(digits, 2) if digits else 0
    return base64.b64encode(value.to_bytes((len(bits) + 7) // 8, "little")).decode("ascii")


def decode_bitmap(text: str, count: int) -> bytearray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"bitmap is {len(raw)} bytes, expected {(count + 7) // 8}")
    value = int.from_bytes(raw, "little")
    if value >> count:
        raise ValueError("bitmap has bits beyond the last piece")
    digits = format(value, f"0{count}b")[::-1] if count else ""
    return bytearray(digits.encode("ascii").translate(_FROM_DIGITS))


@dataclass(slots=True)
class _Files:
    """Where a download's files are: directory fds and the names in them."""

    download_dir: Path
    dir_fd: int
    part: str
    final: str
    progress_dir: Path
    progress_fd: int
    progress: str

    @property
    def progress_path(self) -> Path:
        return self.progress_dir / self.progress

    def close(self) -> None:
        for fd in (self.dir_fd, self.progress_fd):
            if fd >= 0:
                os.close(fd)
        self.dir_fd = self.progress_fd = -1


class PartialFile:
    """One download in progress; see the module docstring for the guarantees.

    State: ``_written[i]`` is 1 for a block written since its piece was last
    reset, and for every block of a verified piece; ``_left[p]`` counts the
    blocks of unverified piece ``p`` still to come; ``_verified[p]`` is 1 for
    a verified piece, ``_unflushed`` counts verified pieces not yet in the
    progress file.
    """

    _log = Logger()

    def __init__(
        self,
        manifest: ManifestLike,
        files: _Files,
        fd: int,
        verified: bytearray,
        clock: Callable[[], float],
    ) -> None:
        self.manifest = manifest
        self.layout = layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
        self._files = files
        # Paths for messages and the caller; the files are reached through the fds.
        self.part_path = files.download_dir / files.part
        self.final_path = files.download_dir / files.final
        self.progress_path = files.progress_path
        self._fd = fd
        info = os.fstat(fd)
        self._inode = (info.st_dev, info.st_ino)
        self._hard_links = True
        self._clock = clock
        self._size = layout.size
        self._piece_length = layout.piece_length
        self._block_length = layout.block_length
        self._bpp = layout.blocks_per_piece
        self._nblocks = layout.blocks
        self._hashes = tuple(manifest.piece_hashes)
        self._verified = verified
        self._written = bytearray(self._nblocks)
        self._left = [layout.blocks_in_piece(p) for p in range(layout.pieces)]
        self._verified_count = 0
        self._bytes_verified = 0
        for piece in itertools.compress(range(layout.pieces), verified):
            self._mark_verified(piece)
        self._unflushed = 0
        self._dirty_blocks = 0
        self._last_flush = clock()
        self._written_blocks = 0
        self._duplicates = 0
        self._bad_pieces = 0
        self._closed = False
        # piece -> its buffer (blocks gathered in memory), oldest touched first
        self._buffers: dict[int, bytearray] = {}
        self._spare: list[bytearray] = []  # buffers to reuse (at most the window)
        self._max_buffers = (
            BUFFER_BYTES // self._piece_length if 4 * self._piece_length <= BUFFER_BYTES else 0
        )
        self._spilled = 0
        self._last_piece = layout.pieces - 1
        self._last_blocks = layout.blocks_in_piece(self._last_piece)

    def _keep_written(self, written: bytearray) -> None:
        """Take back the blocks a previous run wrote in unverified pieces; a piece
        they complete is checked now."""
        complete = []
        for piece in range(self.layout.pieces):
            if self._verified[piece]:
                continue
            blocks = self.layout.piece_blocks(piece)
            held = written[blocks.start : blocks.stop]
            count = held.count(1)
            if count:
                self._written[blocks.start : blocks.stop] = held
                self._left[piece] -= count
                if self._left[piece] == 0:
                    complete.append(piece)
        for piece in complete:
            event = self._check_piece(piece)
            if not event.ok:
                self._log.info(
                    "kept blocks of piece {piece} were wrong: fetching it again", piece=piece
                )

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        download_dir: Path,
        state_dir: Path,
        manifest: ManifestLike,
        clock: Callable[[], float] = time.monotonic,
    ) -> PartialFile:
        """Resume the download of ``manifest`` if its files are intact, else start over."""
        name = check_name(manifest.name)
        layout = Layout(manifest.size, manifest.piece_length, manifest.block_length)
        if len(manifest.content_id) != 32:
            raise ValueError("content_id must be 32 bytes")
        if len(manifest.piece_hashes) != layout.pieces:
            raise ValueError(
                f"manifest has {len(manifest.piece_hashes)} piece hashes for {layout.pieces} pieces"
            )
        if merkle_root(list(manifest.piece_hashes)) != manifest.content_id:
            raise ValueError("manifest piece hashes do not match its content id")
        download_dir = Path(download_dir)
        final = name
        part = part_name(name, manifest.content_id)
        # check_name forbids "/", "." and "..", so this holds; keep it so it stays so.
        if (download_dir / final).parent != download_dir or "/" in part:
            raise ValueError(f"name {name!r} leaves the download directory")
        dir_fd = _open_download_dir(download_dir)
        try:
            progress_fd = _open_progress_dir(Path(state_dir))
        except BaseException:
            os.close(dir_fd)
            raise
        files = _Files(
            download_dir,
            dir_fd,
            part,
            final,
            Path(state_dir) / TRANSFERS,
            progress_fd,
            f"{manifest.content_id.hex()}.json",
        )
        try:
            return cls._open_files(files, manifest, layout, clock)
        except BaseException:
            files.close()
            raise

    @classmethod
    def _open_files(
        cls, files: _Files, manifest: ManifestLike, layout: Layout, clock: Callable[[], float]
    ) -> PartialFile:
        name = files.final
        verified, written, why = cls._load_progress(files, manifest, layout.pieces)
        fd = -1
        if verified is not None:
            fd, why = cls._reopen_part(files, manifest.size)
            if why is not None:
                verified = None
        if verified is not None:
            cls._log.info(
                "resuming {name}: {verified} of {pieces} pieces verified",
                name=display_name(name),
                verified=sum(verified),
                pieces=layout.pieces,
            )
        else:
            if why is not None:
                cls._log.warn("starting {name} over: {why}", name=display_name(name), why=why)
            verified = bytearray(layout.pieces)
            # Old marks go first, durably, so they never describe new bytes.
            cls._write_progress(files, manifest, verified)
            fd = cls._create_part(files, manifest.size)
        if verified is None or why is not None:
            written = None
        partial = None
        try:
            partial = cls(manifest, files, fd, verified, clock)
            if written is not None:
                partial._keep_written(written)
            if (
                manifest.size == 0
                and not partial.complete
                and manifest.piece_hashes[0] == hash_piece(b"")
            ):
                # The empty file's one piece needs no block: it is verified already.
                partial._piece_verified(0)
        except BaseException:
            if partial is None:
                os.close(fd)
            else:
                partial._close_fd()
            raise
        return partial

    @staticmethod
    def _reopen_part(files: _Files, size: int) -> tuple[int, str | None]:
        """(fd, None) for our own intact part file, else (-1, why not)."""
        try:
            fd = os.open(files.part, os.O_RDWR | _REOPEN, dir_fd=files.dir_fd)
        except FileNotFoundError:
            return -1, "the part file is missing"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return -1, "the part file is a symbolic link"
            return -1, f"the part file cannot be opened ({exc.strerror})"
        try:
            why = _not_our_part(os.fstat(fd), size)
            if why is None:
                os.set_blocking(fd, True)
                return fd, None
        except OSError as exc:
            why = f"the part file cannot be read ({exc.strerror})"
        os.close(fd)
        return -1, why

    @staticmethod
    def _create_part(files: _Files, size: int) -> int:
        """A new, empty part file of ``size`` bytes; whatever had its name is unlinked
        first (the name only: a symlink's or hard link's target is untouched)."""
        path = files.download_dir / files.part
        try:
            os.unlink(files.part, dir_fd=files.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _store_error(exc, "remove", path) from exc
        try:
            fd = os.open(files.part, os.O_RDWR | _CREATE, FILE_MODE, dir_fd=files.dir_fd)
        except OSError as exc:
            raise _store_error(exc, "create", path) from exc
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise _store_error(exc, "allocate", path) from exc
        return fd

    @staticmethod
    def _load_progress(
        files: _Files, manifest: ManifestLike, pieces: int
    ) -> tuple[bytearray | None, bytearray | None, str | None]:
        """(verified pieces, written blocks or None, None), or (None, None, why not)."""
        try:
            fd = os.open(files.progress, os.O_RDONLY | _REOPEN, dir_fd=files.progress_fd)
        except FileNotFoundError:
            return None, None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None, None, "progress file unreadable (a symbolic link)"
            return None, None, f"progress file unreadable ({exc.strerror})"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, None, "progress file unreadable (not a regular file)"
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            raw = b"".join(chunks)
        except OSError as exc:
            return None, None, f"progress file unreadable ({exc.strerror})"
        finally:
            os.close(fd)
        try:
            state = json.loads(raw)
            if not isinstance(state, dict):
                raise ValueError("not an object")
            expected = {
                "version": PROGRESS_VERSION,
                "content_id": manifest.content_id.hex(),
                "size": manifest.size,
                "piece_length": manifest.piece_length,
                "block_length": manifest.block_length,
            }
            for key, value in expected.items():
                if state.get(key) != value:
                    raise ValueError(f"{key} is {state.get(key)!r}, expected {value!r}")
            verified = decode_bitmap(state["verified"], pieces)
            written = state.get("written")
            blocks = Layout(manifest.size, manifest.piece_length, manifest.block_length).blocks
            held = decode_bitmap(written, blocks) if isinstance(written, str) else None
        except (ValueError, KeyError, TypeError) as exc:
            return None, None, f"progress file unusable ({exc})"
        return verified, held, None

    @staticmethod
    def _write_progress(
        files: _Files,
        manifest: ManifestLike,
        verified: bytearray,
        written: bytearray | None = None,
    ) -> None:
        """Replace the progress file atomically and durably.

        ``written`` marks blocks held in pieces not yet verified: after a crash
        they are kept, and a piece whose kept blocks turn out wrong simply fails
        its hash and is fetched again, so keeping them risks nothing."""
        state = {
            "version": PROGRESS_VERSION,
            "content_id": manifest.content_id.hex(),
            "name": manifest.name,
            "size": manifest.size,
            "piece_length": manifest.piece_length,
            "block_length": manifest.block_length,
            "verified": encode_bitmap(verified),
        }
        if written is not None:
            state["written"] = encode_bitmap(written)
        data = json.dumps(state, separators=(",", ":")).encode("utf-8")
        try:
            write_atomic(
                files.progress,
                data,
                PROGRESS_MODE,
                dir_fd=files.progress_fd,
                tmp_name=_temp_of(files.progress),
            )
        except OSError as exc:
            raise _store_error(exc, "write", files.progress_path) from exc

    # -- the per-packet path -----------------------------------------------

    def write_block(self, index: int, data: Buffer) -> PieceEvent | None:
        """Store block ``index``; a ``PieceEvent`` when it completes its piece.

        ``ValueError`` for an index out of range or a length that is not the
        block's; ``None`` (counted) for a block already held.
        """
        if not 0 <= index < self._nblocks:
            raise ValueError(f"block {index} is outside 0..{self._nblocks - 1}")
        if self._fd < 0:
            raise StoreError(errno.EBADF, f"{self.part_path} is closed", str(self.part_path))
        if self._written[index]:
            self._duplicates += 1
            return None
        piece, block = divmod(index, self._bpp)
        start = block * self._block_length
        end = start + self._block_length
        if end > self._piece_length:
            end = self._piece_length
        base = piece * self._piece_length
        if base + end > self._size:
            end = self._size - base
        length = end - start
        if len(data) != length:
            raise ValueError(f"block {index} must be {length} bytes, got {len(data)}")
        buffer = self._buffers.get(piece)
        if buffer is None:
            buffer = self._buffer_for(piece)
        if buffer is not None:
            buffer[start:end] = data
        else:
            self._write_all(memoryview(data), base + start)
            self._dirty_blocks += 1
        self._written[index] = 1
        self._written_blocks += 1
        left = self._left[piece] - 1
        self._left[piece] = left
        if left:
            return None
        return self._check_piece(piece)

    def write_blocks(
        self, items: Iterable[tuple[int, int, Buffer]]
    ) -> tuple[list[PieceEvent], int]:
        """Store ``(piece, block in piece, data)`` blocks: the pieces they
        completed, and how many were refused (no such block, wrong length).

        ``write_block`` for a batch, inlined (this is the per-packet path)."""
        if self._fd < 0:
            raise StoreError(errno.EBADF, f"{self.part_path} is closed", str(self.part_path))
        events: list[PieceEvent] = []
        bad = duplicates = wrote = 0
        bpp, last, last_blocks = self._bpp, self._last_piece, self._last_blocks
        block_length, piece_length, size = self._block_length, self._piece_length, self._size
        written, left, buffers = self._written, self._left, self._buffers
        for piece, block, data in items:
            if not (0 <= piece < last and 0 <= block < bpp) and not (
                piece == last and 0 <= block < last_blocks
            ):
                bad += 1
                continue
            index = piece * bpp + block
            if written[index]:
                duplicates += 1
                continue
            start = block * block_length
            end = start + block_length
            if end > piece_length:
                end = piece_length
            base = piece * piece_length
            if base + end > size:
                end = size - base
            if len(data) != end - start:
                bad += 1
                continue
            buffer = buffers.get(piece)
            if buffer is None:
                buffer = self._buffer_for(piece)
                if buffer is None:  # assembled on disk
                    event = self.write_block(index, data)
                    if event is not None:
                        events.append(event)
                    continue
            buffer[start:end] = data
            written[index] = 1
            wrote += 1
            remaining = left[piece] - 1
            left[piece] = remaining
            if not remaining:
                self._written_blocks += wrote
                wrote = 0
                events.append(self._check_piece(piece))
        self._written_blocks += wrote
        self._duplicates += duplicates
        return events, bad

    def _buffer_for(self, piece: int) -> bytearray | None:
        """A buffer for ``piece`` (its blocks on disk read in), or None: assemble
        it on disk (a large piece, or no window)."""
        if not self._max_buffers:
            return None
        while len(self._buffers) >= self._max_buffers:
            self._spill(next(iter(self._buffers)))
        buffer = self._spare.pop() if self._spare else bytearray(self._piece_length)
        blocks = self.layout.piece_blocks(piece)
        if self._written.find(1, blocks.start, blocks.stop) != -1:
            size = self.layout.piece_size(piece)
            offset = piece * self._piece_length
            try:
                got = os.preadv(self._fd, [memoryview(buffer)[:size]], offset)
            except OSError as exc:
                self._spare.append(buffer)
                raise _store_error(exc, "read", self.part_path) from exc
            if got != size:
                self._spare.append(buffer)
                raise StoreError(
                    errno.EIO, f"{self.part_path} is shorter than expected", str(self.part_path)
                )
        self._buffers[piece] = buffer
        return buffer

    def _spill(self, piece: int) -> None:
        """Write the blocks ``piece`` holds in memory to the part file; it goes on on disk."""
        buffer = self._buffers.pop(piece)
        blocks = self.layout.piece_blocks(piece)
        written = self._written
        view = memoryview(buffer)
        base = piece * self._piece_length
        size = self.layout.piece_size(piece)
        start = written.find(1, blocks.start, blocks.stop)
        while start != -1:
            stop = written.find(0, start, blocks.stop)
            if stop == -1:
                stop = blocks.stop
            a = (start - blocks.start) * self._block_length
            b = min((stop - blocks.start) * self._block_length, size)
            self._write_all(view[a:b], base + a)
            self._dirty_blocks += stop - start
            start = written.find(1, stop, blocks.stop)
        self._spilled += 1
        self._recycle(buffer)

    def _recycle(self, buffer: bytearray) -> None:
        if len(self._spare) + len(self._buffers) < self._max_buffers:
            self._spare.append(buffer)

    def _on_disk(self) -> bytearray:
        """``_written`` without the blocks held only in memory."""
        if not self._buffers:
            return self._written
        written = bytearray(self._written)
        for piece in self._buffers:
            blocks = self.layout.piece_blocks(piece)
            written[blocks.start : blocks.stop] = bytes(len(blocks))
        return written

    def write_piece(self, piece: int, data: Buffer) -> PieceEvent | None:
        """Store a whole piece (a block code's output), verified before it is written.

        ``None`` (counted as a duplicate) if the piece is already verified; a
        piece that does not verify touches nothing on disk.
        """
        size = self.layout.piece_size(piece)
        if len(data) != size:
            raise ValueError(f"piece {piece} must be {size} bytes, got {len(data)}")
        if self._verified[piece]:
            self._duplicates += 1
            return None
        if hash_piece(data) != self._hashes[piece]:
            self._bad_pieces += 1
            return PieceEvent(piece, False)
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            self._recycle(buffer)
        self._write_all(memoryview(data), piece * self._piece_length)
        blocks = self.layout.piece_blocks(piece)
        self._written_blocks += self._left[piece]
        self._written[blocks.start : blocks.stop] = b"\x01" * len(blocks)
        self._piece_verified(piece)
        return PieceEvent(piece, True)

    def _write_all(self, data: memoryview, offset: int) -> None:
        try:
            while data:
                done = os.pwrite(self._fd, data, offset)
                data = data[done:]
                offset += done
        except OSError as exc:
            raise _store_error(exc, "write", self.part_path) from exc

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _store_error(exc, "read", self.part_path) from exc
        if len(data) != length:
            raise StoreError(
                errno.EIO, f"{self.part_path} is shorter than expected", str(self.part_path)
            )
        return data

    def _check_piece(self, piece: int) -> PieceEvent:
        """All blocks of ``piece`` are in: read it back and hash it."""
        offset = piece * self._piece_length
        size = min(self._piece_length, self._size - offset)
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            # In memory: hashed there, written once if good, never if bad.
            data = memoryview(buffer)[:size]
            good = hash_piece(data) == self._hashes[piece]
            try:
                if good:
                    self._write_all(data, offset)
            except StoreError:
                self._forget(piece)  # none of it is held: all wanted again
                raise
            finally:
                data.release()
                self._recycle(buffer)
        else:
            good = hash_piece(self._read(offset, size)) == self._hashes[piece]
        if good:
            self._piece_verified(piece)
            return PieceEvent(piece, True)
        self._bad_pieces += 1
        self._forget(piece)
        return PieceEvent(piece, False)

    def forget(self, piece: int) -> None:
        """Drop the written but unverified blocks of ``piece``: they are wanted again
        (the CN learned that one of the SNs that sent them lies)."""
        if not self.is_verified(piece):
            self._forget(piece)

    def _forget(self, piece: int) -> None:
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            self._recycle(buffer)
        blocks = self.layout.piece_blocks(piece)
        self._written[blocks.start : blocks.stop] = bytes(len(blocks))
        self._left[piece] = len(blocks)

    def _mark_verified(self, piece: int) -> None:
        blocks = self.layout.piece_blocks(piece)
        self._written[blocks.start : blocks.stop] = b"\x01" * len(blocks)
        self._left[piece] = 0
        self._verified[piece] = 1
        self._verified_count += 1
        self._bytes_verified += self.layout.piece_size(piece)

    def _piece_verified(self, piece: int) -> None:
        self._mark_verified(piece)
        self._unflushed += 1
        if self._unflushed >= FLUSH_PIECES or self.flush_due():
            self.flush()

    # -- progress ----------------------------------------------------------

    def flush_due(self) -> bool:
        """Verified marks are waiting and ``FLUSH_SECONDS`` passed since the last flush."""
        waiting = self._unflushed or self._dirty_blocks
        return bool(waiting) and self._clock() - self._last_flush >= FLUSH_SECONDS

    def flush(self) -> None:
        """Make the data durable, then record the verified pieces (in that order)."""
        if self._closed:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _store_error(exc, "sync", self.part_path) from exc
        self._write_progress(self._files, self.manifest, self._verified, self._on_disk())
        self._unflushed = 0
        self._dirty_blocks = 0
        self._last_flush = self._clock()

    # -- state -------------------------------------------------------------

    def missing_blocks(self) -> set[int]:
        """Blocks not yet written in unverified pieces (the wanted map)."""
        return set(itertools.compress(range(self._nblocks), self._written.translate(_INVERT)))

    def missing_block_ranges(self) -> Iterator[tuple[int, int]]:
        """The missing blocks as ``(start, stop)`` runs, without a set of every index."""
        written = self._written
        start = written.find(0)
        while start != -1:
            stop = written.find(1, start)
            if stop == -1:
                stop = len(written)
            yield start, stop
            start = written.find(0, stop)

    def missing_pieces(self) -> list[int]:
        """Unverified pieces, in order."""
        return list(
            itertools.compress(range(self.layout.pieces), self._verified.translate(_INVERT))
        )

    def is_verified(self, piece: int) -> bool:
        return bool(self._verified[piece])

    @property
    def verified_pieces(self) -> int:
        return self._verified_count

    @property
    def bytes_verified(self) -> int:
        return self._bytes_verified

    @property
    def complete(self) -> bool:
        return self._verified_count == self.layout.pieces

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def counters(self) -> dict[str, int]:
        return {
            "written": self._written_blocks,
            "duplicates": self._duplicates,
            "bad_pieces": self._bad_pieces,
        }

    @property
    def buffered(self) -> tuple[int, int]:
        """(pieces held in memory now, pieces spilled to disk so far)."""
        return len(self._buffers), self._spilled

    # -- the end -----------------------------------------------------------

    def finalize(self) -> Path:
        """Check the whole file once more, then move it to its final name.

        Every piece is hashed again from disk and the Merkle root of those
        hashes must be the content id: this catches a part file changed
        between runs and costs one read of the file (about 2-3 GB/s from
        the page cache), small beside the download. A piece that fails is
        wanted again and ``VerifyError`` is raised. An existing file of the
        same name (even a dangling symlink) is never replaced or followed:
        identical content in a regular file of ours means the part is
        dropped; anything else means ``<stem> (n)<suffix>``. The path
        returned is where the file really is (see ``download_dir_now``).
        """
        if self._closed:
            raise ValueError(f"{self.part_path} is closed")
        if not self.complete:
            raise ValueError(
                f"{self.final_path.name}: {self.layout.pieces - self._verified_count} "
                "pieces missing"
            )
        hashes = self._hash_file(self._fd, self.part_path)
        bad = [
            p for p, (got, want) in enumerate(zip(hashes, self._hashes, strict=True)) if got != want
        ]
        if bad:
            for piece in bad:
                self._verified[piece] = 0
                self._verified_count -= 1
                self._bytes_verified -= self.layout.piece_size(piece)
                self._forget(piece)
            self._bad_pieces += len(bad)
            self.flush()
            raise VerifyError(
                f"{self.part_path}: {len(bad)} pieces no longer verify, wanted again", bad
            )
        if merkle_root(hashes) != self.manifest.content_id:  # pragma: no cover - open checks
            raise VerifyError(f"{self.part_path}: content id does not verify", [])
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _store_error(exc, "sync", self.part_path) from exc
        final = self._move_into_place()
        self._close_fd()
        self._remove_progress()
        self._files.close()
        self._log.info(
            "{name} complete at {path}",
            name=display_name(self.manifest.name),
            path=display_path(final),
        )
        return final

    def _hash_file(self, fd: int, path: Path) -> list[bytes]:
        position = 0

        def read(n: int) -> bytes:
            nonlocal position
            try:
                data = os.pread(fd, n, position)
            except OSError as exc:
                raise _store_error(exc, "read", path) from exc
            position += len(data)
            return data

        return piece_hashes(read, self._size, self._piece_length)

    def _same_content(self, name: str) -> bool:
        """Is ``name`` a regular file of ours, not world-writable, holding exactly our
        content? A copy someone else owns could change after we hand out its path."""
        try:
            fd = os.open(name, os.O_RDONLY | _REOPEN, dir_fd=self._dir_fd)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if not (
                stat.S_ISREG(info.st_mode)
                and info.st_size == self._size
                and info.st_uid == os.geteuid()
                and not info.st_mode & stat.S_IWOTH
            ):
                return False
            try:
                return (
                    merkle_root(self._hash_file(fd, self.download_dir / name))
                    == self.manifest.content_id
                )
            except (OSError, EOFError):
                return False
        finally:
            os.close(fd)

    def _move_into_place(self) -> Path:
        """Give the verified part a free final name, never replacing anything, drop the part."""
        name = self._files.final
        for n in range(MAX_COLLISIONS + 1):
            target = name if n == 0 else collision_name(name, n)
            assert "/" not in target
            try:
                self._place(target)
            except FileExistsError:
                # Taken, even by a dangling symlink: ours already, or the next name.
                if self._same_content(target):
                    self._unlink_part()
                    return self.download_dir_now() / target
                continue
            return self.download_dir_now() / target
        raise StoreError(
            errno.EEXIST, f"no free name for {name} in {self.download_dir}", str(self.final_path)
        )

    def _place(self, target: str) -> None:
        """Make ``target`` name the part file: ``FileExistsError`` if anything has that name."""
        self._check_part_name()
        directory = self._dir_fd
        path = self.download_dir / target
        if self._hard_links:
            try:
                os.link(
                    self._files.part,
                    target,
                    src_dir_fd=directory,
                    dst_dir_fd=directory,
                    follow_symlinks=False,
                )
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise _store_error(exc, "link", path) from exc
                self._hard_links = False
                self._log.info(
                    "no hard links in {directory}: renaming without replacing",
                    directory=self.download_dir,
                )
            else:
                self._unlink_part()
                return
        try:
            rename_noreplace(directory, self._files.part, directory, target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EINVAL):
                raise StoreError(
                    exc.errno,
                    f"cannot deliver {self.part_path} as {path}: this file system has neither "
                    "hard links nor renameat2(RENAME_NOREPLACE), so the move could replace a "
                    "file; the verified file stays at the part name",
                    str(path),
                ) from exc
            raise _store_error(exc, "rename", path) from exc
        self._sync_dir()

    def _part_is_ours(self) -> bool:
        """Does the part name still hold the inode we wrote?"""
        try:
            info = os.stat(self._files.part, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self._inode

    def _check_part_name(self) -> None:
        try:
            ours = self._part_is_ours()
        except OSError as exc:
            raise _store_error(exc, "check", self.part_path) from exc
        if not ours:
            raise StoreError(
                errno.EIO,
                f"{self.part_path} was removed or replaced by someone else: not delivering it",
                str(self.part_path),
            )

    def _unlink_part(self) -> None:
        try:
            if self._part_is_ours():
                os.unlink(self._files.part, dir_fd=self._dir_fd)
            else:  # swapped since _check_part_name: not ours to remove
                self._log.warn("{path} is no longer our part file: left", path=self.part_path)
        except OSError as exc:
            raise _store_error(exc, "remove", self.part_path) from exc
        self._sync_dir()

    def _sync_dir(self) -> None:
        try:
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise _store_error(exc, "sync", self.download_dir) from exc

    @property
    def _dir_fd(self) -> int:
        return self._files.dir_fd

    @property
    def _progress_fd(self) -> int:
        return self._files.progress_fd

    @property
    def download_dir(self) -> Path:
        """The download directory as given to ``open``."""
        return self._files.download_dir

    def download_dir_now(self) -> Path:
        """Where the directory we hold is now: the path given to ``open``, unless it was
        moved or replaced since (then its real path, from /proc/self/fd)."""
        given = self._files.download_dir
        try:
            now, ours = os.stat(given), os.fstat(self._dir_fd)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                return given
        except OSError:
            pass
        try:
            real = Path(os.readlink(f"/proc/self/fd/{self._dir_fd}"))
        except OSError:
            real = given
        self._log.warn(
            "download directory {given} was moved or replaced since the download started;"
            " the file is in {real}",
            given=given,
            real=real,
        )
        return real

    def close(self) -> None:
        """Record progress and close; ``open`` resumes from here."""
        if self._closed:
            return
        try:
            spilled = bool(self._buffers)
            while self._buffers:  # blocks in memory go to disk, so a resume keeps them
                self._spill(next(iter(self._buffers)))
            self._spare.clear()
            if self._unflushed or spilled:
                self.flush()
        finally:
            self._close_fd()
            self._files.close()

    def abort(self, remove: bool) -> None:
        """Stop: keep the files for a later resume, or remove them (``remove``; nothing
        to do once closed: the directories are closed too)."""
        if not remove:
            self.close()
            return
        closed = self._closed
        self._close_fd()
        if not closed:
            # Progress first: a part file without progress is started over, never trusted.
            self._remove_progress()
            try:
                if self._part_is_ours():
                    os.unlink(self._files.part, dir_fd=self._dir_fd)
            except OSError as exc:
                self._log.warn("cannot remove {path}: {why}", path=self.part_path, why=exc.strerror)
        self._files.close()

    def _remove_progress(self) -> None:
        directory = self._progress_fd
        for name in (self._files.progress, _temp_of(self._files.progress)):
            try:
                os.unlink(name, dir_fd=directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                path = self._files.progress_dir / name
                self._log.warn("cannot remove {path}: {why}", path=path, why=exc.strerror)

    def _close_fd(self) -> None:
        if not self._closed:
            self._closed = True
            # -1, not the old number: a later write must fail, not hit a reused fd.
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PartialFile {self.manifest.name!r} "
            f"{self._verified_count}/{self.layout.pieces} pieces>"
        )
