"""Placement: process discovery (proc connector + rescan), match rules, moves, ``launch``.

See docs/placement.md for the rules a user writes and the order they are applied in.
"""

from governor.config import DEFAULT_EXCLUDE
from governor.placement.counters import Counters
from governor.placement.placer import Placer

__all__ = ["DEFAULT_EXCLUDE", "Counters", "Placer"]
