"""How a command ends: the exit codes (shown by ``mcp2p --help``) and ``CliError``."""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_AMBIGUOUS = 3
EXIT_DAEMON = 4
EXIT_FAILED = 5
EXIT_INTERRUPTED = 130
EXIT_ERROR = EXIT_DAEMON  # the name mcp2p.lab uses for "no daemon answered"

EXIT_CODES = """exit codes:
  0    done: files found, file fetched, status shown
  1    not found: no node offers what was asked for
  2    usage error: a bad option, value or config file (one line on stderr)
  3    ambiguous: a content id prefix, or a name trust does not settle, matches
       several files (they are listed; give a content id or --pick)
  4    the daemon refused the request, its API token is unreadable, or no daemon answers
  5    the search or the transfer failed (the reason is on stderr)
  130  interrupted (Ctrl-C); get resumes where it stopped when run again"""


class CliError(Exception):
    """Ends the command with ``mcp2p: message`` on stderr and ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
