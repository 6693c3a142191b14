"""The benchmarks: one registry, and what every one of them shares.

    python -m mcp2p.lab bench NAME [ARGS ...]    benchmark NAME's main(ARGS)
    python -m mcp2p.lab.bench_NAME [ARGS ...]    the same, the older way

A benchmark is a module ``mcp2p.lab.bench_NAME`` (NAME in `BENCHES`) with
a docstring whose first line says what it measures and ``main(argv) ->
int``, which prints its table and, with ``--json FILE``, writes its figures
with `write_json`. What they share is here, on the experiment framework
(`mcp2p.lab.experiment`): sizes on the command line (`parse_size`), medians
and spreads that leave failed (NaN) runs out (`median`, `spread`), the
memory of a process (`memory_kib`) and waiting for a daemon's API
(`wait_api`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from mcp2p.lab.experiment import median, spread
from mcp2p.lab.procstat import memory_kib

__all__ = [
    "BENCHES",
    "BadSize",
    "bench_module",
    "main",
    "median",
    "memory_kib",
    "parse_size",
    "spread",
    "wait_api",
    "write_json",
]

# In the order ``make bench`` runs them.
BENCHES = ("catalog", "discovery", "sn", "transfer", "cpu", "codes", "summary")


def bench_module(name: str) -> ModuleType:
    """The module of benchmark ``name`` (``catalog`` or ``bench_catalog``)."""
    short = name.removeprefix("bench_")
    if short not in BENCHES:
        raise ValueError(f"unknown bench {name!r}; known: {', '.join(BENCHES)}")
    return importlib.import_module(f"mcp2p.lab.bench_{short}")


def main(argv: list[str]) -> int:
    """``bench NAME [ARGS ...]``: run benchmark NAME's ``main(ARGS)``."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m mcp2p.lab bench NAME [ARGS ...]  (NAME --help for its own)")
        print(f"benches: {', '.join(BENCHES)}")
        return 0 if argv else 2
    try:
        module = bench_module(argv[0])
    except ValueError as e:
        print(f"mcp2p lab: {e}", file=sys.stderr)
        return 2
    return int(module.main(argv[1:]) or 0)


class BadSize(argparse.ArgumentTypeError, ValueError):
    """Not a size: argparse says so in one line (``type=parse_size``), and
    code that parses a list of sizes catches a ValueError."""


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?(b)?|(b))?\s*", re.IGNORECASE)
_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``200M``, ``1.5G``, ``128MiB``, ``1GiB``
    (powers of 1024, as in mcp2p's config) or ``500MB``, ``1GB`` (powers of
    1000, as the unit says)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise BadSize(f"not a size: {text!r}")
    number, unit, binary, byte = m.group(1, 2, 3, 4)
    if unit is None:
        return int(float(number))
    base = 1000 if byte and not binary else 1024
    return int(float(number) * base ** _POWER[unit.lower()])


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON in ``path``, written whole: a bench that
    writes as it goes and is cut short leaves its last complete file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def wait_api(state_dir: Path, proc: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """The API port of the daemon ``proc`` whose state is ``state_dir``, once
    it has written it; RuntimeError if it exits or ``timeout`` passes first."""
    port_file = Path(state_dir) / "api.port"
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon in {Path(state_dir).parent} did not start")
        time.sleep(0.05)
    return int(port_file.read_text())
