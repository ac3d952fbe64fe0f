"""When keep_warm's window opens: only while moves come fast enough to be worth it.

A window of no-op migrations (:class:`governor.cgroupfs.keepwarm.MigrationWarmer`) costs about
the same CPU each second it is open, whatever the spawn rate: up to one write each
``keep_warm_interval``, each mostly a timed wake-up (bench/keep_warm_cost.py).  Spread over
the moves it serves, that is a large cost per move when moves are few (one move a second
paid for 250 writes) and a small one when they are many.  So the window opens only when at
least ``min_rate`` moves were made within the last second (the move that opens it counted),
and stays open ``window`` (keep_warm) seconds after the last such move; moves at a lower
rate each wait for their grace period, as with ``keep_warm = 0``.  ``min_rate`` 0 (or 1)
opens it after every move, as before issue #16.

Pure: the caller passes ``time.monotonic()`` and tells the warmer the deadline.
"""

from __future__ import annotations

from collections import deque
from typing import Final

#: the span over which moves are counted against ``min_rate`` (moves within it)
RATE_SPAN: Final = 1.0


class KeepWarmGate:
    """Decides, move by move, until when the window is open."""

    def __init__(self, min_rate: int) -> None:
        if min_rate < 0:
            raise ValueError(f"keep_warm_min_rate {min_rate!r} must not be negative")
        self.min_rate = min_rate
        #: the times of the last ``min_rate`` moves (oldest first)
        self._moves: deque[float] = deque(maxlen=max(min_rate, 1))
        #: time.monotonic() at which the window closes (0.0: never opened)
        self.until = 0.0
        #: how many times a move opened a closed window (for the counters)
        self.opened = 0

    def rate_reached(self, now: float) -> bool:
        """Were at least ``min_rate`` moves (the latest included) made within the last
        :data:`RATE_SPAN` seconds?"""
        m = self._moves
        return self.min_rate <= 1 or (len(m) == self.min_rate and now - m[0] < RATE_SPAN)

    def moved(self, now: float, window: float) -> float:
        """A move was made at ``now``; ``window``: keep_warm, how long a window lasts
        after the last move that reached the rate.  Returns the end of the window (``<=
        now``: closed, nothing to keep warm)."""
        self._moves.append(now)
        if window > 0 and self.rate_reached(now):
            if self.until <= now:
                self.opened += 1
            self.until = max(self.until, now + window)
        return self.until

    def is_open(self, now: float) -> bool:
        return now < self.until
