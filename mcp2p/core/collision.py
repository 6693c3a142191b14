"""The ASM collision rule: when a session that hears another SSRC on its group moves.

An ASM session listens on its own group (DESIGN.md 5.7). Another SSRC there
is another mcp2p session (or any sender) on the same group: a collision.
Of two mcp2p sessions that hear each other, only the one with the lower
SSRC moves (both moving would double the moves and could collide again);
the other moves too if the foreign SSRC is still heard `PERSIST` seconds
later (a sender that never moves). For `HOLDOFF` seconds after a move,
what arrives is ignored: datagrams of the old group still queued in the
socket would otherwise move the session once per datagram (a move storm,
seen in the lab with small pools).

`CollisionRule` is the pure state of one session: `heard(ssrc, own, now)`
for each datagram's SSRC, answering "move" or "ignore". The Twisted side
(`transfer.serving._Monitor`) only reads SSRCs off the socket and moves
the session when told.
"""

from __future__ import annotations

from typing import Literal

HOLDOFF = 0.5  # seconds after a move in which what is heard is ignored
PERSIST = 2.0  # seconds a lower SSRC is given to move before we move anyway
MAX_HEARD = 256  # foreign SSRCs remembered (the least recently heard dropped)

Action = Literal["move", "ignore"]  # move: leave for another group; ignore: stay


class CollisionRule:
    """Whether one ASM session moves, given the SSRCs heard on its group."""

    def __init__(self, holdoff: float = HOLDOFF, persist: float = PERSIST) -> None:
        self.holdoff = holdoff
        self.persist = persist
        self.quiet_until = 0.0
        self.heard: dict[int, tuple[float, float]] = {}  # ssrc -> (first, last) heard

    def hear(self, ssrc: int, own: int, now: float) -> Action:
        """A datagram of ``ssrc`` arrived at ``now`` on the group of session ``own``."""
        if ssrc == own or now < self.quiet_until:
            return "ignore"  # our own packets looped back, or the old group's
        first, last = self.heard.pop(ssrc, (now, now))
        if now - last > self.persist:  # an old collision: this is a new one
            first = now
        self.heard[ssrc] = (first, now)  # the most recently heard last
        if len(self.heard) > MAX_HEARD:
            del self.heard[next(iter(self.heard))]
        if ssrc < own and now - first < self.persist:
            return "ignore"  # the other session yields; give it time to
        self.quiet_until = now + self.holdoff
        self.heard.clear()
        return "move"
