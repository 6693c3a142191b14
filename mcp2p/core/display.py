"""Names from the network, made safe to show on a terminal or in a log.

A file name comes from a remote node: it may hold a right-to-left override
(``invoice\\u202efdp.exe`` shows as ``invoiceexe.pdf``), an escape sequence
that repaints the terminal, a newline that forges a log line, or a leading
``-`` that a user pasting it into a command turns into an option.
``display_name`` shows such a name so that what is seen is what is there:

- ``\\`` becomes ``\\\\``; C0 and C1 controls and DEL, the bidi embeddings,
  overrides and isolates (U+202A-202E, U+2066-2069), the directional marks
  (U+200E, U+200F, U+061C), the line and paragraph separators
  (U+2028, U+2029) and lone surrogates (a name decoded with
  ``surrogateescape``, which ``print`` would refuse) become ``\\xNN`` or
  ``\\uNNNN``, as Python writes them in a string literal;
- a leading ``-`` gets ``./`` in front (``./-rf``), the form ``rm`` and
  ``ls`` document, which works as an argument where quoting does not help.
  A ``/`` is escaped too (``\\x2f``; file names never hold one), so a
  ``./`` at the start can only be that prefix.

Everything else, other scripts and emoji included, is shown as it is. The
mapping is reversible (``parse_display_name``), so two different names never
look the same.
"""

from __future__ import annotations

import re

# Code points shown escaped (besides the backslash and "/").
_UNSAFE = (
    "\x00-\x1f\x7f-\x9f"  # C0, DEL, C1
    "\u061c\u200e\u200f"  # Arabic letter mark, LRM, RLM
    "\u2028\u2029"  # line and paragraph separators
    "\u202a-\u202e"  # LRE, RLE, PDF, LRO, RLO
    "\u2066-\u2069"  # LRI, RLI, FSI, PDI
    "\ud800-\udfff"  # lone surrogates
)
_ESCAPE = re.compile(f"[\\\\/{_UNSAFE}]")
_ESCAPE_TEXT = re.compile(f"[\\\\{_UNSAFE}]")
_UNESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")
DASH_PREFIX = "./"


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_text(text: str) -> str:
    """``text`` (a message, a path) with its control and bidi characters and
    backslashes escaped, as ``display_name`` does; ``/`` and a leading ``-``
    are left as they are."""
    return _ESCAPE_TEXT.sub(_escape, text)


def display_name(name: str) -> str:
    """``name`` as it may be printed: no control or bidi character, no leading ``-``."""
    shown = _ESCAPE.sub(_escape, name)
    return DASH_PREFIX + shown if shown.startswith("-") else shown


def display_path(path: object) -> str:
    """A local path whose last part came from the network, shown as ``display_text``
    shows it, with ``./`` before a leading ``-``."""
    shown = display_text(str(path))
    return DASH_PREFIX + shown if shown.startswith("-") else shown


def parse_display_name(shown: str) -> str:
    """The name ``display_name`` showed as ``shown`` (its inverse)."""
    if shown.startswith(DASH_PREFIX + "-"):
        shown = shown[len(DASH_PREFIX) :]

    def unescape(match: re.Match[str]) -> str:
        body = match.group(1)
        return "\\" if body == "\\" else chr(int(body[1:], 16))

    return _UNESCAPE.sub(unescape, shown)
