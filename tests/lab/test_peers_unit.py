"""How a peer run tells a receiver's end, without namespaces (the runs are in test_peers)."""

from __future__ import annotations

import pytest

from mcp2p.lab.peers import _receiver_done


@pytest.mark.parametrize(
    ("done_by_exit", "exited", "have_file", "state"),
    [
        # udpcast and TCP receivers: done when they exit (the file is checked later)
        (True, False, False, None),
        (True, False, True, None),  # still writing
        (True, True, True, True),
        (True, True, False, True),  # exited: done; a missing or wrong copy fails its check
        # uftpd stays up: done when its file appears, failed if it died without it
        (False, False, False, None),
        (False, False, True, True),
        (False, True, True, True),  # wrote its file, then exited: done
        (False, True, False, False),
    ],
)
def test_a_receiver_is_judged_from_one_look_at_its_process(
    done_by_exit: bool, exited: bool, have_file: bool, state: bool | None
) -> None:
    assert _receiver_done(done_by_exit, exited, have_file) is state
