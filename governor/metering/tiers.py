"""Which groups read the sampler's slow tier in a pass (``[sampling] slow_every``).

The slow tier is what a pass need not read of every group every time: ``memory.stat``,
the generic controllers' files of a group that had none (:mod:`governor.controllers`),
the read-back values (``cpuset.cpus.effective``).  Each group has one of ``slow_every``
slots and reads its slow tier on the passes of its slot, so every pass carries a
``slow_every``-th of that work.  Until issue #16 every ``slow_every``-th pass read it for
all groups at once, through the Python loop rather than the C one: at 10,000 groups in the
test VM that one pass outlasted the 10 s interval.

A group keeps its slot while it exists (it reads its slow tier exactly every
``slow_every`` passes); a new group takes the slot with the fewest groups, so the slots
stay even as groups come and go.  The first pass reads every group's slow tier (it reads
every group through the Python loop anyway: no descriptor is open yet).
"""

from __future__ import annotations

import heapq


class SlowTier:
    """The slots of the groups; :meth:`marks` gives a pass's groups by position.  Only the
    slots in use exist (``slow_every`` may be far above the number of groups)."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"slow_every must be at least 1, not {every}")
        self.every = every
        self._slot: dict[str, int] = {}
        #: the groups in each slot in use (slots 0, 1, ...; the others hold none)
        self._sizes: list[int] = []
        #: (size, slot), the least-filled first; an entry whose size is no longer the
        #: slot's is stale and skipped
        self._heap: list[tuple[int, int]] = []
        self._paths: list[str] = []
        #: per slot in use, the positions in ``_paths`` of its groups (ascending)
        self._marks: list[list[int]] = []

    def marks(self, paths: list[str], phase: int) -> list[int]:
        """The positions in ``paths`` of the groups whose slot is ``phase`` (modulo
        ``slow_every``), ascending.  ``paths`` is the pass's listing; a listing equal to
        the last one costs nothing more (the group lister keeps its list while no group
        is made or removed)."""
        if paths is not self._paths and paths != self._paths:
            self._relist(paths)
        k = phase % self.every
        return self._marks[k] if k < len(self._marks) else []

    def _relist(self, paths: list[str]) -> None:
        slot, sizes = self._slot, self._sizes
        live = set(paths)
        for gone in [p for p in slot if p not in live]:
            k = slot.pop(gone)
            sizes[k] -= 1
            heapq.heappush(self._heap, (sizes[k], k))
        marks: list[list[int]] = [[] for _ in sizes]
        for i, path in enumerate(paths):
            got = slot.get(path)
            if got is None:
                got = slot[path] = self._emptiest()
                if got == len(marks):
                    marks.append([])
            marks[got].append(i)
        if len(self._heap) > 4 * len(sizes) + 64:   # drop the stale entries
            self._heap = [(n, k) for k, n in enumerate(sizes)]
            heapq.heapify(self._heap)
        self._paths = list(paths)
        self._marks = marks

    def _emptiest(self) -> int:
        """A slot for a new group, counted in: an empty one in use, else a new one while
        fewer than ``slow_every`` are in use, else the least filled (the lowest first)."""
        heap, sizes = self._heap, self._sizes
        while heap and sizes[heap[0][1]] != heap[0][0]:
            heapq.heappop(heap)
        if (not heap or heap[0][0] > 0) and len(sizes) < self.every:
            k = len(sizes)
            sizes.append(0)
        else:
            k = heap[0][1]
        sizes[k] += 1
        heapq.heappush(heap, (sizes[k], k))
        return k

    def slot_of(self, path: str) -> int | None:
        """The slot of ``path`` (None: not in the last listing)."""
        return self._slot.get(path)
