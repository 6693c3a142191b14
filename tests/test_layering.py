"""The import graph keeps the layers: nothing imports upward, and wire/ and core/ stay pure.

Layers, bottom first (a module may import its own layer and the ones below):

0. base: ``mcp2p`` (the version), ``errors``, ``interfaces`` (zope only)
1. ``wire``: message formats, the content id and piece geometry
2. ``core``: pure decisions over wire's types
3. adapters and services: ``catalog``, ``multicast``, ``listening``, ``atomicfile``, ``logsummary``,
   ``config``, ``plugins`` (the registry), ``trust``, ``discovery``, ``transfer``, ``api``
4. assembly and faces: ``app``, ``tap``, ``twistd``, ``cli``, ``demo``, ``commands``,
   ``__main__``, and the plugin modules in ``mcp2p/plugins/`` (loaded by name, they
   may reach any service)
5. ``lab``: experiments over everything

Every import counts, at module level or inside a function, and under ``if
TYPE_CHECKING:`` too: no service is handed the assembled ``Node`` any more
(each takes the values and narrow protocols it uses), so none needs even an
annotation from above. Layers 0-2 import no Twisted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mcp2p

BASE = ("mcp2p", "mcp2p.errors", "mcp2p.interfaces")
SERVICES = (
    "catalog",
    "multicast",
    "listening",
    "atomicfile",
    "logsummary",
    "config",
    "trust",
    "discovery",
    "transfer",
    "api",
)
TOP = ("app", "tap", "twistd", "cli", "demo", "commands", "__main__")
PURE = 2  # layers up to this one import no Twisted
NAMES = {0: "base", 1: "wire", 2: "core", 3: "services", 4: "assembly", 5: "lab"}


def layer(module: str) -> int:
    """The layer of ``module`` (a dotted name under mcp2p)."""
    if module in BASE:
        return 0
    parts = module.split(".")
    first = parts[1]
    if first == "plugins":
        return 3 if len(parts) == 2 else 4  # the registry, or a plugin module
    for number, names in ((1, ("wire",)), (2, ("core",)), (3, SERVICES), (4, TOP), (5, ("lab",))):
        if first in names:
            return number
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layering.py")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved.

    ``from mcp2p import x`` counts as ``mcp2p.x`` when x is a module there.
    """
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            for alias in node.names:
                sub = root.parent.joinpath(*f"{target}.{alias.name}".split("."))
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    found.append((node.lineno, f"{target}.{alias.name}"))
    return found


def violations(root: Path) -> list[str]:
    """One line per upward import or Twisted import in a pure layer under ``root``."""
    top = root.name
    out = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        mine = layer(name)
        for line, target in imports(root, path):
            where = f"{path.relative_to(root.parent)}:{line}"
            if target == "twisted" or target.startswith("twisted."):
                if mine <= PURE:
                    out.append(f"{where}: {NAMES[mine]} imports {target} (must stay pure)")
            elif target == top or target.startswith(top + "."):
                theirs = layer(target)
                if theirs > mine:
                    out.append(
                        f"{where}: {name} ({NAMES[mine]}) imports {target} ({NAMES[theirs]})"
                    )
    return out


def test_mcp2p_imports_only_downward() -> None:
    root = Path(mcp2p.__file__).parent
    assert violations(root) == []


def test_the_checker_finds_an_upward_and_an_impure_import(tmp_path: Path) -> None:
    """A synthetic tree: wire importing core (upward, in a function), core importing Twisted,
    a service importing app at run time and app and cli under TYPE_CHECKING."""
    root = tmp_path / "mcp2p"
    for package in ("", "wire", "core", "transfer"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    (root / "errors.py").write_text("class ProtocolError(Exception):\n    pass\n")
    (root / "wire" / "query.py").write_text(
        "from mcp2p.errors import ProtocolError\n\n"
        "def decode():\n    from mcp2p.core import ring\n    return ring\n"
    )
    (root / "core" / "ring.py").write_text(
        "from ..wire import query\nfrom twisted.internet import task\n"
    )
    (root / "transfer" / "session.py").write_text("from mcp2p.core.ring import x\n")
    (root / "app.py").write_text("class Node:\n    pass\n")
    (root / "cli.py").write_text("")
    (root / "transfer" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from mcp2p.app import Node\n    from mcp2p import cli\n"
        "\ndef f():\n    from mcp2p.app import Node\n    return Node\n"
    )
    assert violations(root) == [
        "mcp2p/core/ring.py:2: core imports twisted.internet (must stay pure)",
        "mcp2p/transfer/typed.py:4: mcp2p.transfer.typed (services) imports mcp2p.app (assembly)",
        "mcp2p/transfer/typed.py:5: mcp2p.transfer.typed (services) imports mcp2p.cli (assembly)",
        "mcp2p/transfer/typed.py:8: mcp2p.transfer.typed (services) imports mcp2p.app (assembly)",
        "mcp2p/wire/query.py:4: mcp2p.wire.query (wire) imports mcp2p.core (core)",
        "mcp2p/wire/query.py:4: mcp2p.wire.query (wire) imports mcp2p.core.ring (core)",
    ]
