"""Keys spread evenly over the slots of a rolling round (issue #16).

Work done for every group, but not every time, is spread over a round of ``count`` turns:
each group has one slot and is taken on its slot's turn.  Two users: the sampler's slow
tier (governor/metering/tiers.py: memory.stat and the like, one turn a pass) and the drift
watch's rolling sweep (governor/enforce/drift.py: one turn a reconcile).

A key keeps its slot while it is there (it is taken exactly once a round); a new key takes
the slot with the fewest keys, the lowest first, so keys added in order fill the slots in
turn and the slots stay even (max - min <= 1 as keys come and go, when the newcomers
refill what the removals emptied).  Only the slots in use exist: ``count`` may be far above
the number of keys (``[sampling] slow_every`` is an operator's number).
"""

from __future__ import annotations

import heapq


class Rounds:
    """Keys (group paths) and their slots among ``count``."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a round needs at least 1 slot, not {count}")
        self.count = count
        self._slot: dict[str, int] = {}
        #: the keys of each slot in use (slots 0, 1, ...; the others hold none)
        self._members: list[set[str]] = []
        #: (size, slot), the least filled first; an entry whose size is no longer the
        #: slot's is stale and skipped
        self._heap: list[tuple[int, int]] = []

    def add(self, key: str) -> int:
        """The slot of ``key``, given now if it has none."""
        got = self._slot.get(key)
        if got is None:
            got = self._slot[key] = self._emptiest()
            self._members[got].add(key)
        return got

    def drop(self, key: str) -> None:
        """Forget ``key`` (nothing if it has no slot)."""
        k = self._slot.pop(key, None)
        if k is None:
            return
        members = self._members[k]
        members.discard(key)
        heapq.heappush(self._heap, (len(members), k))
        if len(self._heap) > 4 * len(self._members) + 64:   # drop the stale entries
            self._heap = [(len(m), i) for i, m in enumerate(self._members)]
            heapq.heapify(self._heap)

    def slot_of(self, key: str) -> int | None:
        return self._slot.get(key)

    def members(self, turn: int) -> set[str]:
        """The keys taken on ``turn`` (its slot: ``turn`` modulo ``count``); the set is
        the round's own: read it, do not change it."""
        k = turn % self.count
        return self._members[k] if k < len(self._members) else set()

    @property
    def in_use(self) -> int:
        """How many slots hold or held a key (slots 0 to this - 1)."""
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._slot

    def held(self) -> list[str]:
        """The keys with a slot, in the order they came."""
        return list(self._slot)

    def _emptiest(self) -> int:
        heap, members = self._heap, self._members
        while heap and len(members[heap[0][1]]) != heap[0][0]:
            heapq.heappop(heap)
        if (not heap or heap[0][0] > 0) and len(members) < self.count:
            k = len(members)
            members.append(set())
        else:
            k = heap[0][1]
        heapq.heappush(heap, (len(members[k]) + 1, k))
        return k
