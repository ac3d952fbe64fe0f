"""How many groups a sampling pass reads for the first time (issue #16).

A group's first pass costs far more than its later ones: its descriptors are opened (eleven
``openat2`` calls), its incarnation's row is looked up or made, and its metering anchor is
looked up in the store.  Thousands of groups found at once (a start at 10,000 groups, a
tenant's batch of containers) are therefore taken over several passes, as many a pass as fit:
what the last pass that opened groups spent on each of them (measured, not assumed) sets how
many the next one opens, so that the whole pass -- the groups already known included -- ends
within :data:`TARGET_SHARE` of the interval.  The sampler also stops opening groups once a
pass's first reads have taken ``first_read_budget`` (governor/daemon/run.py,
FIRST_READ_SHARE): the bound for a pass whose first reads are dearer than the last ones were.
"""

from __future__ import annotations

from collections import deque

#: the share of the interval a whole pass (read, store, meter, publish) aims to end within
TARGET_SHARE = 0.7
#: the share of the interval given to new groups however long the known ones take
FLOOR_SHARE = 0.2
#: the groups a pass opens before anything is measured (the first pass)...
FIRST = 100
#: ...and how many times more than the last pass opened the next one may open
GROWTH = 4


class OpenPace:
    """The most groups the next pass reads for the first time
    (:attr:`~governor.metering.sampler.Sampler.first_read_max`).

    Passes are not all alike: every ``write_every``-th one writes the metered rows (2 s
    more at 10,000 groups in the TCG VM).  A known group's cost is kept for each kind of
    pass, the dearer of its last two, and the next pass is planned with its own kind's
    (the dearest kind's while its own is not measured yet)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: what the next pass may open
        self.limit = FIRST
        #: the last estimates (seconds per group): a new one, a known one in the next pass
        self.per_new = 0.0
        self.per_known = 0.0
        #: a known group's cost in the last two passes of each kind (True: writes)
        self._known: dict[bool, deque[float]] = {}

    def after(self, *, groups: int, opened: int, took: float, new_s: float,
              wrote: bool = False, writes_next: bool = False) -> int:
        """The pass just ended sampled ``groups`` groups, ``opened`` of them for the first
        time, in ``took`` seconds in all, ``new_s`` of which went to the opened groups' first
        reads, incarnation rows and anchors; ``wrote``: it wrote the metered rows;
        ``writes_next``: the next pass will.  Returns (and keeps) what the next pass may
        open.  Every pass is told (one that opened nothing measures the known groups)."""
        if took <= 0 or groups <= 0:
            return self.limit
        new_s = min(max(new_s, 0.0), took) if opened > 0 else 0.0
        known = groups - max(opened, 0)
        if known > 0:
            self._known.setdefault(wrote, deque(maxlen=2)).append((took - new_s) / known)
        mine = self._known.get(writes_next)
        self.per_known = max(mine) if mine else max(
            (max(d) for d in self._known.values()), default=0.0)
        if opened <= 0:
            return self.limit
        self.per_new = max(new_s, 1e-6) / opened
        # in the next pass every group of this one is known
        room = max(FLOOR_SHARE * self.interval,
                   TARGET_SHARE * self.interval - self.per_known * groups)
        fits = max(1, int(room / self.per_new))
        self.limit = min(fits, GROWTH * max(opened, FIRST))
        return self.limit
