"""Hourly rollups with exact integer sums.

An interval that crosses one or more hour boundaries is split by *time share*: each piece
gets the share of every quantity (CPU microseconds, memory and writable-layer byte-seconds,
IO bytes and operations, OOM counts) proportional to its length in wall-clock
microseconds.  Shares are assigned by cumulative flooring (:func:`split_exact`): piece
``i`` of a total ``T`` with weights ``w`` is ``floor(T*W_i/W) - floor(T*W_{i-1}/W)`` where
``W_i`` is the running sum of weights.  Every piece is a non-negative integer, pieces
differ from the exact share by less than 1, and the pieces always add up to exactly ``T``
-- so the sum of the hourly rollups of a group equals the sum of its interval usages to the
unit, and no rounding drift accumulates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from governor.metering.usage import QUANTITIES, Interval, IntervalUsage

HOUR = timedelta(hours=1)

#: quantities carried by an hourly rollup (all integers): an interval's, in its order
ROLLUP_QUANTITIES = QUANTITIES


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """Split the integer ``total`` in proportion to ``weights``; the parts sum to ``total``."""
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("weights must add up to a positive number")
    parts: list[int] = []
    running = 0
    done = 0
    for w in weights:
        running += w
        upto = total * running // whole
        parts.append(upto - done)
        done = upto
    return parts


def hour_floor(dt: datetime) -> datetime:
    """The start of the hour containing ``dt``."""
    return dt.replace(minute=0, second=0, microsecond=0)


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def hour_pieces(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """``(hour, microseconds of [start, end) inside that hour)`` for each hour touched."""
    pieces: list[tuple[datetime, int]] = []
    hour = hour_floor(start)
    cursor = start
    while cursor < end:
        nxt = min(hour + HOUR, end)
        pieces.append((hour, _us(nxt - cursor)))
        cursor = nxt
        hour += HOUR
    return pieces


def split_by_hour(usage: IntervalUsage) -> list[tuple[datetime, int, dict[str, int]]]:
    """Split one interval on hour boundaries: ``(hour, covered_us, quantities)`` per piece.

    Quantities that are ``None`` in the interval (unknown) are left out of every piece.
    """
    hour = hour_floor(usage.start)
    if usage.start < usage.end <= hour + HOUR:
        # within one hour (nearly every interval): one piece holding everything, which
        # is what the split below gives for a single weight, without its arithmetic
        return [(hour, usage.duration_us, {name: value for name in ROLLUP_QUANTITIES
                                           if (value := getattr(usage, name)) is not None})]
    pieces = hour_pieces(usage.start, usage.end)
    if not pieces:
        return []
    weights = [us for _, us in pieces]
    out: list[tuple[datetime, int, dict[str, int]]] = [(h, us, {}) for h, us in pieces]
    # the integrals' own length (monotonic) may differ slightly from the wall-clock
    # length; the covered time per hour is the wall-clock share of duration_us, split exactly
    covered = split_exact(usage.duration_us, weights)
    out = [(h, c, q) for (h, _, q), c in zip(out, covered, strict=True)]
    for name in ROLLUP_QUANTITIES:
        value = getattr(usage, name)
        if value is None:
            continue
        for (_, _, q), part in zip(out, split_exact(value, weights), strict=True):
            q[name] = part
    return out


def split_interval(iv: Interval) -> list[tuple[datetime, int, tuple[int | None, ...]]]:
    """:func:`split_by_hour` of an :class:`~governor.metering.usage.Interval`:
    ``(hour, covered_us, quantities)`` per piece, quantities in the interval's order
    (``None`` stays ``None`` in every piece)."""
    hour = hour_floor(iv.start)
    if iv.start < iv.end <= hour + HOUR:
        return [(hour, iv.duration_us, iv.quantities)]   # nearly every interval
    pieces = hour_pieces(iv.start, iv.end)
    if not pieces:
        return []
    weights = [us for _, us in pieces]
    covered = split_exact(iv.duration_us, weights)
    shares = [split_exact(v, weights) if v is not None else [None] * len(pieces)
              for v in iv.quantities]
    return [(h, c, tuple(col[i] for col in shares))
            for i, ((h, _), c) in enumerate(zip(pieces, covered, strict=True))]
