"""``STATE/known_nodes``: the nodes this node trusts, one JSON object a line.

Like SSH's ``known_hosts``: written by trust on first use (after a fetch
whose content verified, the SNs that served it) and by the operator
(``mcp2p trust add``), read by the daemon whenever the file changed (its
size, mtime or inode; a stat per decision), so ``mcp2p trust`` works while
the daemon runs. A line::

    {"node": HEX32, "key": HEX64, "first_seen": 1732600000.0, "last_seen": ...,
     "label": "mirror", "origin": "operator", "address": "127.0.0.1:7713",
     "names": [["file.bin", HEX64], ...]}

Lines starting with ``#`` and blank lines are skipped. A line that is not
such an object (or whose key does not hash to its node id) is skipped and
counted, never fatal; a file over ``MAX_FILE`` bytes, not a regular file,
a symlink or writable by group or others is an error (nobody is trusted
from it, and it is not rewritten). Writes hold ``known_nodes.lock``
(flock), write a new file (O_EXCL, O_NOFOLLOW, 0600) and rename it into
place: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp2p.atomicfile import write_atomic
from mcp2p.trust.policy import (
    MAX_NODES,
    KnownError,
    KnownNode,
    KnownState,
)

FILE = "known_nodes"
LOCK = "known_nodes.lock"
MAX_FILE = 8 << 20  # bytes: MAX_NODES lines of up to NAMES_BYTES of names (~2.5K) fit twice
MAX_LINE = 16 << 10
HEADER = (
    "# mcp2p known nodes: one JSON object a line (node id, key, first seen, names it\n"
    "# served). Managed by `mcp2p trust add|remove`; trust on first use adds the SNs\n"
    "# of a verified fetch. Edit with care: the daemon re-reads this file when it changes.\n"
)


def entry_to_json(n: KnownNode) -> dict[str, Any]:
    return {
        "node": n.node_id.hex(),
        "key": n.public_key.hex(),
        "first_seen": n.first_seen,
        "last_seen": n.last_seen,
        "label": n.label,
        "origin": n.origin,
        "address": n.address,
        "names": [[name, cid.hex()] for name, cid in n.names],
    }


def _hex(value: Any, length: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length:
        raise KnownError(f"expected {2 * length} hex digits")
    return bytes.fromhex(value)


def entry_from_json(obj: Any) -> KnownNode:
    """A known_nodes entry from a parsed line; KnownError (or ValueError) if it is not one."""
    if not isinstance(obj, dict):
        raise KnownError("not a JSON object")
    names = obj.get("names", [])
    if not isinstance(names, list):
        raise KnownError("names is not a list")
    pairs = []
    for item in names:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise KnownError("a name is [name, content id]")
        pairs.append((item[0], _hex(item[1], 32)))
    label, origin, address = obj.get("label", ""), obj.get("origin", "tofu"), obj.get("address", "")
    first: Any = obj.get("first_seen", 0)
    last: Any = obj.get("last_seen", first)
    if not all(isinstance(v, str) for v in (label, origin, address)):
        raise KnownError("label, origin and address are strings")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (first, last)):
        raise KnownError("first_seen and last_seen are numbers")
    return KnownNode(
        _hex(obj.get("node"), 16),
        _hex(obj.get("key"), 32),
        float(first),
        float(last),
        label=label,
        origin=origin,
        address=address,
        names=tuple(pairs),
    )


def parse(data: bytes) -> tuple[KnownState, int]:
    """The entries of a known_nodes file's bytes, and how many lines were skipped as bad.

    A node listed twice keeps its last line; past ``MAX_NODES`` entries the
    rest are skipped (and counted)."""
    nodes: dict[bytes, KnownNode] = {}
    bad = 0
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            if len(line) > MAX_LINE:
                raise KnownError("line too long")
            entry = entry_from_json(json.loads(line))
        except (KnownError, ValueError, RecursionError):
            bad += 1
            continue
        if entry.node_id not in nodes and len(nodes) >= MAX_NODES:
            bad += 1
            continue
        nodes[entry.node_id] = entry
    return KnownState(nodes), bad


def render(state: KnownState) -> bytes:
    lines = [HEADER]
    for n in sorted(state.nodes.values(), key=lambda n: (n.first_seen, n.node_id)):
        lines.append(json.dumps(entry_to_json(n), ensure_ascii=True, sort_keys=True) + "\n")
    return "".join(lines).encode()


class KnownNodes:
    """The known_nodes file of one state directory, read again whenever it changed."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE
        self.state = KnownState()
        self.error = ""  # why the file could not be read ("" when it could, or is absent)
        self.bad_lines = 0  # skipped in the last read
        self.reads = 0
        self._stamp: tuple[int, ...] | None = None

    def current(self) -> KnownState:
        """The entries as the file holds them now (read again only if it changed).

        An unreadable file leaves no entry trusted and ``error`` saying why."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
            stamp: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        except FileNotFoundError:
            stamp = ()
        except OSError as e:
            stamp = (-1, e.errno or 0)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.state, self.bad_lines = self.read()
                self.error = ""
            except KnownError as e:
                self.state, self.bad_lines, self.error = KnownState(), 0, str(e)
        return self.state

    def read(self) -> tuple[KnownState, int]:
        """The file's entries and its bad lines; KnownError when it cannot be trusted at all."""
        self.reads += 1
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return KnownState(), 0
        except OSError as e:
            raise KnownError(
                f"{self.path}: cannot read ({e.strerror}; a symlink is refused)"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KnownError(f"{self.path}: not a regular file")
            if st.st_mode & 0o022:
                raise KnownError(
                    f"{self.path}: writable by group or others (mode {st.st_mode & 0o777:o}): "
                    "nobody is trusted from it until it is chmod 600"
                )
            if st.st_size > MAX_FILE:
                raise KnownError(f"{self.path}: {st.st_size} bytes, more than {MAX_FILE}")
            chunks = []
            left = MAX_FILE + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > MAX_FILE:
                raise KnownError(f"{self.path}: more than {MAX_FILE} bytes")
        finally:
            os.close(fd)
        return parse(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.dir / LOCK, flags, 0o600)
        except OSError as e:
            raise KnownError(f"{self.dir / LOCK}: cannot open ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def update(self, change: Callable[[KnownState], KnownState]) -> KnownState:
        """Apply ``change`` to the file's entries and write the result in place.

        Read under the lock, so two writers (the daemon and ``mcp2p trust``)
        never lose each other's entries. A file that cannot be read is not
        replaced (KnownError): it may hold what the operator meant."""
        with self._locked():
            state, _ = self.read()
            data = render(change(state))
            if len(data) > MAX_FILE:
                raise KnownError(f"{self.path}: would exceed {MAX_FILE} bytes; remove entries")
            self._write(data)
        self._stamp = None  # read it again, as written
        return self.current()

    def _write(self, data: bytes) -> None:
        try:
            write_atomic(self.path, data, 0o600)  # replaces a symlink there, never follows it
        except OSError as e:
            raise KnownError(f"{self.path}: cannot write ({e.strerror})") from None
