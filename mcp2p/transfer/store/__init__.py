"""The store: a CN's download on disk, crash-safe, never delivering a corrupt file.

One module per job, ``PartialFile`` built in layers over them (see ``state``):
``dirs`` (the directories, opened by fd), ``partfile`` (the part file: created,
or reopened only if still ours), ``buffers`` (the window of pieces in memory),
``pieces`` (block and piece writes and their hashes: the per-packet path),
``progress`` (the progress file, durable before it is recorded), ``deliver``
(the final name, never replacing anything), ``partial`` (opening, closing),
``common`` (errors, ``PieceEvent``). Everything other modules use is
re-exported here; to change a constant in a test, patch the module that
reads it (``buffers.BUFFER_BYTES``, ``progress.FLUSH_PIECES``,
``deliver.rename_noreplace``), not this package.

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
apply to new bytes; a fresh download, which has none, writes its first at its first flush.
Each verified piece's bytes are handed to the disk at once (write-behind,
``sync_file_range``, in ``background``), so a flush's fdatasync, and the
one in ``finalize``, wait only for what is still under way; nothing is
durable by that alone. ``finalize`` hashes the whole file once more before
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

from mcp2p.transfer.store.buffers import BUFFER_BYTES
from mcp2p.transfer.store.common import Buffer, ManifestLike, PieceEvent, StoreError, VerifyError
from mcp2p.transfer.store.deliver import (
    MAX_COLLISIONS,
    RENAME_NOREPLACE,
    collision_name,
    rename_noreplace,
)
from mcp2p.transfer.store.dirs import TRANSFERS
from mcp2p.transfer.store.partfile import FILE_MODE, part_name
from mcp2p.transfer.store.partial import PartialFile
from mcp2p.transfer.store.progress import (
    FLUSH_PIECES,
    FLUSH_SECONDS,
    PROGRESS_MODE,
    PROGRESS_VERSION,
    decode_bitmap,
    encode_bitmap,
)

__all__ = [
    "BUFFER_BYTES",
    "FILE_MODE",
    "FLUSH_PIECES",
    "FLUSH_SECONDS",
    "MAX_COLLISIONS",
    "PROGRESS_MODE",
    "PROGRESS_VERSION",
    "RENAME_NOREPLACE",
    "TRANSFERS",
    "Buffer",
    "ManifestLike",
    "PartialFile",
    "PieceEvent",
    "StoreError",
    "VerifyError",
    "collision_name",
    "decode_bitmap",
    "encode_bitmap",
    "part_name",
    "rename_noreplace",
]
