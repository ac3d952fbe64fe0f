"""Metering model: raw samples in, interval usage and hourly rollups out.  No I/O here.

* :mod:`governor.metering.sample` -- :class:`GroupSample`, the raw counters the sampler reads;
* :mod:`governor.metering.usage` -- :func:`usage_between`, the usage of one interval from a
  pair of samples (``None`` on a reset or a new incarnation, never a negative number);
* :mod:`governor.metering.rollup` -- splitting intervals on hour boundaries with exact integer
  sums (the meter adds the pieces up into the hourly rollups);
* :mod:`governor.metering.meter` -- the meter step: :func:`pair_series` (the one pairing
  rule) and the daemon's in-memory :class:`Meter` (anchors held between passes).
"""

from governor.metering.rollup import split_by_hour, split_exact
from governor.metering.sample import IO_FIELDS, GroupSample, IoCounters
from governor.metering.usage import IntervalUsage, usage_between

__all__ = [
    "IO_FIELDS",
    "GroupSample",
    "IntervalUsage",
    "IoCounters",
    "split_by_hour",
    "split_exact",
    "usage_between",
]
