"""The right-sizing rules: pure math on a group's history (no store, no kernel).

A :class:`History` is what :mod:`governor.recommend.history` read for one group over the
window; :func:`recommend` turns it into a :class:`Recommendation`: the suggested
``memory.max``, ``memory.high``, ``cpu.max`` and ``cpu.weight`` (kernel values) and the
flags ``starved``, ``over-provisioned`` or ``no-data`` with their reasons.  The formulas
and the references they follow are in docs/recommend.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from governor.policy.units import DEFAULT_PERIOD_US, format_size, shares_to_weight

MIB: Final = 1 << 20
#: KEP-2570 (Kubernetes memory QoS): memory.high = memory.limit * memoryThrottlingFactor
THROTTLING_FACTOR: Final = 0.9
#: the PSI resources whose ``some`` share of wall time is checked
PRESSURE_RESOURCES: Final = ("cpu", "memory", "io")
#: kubelet's MilliCPUToShares: shares = millicores * 1024 / 1000
SHARES_PER_CORE: Final = 1024
#: the suggested files, in the order they are shown
FILES: Final = ("memory.max", "memory.high", "cpu.max", "cpu.weight")
#: what the working set is measured as (inactive_file is not sampled: docs/recommend.md)
WORKING_SET_BASIS: Final = "memory.current"


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs of the rules (the command's options), as fractions and bytes."""

    headroom: float = 0.20
    memory_floor: int = 16 * MIB
    #: the least cpu.max suggested, in cores (10 ms per 100 ms period)
    cpu_floor: float = 0.1
    #: PSI some share of wall time above which a group is starved
    pressure: float = 0.10
    #: nr_throttled / nr_periods above which a group is starved
    throttled: float = 0.10
    #: a limit this many times above what is used is over-provisioned
    over_factor: float = 2.0
    memory_percentile: float = 99.0
    cpu_percentile: float = 95.0


@dataclass(frozen=True, slots=True)
class History:
    """One group's samples in the window, reduced to what the rules read.

    ``working_set``: one value per sample (bytes); ``cpu_rates``: cores used over each
    interval between two samples of one incarnation; the sums of throttling deltas, the
    PSI ``some`` share of wall time per resource (None: not measured), OOM kills; and the
    limits in force (kernel values by file) with where they were found."""

    tenant: str
    group: str
    samples: int = 0
    first: datetime | None = None
    last: datetime | None = None
    working_set: Sequence[int] = ()
    cpu_rates: Sequence[float] = ()
    nr_periods: int = 0
    nr_throttled: int = 0
    pressure: Mapping[str, float | None] = field(default_factory=dict)
    oom_kills: int = 0
    limits: Mapping[str, str] = field(default_factory=dict)
    limits_from: str = ""

    @property
    def path(self) -> str:
        return f"{self.tenant}/{self.group}"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The result for one group: figures measured, suggestions (kernel values by file),
    flags with their reasons, and notes on how the suggestions were bounded."""

    tenant: str
    group: str
    flags: tuple[str, ...]
    reasons: tuple[str, ...]
    samples: int
    first: datetime | None
    last: datetime | None
    basis: str
    figures: Mapping[str, float | int | None]
    current: Mapping[str, str]
    limits_from: str
    suggest: Mapping[str, str]
    notes: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"{self.tenant}/{self.group}"

    def as_dict(self) -> dict[str, object]:
        return {"tenant": self.tenant, "group": self.group, "flags": list(self.flags),
                "reasons": list(self.reasons), "samples": self.samples,
                "first": self.first.isoformat() if self.first else None,
                "last": self.last.isoformat() if self.last else None,
                "working_set_basis": self.basis, "figures": dict(self.figures),
                "current": dict(self.current), "limits_from": self.limits_from or None,
                "suggest": dict(self.suggest), "notes": list(self.notes)}


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``pct`` percent of
    the values at or below it (p100 is the maximum).  ``values`` must not be empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile {pct} is not in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(pct / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def mib_up(n: float) -> int:
    """``n`` bytes rounded up to a whole MiB."""
    return math.ceil(n / MIB) * MIB


def _size(n: int) -> str:
    return format_size(n)


def _limit_bytes(value: str | None) -> int | None:
    """A memory file's kernel value as bytes, None for ``max`` or unknown."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _cpu_cores(value: str | None) -> float | None:
    """cpu.max's ``"QUOTA PERIOD"`` as cores, None for ``max`` or unknown."""
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit() or parts[1] == "0":
        return None
    return int(parts[0]) / int(parts[1])


