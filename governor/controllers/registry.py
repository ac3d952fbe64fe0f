"""The registered controllers: one line per controller module.

The sampler, planner, store, meter, bills, exporter and status iterate over
:data:`CONTROLLERS` (through the helpers below); adding a controller is its module plus one
line here (docs/architecture.md, "Adding a controller").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from governor.controllers import cpu, cpuset, hugetlb, io, memory, pids, pressure
from governor.controllers.base import Column, Controller, Metric, PolicyKey, Quantity

#: in the order their writes are applied and their columns shown
CONTROLLERS: Final[tuple[Controller, ...]] = (
    memory.CONTROLLER,
    cpu.CONTROLLER,
    io.CONTROLLER,
    pids.CONTROLLER,
    pressure.CONTROLLER,
    cpuset.CONTROLLER,
    hugetlb.CONTROLLER,
)

#: the order of the first-wave controllers' parts in the specialised paths' layouts: the
#: reader's pass files (the descriptors _fastread preads, bench/sampling_peer.c's command
#: line), GroupSample's counters (_fastmeter.c's COUNTER_NAMES) and gauges (the raw
#: samples' columns) and the exporter's families.  Fixed by those layouts, not by
#: CONTROLLERS (tests/unit/test_controller_registry.py compares them).
_LAYOUT: Final = ("cpu", "memory", "io", "pids", "pressure")


def by_name(name: str) -> Controller | None:
    return next((c for c in CONTROLLERS if c.name == name), None)


def generic() -> tuple[Controller, ...]:
    """The controllers whose values travel in ``GroupSample.values``."""
    return tuple(c for c in CONTROLLERS if c.generic)


def first_wave() -> tuple[Controller, ...]:
    """The controllers with specialised paths (not :func:`generic`), in the order of those
    paths' layouts (:data:`_LAYOUT`)."""
    return tuple(sorted((c for c in CONTROLLERS if not c.generic),
                        key=lambda c: _LAYOUT.index(c.name)))


def policy_key(key: str) -> tuple[Controller, PolicyKey] | None:
    """The generic controller and declaration a policy key belongs to, or None."""
    for c in generic():
        k = c.key(key)
        if k is not None:
            return c, k
    return None


def policy_keys() -> Iterator[PolicyKey]:
    for c in CONTROLLERS:
        yield from c.keys


def kernel_defaults() -> dict[str, str]:
    """Interface file -> the kernel's default, over every controller."""
    out: dict[str, str] = {}
    for c in CONTROLLERS:
        out.update(c.defaults)
    return out


def kernel_default(file: str) -> str | None:
    for c in CONTROLLERS:
        d = c.kernel_default(file)
        if d is not None:
            return d
    return None


def pass_files() -> tuple[str, ...]:
    """The files the reader reads on every pass (governor.cgroupfs.reader.FAST_FILES)."""
    return tuple(f for c in first_wave() for f in c.pass_files)


def counters() -> tuple[str, ...]:
    """GroupSample's counter fields (governor.metering.sample.COUNTER_FIELDS)."""
    return tuple(f for c in first_wave() for f in c.counters)


def gauges() -> tuple[str, ...]:
    """GroupSample's gauge fields read from cgroup files (GAUGE_FIELDS without the
    writable layers' ``storage_bytes``)."""
    return tuple(f for c in first_wave() for f in c.gauges)


def quantities() -> tuple[Quantity, ...]:
    return tuple(q for c in CONTROLLERS for q in c.quantities)


def metrics() -> tuple[Metric, ...]:
    return tuple(m for c in CONTROLLERS for m in c.metrics)


def generic_metrics() -> tuple[Metric, ...]:
    """The generic controllers' metric families (the first wave's are rendered by their
    specialised paths: :func:`first_wave`)."""
    return tuple(m for c in generic() for m in c.metrics)


def columns() -> tuple[Column, ...]:
    return tuple(col for c in CONTROLLERS for col in c.columns)
