"""Which groups read the sampler's slow tier in a pass (``[sampling] slow_every``).

The slow tier is what a pass need not read of every group every time: ``memory.stat``,
the generic controllers' files of a group that had none (:mod:`governor.controllers`),
the read-back values (``cpuset.cpus.effective``).  Each group has one of ``slow_every``
slots and reads its slow tier on the passes of its slot, so every pass carries a
``slow_every``-th of that work.  Until issue #16 every ``slow_every``-th pass read it for
all groups at once, through the Python loop rather than the C one: at 10,000 groups in the
test VM that one pass outlasted the 10 s interval.

The slots are :class:`~governor.rounds.Rounds` (the drift watch's rolling sweep uses them
too): a group keeps its slot while it exists, so it reads its slow tier exactly every
``slow_every`` passes; a new group takes the emptiest.  The first pass reads every group's
slow tier (it reads every group through the Python loop anyway: no descriptor is open
yet).
"""

from __future__ import annotations

from governor.rounds import Rounds


class SlowTier:
    """The slots of the groups (:class:`~governor.rounds.Rounds`); :meth:`marks` gives a
    pass's groups by their position in its listing."""

    def __init__(self, every: int) -> None:
        self._rounds = Rounds(every)
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
        k = phase % self._rounds.count
        return self._marks[k] if k < len(self._marks) else []

    def _relist(self, paths: list[str]) -> None:
        rounds = self._rounds
        live = set(paths)
        for gone in [p for p in rounds.held() if p not in live]:
            rounds.drop(gone)
        slots = [rounds.add(path) for path in paths]
        marks: list[list[int]] = [[] for _ in range(rounds.in_use)]
        for i, k in enumerate(slots):
            marks[k].append(i)
        self._paths = list(paths)
        self._marks = marks

    @property
    def every(self) -> int:
        """``slow_every``: the passes of a round."""
        return self._rounds.count

    def slot_of(self, path: str) -> int | None:
        """The slot of ``path`` (None: not in the last listing)."""
        return self._rounds.slot_of(path)
