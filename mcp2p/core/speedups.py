"""The optional compiled helpers of ``mcp2p/_speedups.c``, by name.

``compiled("scan")`` is the compiled function, or None where the extension
was not built (no C compiler or headers at install), was built from an older
source without that name, or ``MCP2P_PURE_PYTHON=1`` in the environment asks
for the pure-Python code. Each caller keeps a pure-Python twin of what it
takes from here, and the tests check the two against each other.
"""

from __future__ import annotations

import os
from typing import Any


def compiled(name: str) -> Any | None:
    if os.environ.get("MCP2P_PURE_PYTHON"):
        return None
    try:
        from mcp2p import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(_speedups, name, None)
