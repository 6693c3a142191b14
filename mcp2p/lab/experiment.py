"""The lab's experiment framework: parameters, repetitions, progress, results.

An experiment is a module in `mcp2p.lab.experiments` that defines::

    NAME = "unicast"                       # what `python -m mcp2p.lab run` takes
    TITLE = "Multicast or unicast"         # the REPORT.md section title
    QUESTION = "From which N and loss ..." # the paper's question, one line
    PARAMS = {                             # every parameter, at three sizes
        "cns": Param([1, 2, 4, 8], [1, 4], [2], "CNs per point"),
    }
    def run(ctx: Context, **params) -> dict: ...      # measure; JSON-able
    def report(data: dict, out: ReportOut) -> Section: ...  # from that JSON only

``run`` returns the raw results (every repetition of every point, never
only a median): ``report`` computes medians and spreads from them, so every
figure in REPORT.md comes from the JSON of the same run. The sizes:
``full`` for `make lab` (about 30 minutes for all four), ``quick`` for
`make lab QUICK=1` (under 5), ``smoke`` for the suite's lab test (one
topology, one point per experiment, seconds).
"""

from __future__ import annotations

import importlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "EXPERIMENTS",
    "SIZES",
    "Context",
    "Param",
    "ReportOut",
    "Section",
    "fmt_spread",
    "load",
    "md_table",
    "median",
    "parse_params",
    "spread",
]

EXPERIMENTS = ("unicast", "discovery", "groups", "control", "keys")  # report order
SIZES = ("full", "quick", "smoke")
T = TypeVar("T")


@dataclass(frozen=True)
class Param:
    full: Any
    quick: Any
    smoke: Any
    help: str = ""

    def at(self, size: str) -> Any:
        return {"full": self.full, "quick": self.quick, "smoke": self.smoke}[size]


def load(name: str) -> Any:
    """The experiment module called ``name`` (one of EXPERIMENTS)."""
    if name not in EXPERIMENTS:
        raise KeyError(f"no experiment {name!r}; there are: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"mcp2p.lab.experiments.{name}")


def _convert(example: Any, text: str) -> Any:
    if isinstance(example, bool):
        if text.lower() in ("1", "yes", "true", "on"):
            return True
        if text.lower() in ("0", "no", "false", "off"):
            return False
        raise ValueError(f"expected yes or no, got {text!r}")
    if isinstance(example, list | tuple):
        inner = example[0] if example else ""
        return [_convert(inner, part.strip()) for part in text.split(",") if part.strip()]
    if isinstance(example, int):
        return int(float(text)) if "e" in text.lower() else int(text)
    if isinstance(example, float):
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    return text


def parse_params(
    params: dict[str, Param], size: str, overrides: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The values at ``size``, with ``--name value`` overrides converted to
    the type of the default (a list default takes ``1,2,4``)."""
    values = {name: p.at(size) for name, p in params.items()}
    for name, text in overrides:
        key = name.replace("-", "_")
        if key not in params:
            raise ValueError(f"unknown parameter --{name}; known: {', '.join(sorted(params))}")
        try:
            values[key] = _convert(params[key].full, text)
        except ValueError as e:
            raise ValueError(f"--{name} {text}: {e}") from None
    return values


class Context:
    """What an experiment's ``run`` gets: where to work, how often to repeat,
    and a progress line (one line, rewritten in place on a terminal)."""

    def __init__(
        self,
        workdir: Path,
        *,
        size: str = "full",
        reps: int = 3,
        label: str = "",
        stream: Any = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.reps = reps
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._last = ""

    def progress(self, what: str, rep: int | None = None, reps: int | None = None) -> None:
        """Say what runs now: ``[label] what rep i/n (elapsed)``."""
        where = f" rep {rep}/{reps}" if rep is not None and reps else ""
        line = f"[{self.label}] {what}{where} ({time.monotonic() - self.started:.0f} s)"
        if line == self._last:
            return
        self._last = line
        tty = getattr(self.stream, "isatty", lambda: False)()
        if tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        if tty and self._last:
            self.stream.write("\n")
            self.stream.flush()

    def repeat(self, what: str, fn: Callable[[int], T], reps: int | None = None) -> list[T]:
        """``fn(rep)`` for rep 1..reps, with the progress line saying so."""
        n = reps or self.reps
        out = []
        for rep in range(1, n + 1):
            self.progress(what, rep, n)
            out.append(fn(rep))
        return out

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Section:
    """One REPORT.md section. ``setup`` and ``conclusion`` are prose (the
    conclusion two sentences, with the figures that support it); ``tables``
    are Markdown; ``plots`` are file names `ReportOut.save` returned."""

    setup: str
    tables: list[str]
    plots: list[str]
    conclusion: str
    notes: list[str] = field(default_factory=list)


class ReportOut:
    """Where ``report`` puts its plots (PNG, via matplotlib's Agg backend)."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix

    def figure(self, *args: Any, **kw: Any) -> Any:
        """A new (figure, axes) from pyplot.subplots, Agg backend."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kw.setdefault("figsize", (7, 4))
        return plt.subplots(*args, **kw)

    def save(self, fig: Any, name: str) -> str:
        """Write ``fig`` as ``<prefix>-<name>.png``; returns the file name."""
        import matplotlib.pyplot as plt

        file = f"{self.prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(self.directory / file, dpi=110)
        plt.close(fig)
        return file


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values; NaNs if there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (math.nan, math.nan, math.nan)
    return (statistics.median(vals), min(vals), max(vals))


def median(values: Iterable[float]) -> float:
    """The median of the finite values; NaN if there are none."""
    return spread(values)[0]


def fmt_spread(values: Iterable[float], digits: int = 1, unit: str = "") -> str:
    """``median (min-max)``, or ``median`` when all are equal, ``-`` when empty."""
    med, lo, hi = spread(values)
    if math.isnan(med):
        return "-"
    f = f"{{:.{digits}f}}"
    if f.format(lo) == f.format(hi):
        return f.format(med) + unit
    return f"{f.format(med)}{unit} ({f.format(lo)}-{f.format(hi)})"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; cells are str()-ed, ``|`` escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