def _memory(h: History, s: Settings, *, starved: bool, suggest: dict[str, str],
            notes: list[str], figures: dict[str, float | int | None]) -> None:
    ws = h.working_set
    peak, p99 = max(ws), percentile(ws, s.memory_percentile)
    figures.update(working_set_peak=peak, working_set_p99=p99)
    high = mib_up(p99 * (1 + s.headroom))
    if high < s.memory_floor:
        notes.append(f"memory.high {_size(high)} raised to the floor "
                     f"{_size(s.memory_floor)}")
        high = s.memory_floor
    top = max(mib_up(peak * (1 + s.headroom)), mib_up(high / THROTTLING_FACTOR))
    current = _limit_bytes(h.limits.get("memory.max"))
    if starved and current is not None and mib_up(current * (1 + s.headroom)) >= top:
        top = mib_up(current * (1 + s.headroom))
        high = max(high, top * 9 // 10 // MIB * MIB)
        notes.append(f"memory.max: the working set was held down by the limit "
                     f"{_size(current)}, so the suggestion is the limit plus the headroom; "
                     f"run again after a window at the new limit")
    suggest["memory.max"] = str(top)
    suggest["memory.high"] = str(high)


def _cpu(h: History, s: Settings, *, throttled: bool, suggest: dict[str, str],
         notes: list[str], figures: dict[str, float | int | None]) -> None:
    p95 = percentile(h.cpu_rates, s.cpu_percentile)
    figures["cpu_p95_cores"] = round(p95, 6)
    want = p95 * (1 + s.headroom)
    current = _cpu_cores(h.limits.get("cpu.max"))
    if throttled and current is not None and current * (1 + s.headroom) >= want:
        want = current * (1 + s.headroom)
        notes.append(f"cpu.max: usage was held down by the quota ({current:g} cores), so the "
                     f"suggestion is the quota plus the headroom; run again after a window "
                     f"at the new quota")
    if want < s.cpu_floor:
        notes.append(f"cpu.max {want:.3f} cores raised to the floor {s.cpu_floor:g} cores")
        want = s.cpu_floor
    quota = math.ceil(want * DEFAULT_PERIOD_US / 1000) * 1000
    suggest["cpu.max"] = f"{quota} {DEFAULT_PERIOD_US}"
    shares = math.ceil(quota / DEFAULT_PERIOD_US * SHARES_PER_CORE)
    suggest["cpu.weight"] = str(shares_to_weight(shares))


def _starved(h: History, s: Settings, ratio: float | None) -> tuple[list[str], bool, bool]:
    """The starvation reasons, whether memory was starved, whether CPU was throttled."""
    reasons: list[str] = []
    for res in PRESSURE_RESOURCES:
        share = h.pressure.get(res)
        if share is not None and share > s.pressure:
            reasons.append(f"{res} pressure: some tasks stalled {share:.1%} of the time "
                           f"(over {s.pressure:.0%})")
    throttled = ratio is not None and ratio > s.throttled
    if throttled:
        reasons.append(f"cpu throttled in {ratio:.1%} of periods (over {s.throttled:.0%})")
    if h.oom_kills:
        reasons.append(f"{h.oom_kills} OOM kill{'s' if h.oom_kills != 1 else ''} in the "
                       f"window")
    mem_pressure = h.pressure.get("memory")
    memory = bool(h.oom_kills) or (mem_pressure is not None and mem_pressure > s.pressure)
    return reasons, memory, throttled


def _over(h: History, s: Settings, figures: Mapping[str, float | int | None]) -> list[str]:
    reasons: list[str] = []
    limit = _limit_bytes(h.limits.get("memory.max"))
    p99 = figures.get("working_set_p99")
    if limit is not None and p99 is not None and limit > s.over_factor * max(p99, 1):
        reasons.append(f"memory.max {_size(limit)} is {limit / max(p99, 1):.1f}x the p99 "
                       f"working set {_size(mib_up(p99))} (over {s.over_factor:g}x)")
    cores = _cpu_cores(h.limits.get("cpu.max"))
    p95 = figures.get("cpu_p95_cores")
    if cores is not None and p95 is not None and cores > s.over_factor * p95:
        reasons.append(f"cpu.max {cores:g} cores is over {s.over_factor:g}x the p95 usage "
                       f"{p95:.3f} cores")
    return reasons


def recommend(h: History, s: Settings) -> Recommendation:
    """Suggestions and flags for one group (docs/recommend.md gives the formulas).

    A group without samples is ``no-data`` with no suggestion (missing is not zero)."""
    figures: dict[str, float | int | None] = {}
    suggest: dict[str, str] = {}
    notes: list[str] = []
    if not h.working_set and not h.cpu_rates:
        return Recommendation(h.tenant, h.group, ("no-data",),
                              ("no sample in the window",), h.samples, h.first, h.last,
                              WORKING_SET_BASIS, figures, dict(h.limits), h.limits_from,
                              suggest, ())
    ratio = h.nr_throttled / h.nr_periods if h.nr_periods > 0 else None
    figures["throttled_ratio"] = None if ratio is None else round(ratio, 6)
    figures["oom_kills"] = h.oom_kills
    for res in PRESSURE_RESOURCES:
        share = h.pressure.get(res)
        figures[f"{res}_pressure_some"] = None if share is None else round(share, 6)
    starved, memory_starved, throttled = _starved(h, s, ratio)
    if h.working_set:
        _memory(h, s, starved=memory_starved, suggest=suggest, notes=notes, figures=figures)
    else:
        notes.append("memory: not sampled in the window, no suggestion")
    if h.cpu_rates:
        _cpu(h, s, throttled=throttled, suggest=suggest, notes=notes, figures=figures)
    else:
        notes.append("cpu: fewer than two samples of one incarnation, no rate to size from")
    over = _over(h, s, figures)
    flags = tuple(f for f, why in (("starved", starved), ("over-provisioned", over)) if why)
    return Recommendation(h.tenant, h.group, flags, (*starved, *over), h.samples, h.first,
                          h.last, WORKING_SET_BASIS, figures, dict(h.limits), h.limits_from,
                          suggest, tuple(notes))
