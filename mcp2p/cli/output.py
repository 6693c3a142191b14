"""Printing results: search results as a table or JSON lines, fetch progress, sizes."""

from __future__ import annotations

import json
import sys
from typing import Any

from mcp2p.cli.exits import EXIT_AMBIGUOUS, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from mcp2p.cli.what import ID_PREFIX, not_found_text
from mcp2p.core.display import display_name, display_path, display_text


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def print_result(result: dict[str, Any], as_json: bool, what: str = "") -> int:
    rows = []
    for s in result["servers"]:
        for f in s["files"]:
            rows.append((s, f))
    if as_json:
        for s, f in rows:
            line = dict(f)
            line.update(
                node_id=s["node_id"],
                address=s["address"],
                distance=s["distance"],
                rtt=s["rtt"],
            )
            print(json.dumps(line))
    else:
        if rows:
            print(
                f"{'CONTENT ID':<16}  {'SIZE':>10}  {'HOPS':>4}  {'NODE':<12}  "
                f"{'ADDRESS':<15}  NAME"
            )
        for s, f in rows:
            hops = "-" if s["distance"] is None else str(s["distance"])
            print(
                f"{f['content_id'][:16]}  {human_size(f['size']):>10}  {hops:>4}  "
                f"{s['node_id'][:12]}  {s['address']:<15}  {display_name(str(f['name']))}"
            )
        rings = ", ".join(str(h) for h in result.get("hop_limits", []))
        print(
            f"{len(rows)} files from {len(result['servers'])} nodes"
            + (
                f"; rings with hop limits {rings}, {result['query_bytes']} query bytes"
                if rings
                else ""
            )
            + f"; {result['elapsed']:.2f} s ({result['reason']})",
            file=sys.stderr,
        )
        ids = {f["content_id"] for _, f in rows}
        if (
            ID_PREFIX.fullmatch(what)
            and len(ids) > 1
            and all(i.startswith(what.lower()) for i in ids)
        ):
            print(
                f"mcp2p: {len(ids)} files have a content id starting with {what.lower()}; "
                "give mcp2p get more digits (--json shows whole ids)",
                file=sys.stderr,
            )
        if not rows and what:
            print(f"mcp2p: not found: {not_found_text(what)}", file=sys.stderr)
    return EXIT_OK if rows else EXIT_NOT_FOUND


class Progress:
    """Prints fetch events: a one-line progress bar on a terminal, or JSON lines.

    Failures go to stderr as ``mcp2p: ...`` (with the candidates of an
    ambiguous prefix); ``exit_code()`` maps the events seen to the exit code.
    """

    def __init__(self, as_json: bool, stream: Any = None, errors: Any = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.errors = errors or sys.stderr
        self.name = ""
        self.tty = self.stream.isatty()
        self.last_len = 0
        self.outcome = ""  # done, not_found, ambiguous, failed
        self.candidates: list[dict[str, Any]] = []

    def exit_code(self) -> int:
        return {
            "done": EXIT_OK,
            "not_found": EXIT_NOT_FOUND,
            "ambiguous": EXIT_AMBIGUOUS,
            "usage": EXIT_USAGE,
        }.get(self.outcome, EXIT_FAILED)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("done", "not_found", "ambiguous") or (kind == "failed" and not self.outcome):
            self.outcome = str(kind)
        if kind == "ambiguous":
            self.candidates = list(event.get("candidates", []))
        if self.as_json:
            print(json.dumps(event), file=self.stream, flush=True)
            return
        if kind == "manifest":
            self.name = display_name(str(event["name"]))
            self._line(
                f"{self.name}: {human_size(event['size'])}, {event['pieces']} pieces, "
                f"{event['verified']} already verified",
                final=True,
            )
        elif kind == "progress":
            total = max(event["total"], 1)
            eta = "-" if event["eta"] is None else f"{event['eta']:.0f}s"
            sources = ", ".join(
                f"{s['node'][:8]} {'?' if s['distance'] is None else s['distance']} hop "
                f"{s['mode']}" + ("" if s["state"] == "active" else f" ({s['state']})")
                for s in event["sources"]
            )
            self._line(
                f"{self.name} {human_size(event['bytes'])}/{human_size(event['total'])} "
                f"{100 * event['bytes'] / total:5.1f}% {event['rate'] / 1e6:6.1f} MB/s "
                f"ETA {eta} [{sources}]",
                final=not self.tty,
            )
        elif kind == "source_dropped":
            reason = display_text(str(event["reason"]))
            self._line(f"dropped {event['source']['node']}: {reason}", final=True)
        elif kind == "done":
            rate = event["bytes"] / max(event["elapsed"], 1e-9) / 1e6
            self._line(
                f"done: {display_path(event['path'])} ({event['elapsed']:.1f} s, {rate:.1f} MB/s)",
                final=True,
            )
        elif kind == "failed":
            if self.tty and self.last_len:
                self._line("", final=True)
            print(f"mcp2p: {display_text(str(event['error']))}", file=self.errors, flush=True)
            for c in self.candidates:
                nodes = ", ".join(n[:12] for n in c["nodes"])
                more = ""
                if "trust" in c:  # a name's candidates: who vouches, how near
                    hops = "?" if c.get("hops") is None else c["hops"]
                    more = f"; {c['trust']}, {c.get('trusted', 0)} trusted; {hops} hops"
                print(
                    f"  {c['content_id']}  {human_size(c['size']):>10}  "
                    f"{display_name(str(c['name']))}  "
                    f"(nodes {nodes}{more})",
                    file=self.errors,
                    flush=True,
                )

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            pad = max(0, self.last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.last_len = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
