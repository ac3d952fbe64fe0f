"""The cpu controller (Documentation/admin-guide/cgroup-v2.rst, "CPU").

Policy keys: ``cpu.weight`` (or Docker's ``cpu.shares``, converted), ``cpu.max`` (or
``cpus``, a number of cores) and ``cpu.max.burst``, validated by governor.policy.limits
(the cross-key checks: one of each pair, the burst below the quota).  Read on every pass:
``cpu.stat``.  Billed: ``usage_usec`` in core-hours.

A first-wave controller: its values travel in GroupSample fields of their own, parsed and
metered by the specialised paths (C accelerators included); this module declares the names
those paths use.
"""

from __future__ import annotations

from typing import Final

from governor.controllers.base import Controller, Metric, PolicyKey, Quantity

_HOUR_US: Final = 3_600_000_000

CONTROLLER: Final = Controller(
    name="cpu",
    doc="CPU time, weight, bandwidth limit and throttling",
    keys=(
        PolicyKey("cpu.weight", "the group's share of CPU time under contention (1..10000)",
                  "200"),
        PolicyKey("cpu.shares", "cgroup v1/Docker CPU shares, converted to cpu.weight",
                  "1024"),
        PolicyKey("cpu.max", "CPU bandwidth limit: quota and period in microseconds",
                  '"50000 100000"'),
        PolicyKey("cpus", "CPU bandwidth limit as a number of cores (cpu.max)", "1.5"),
        PolicyKey("cpu.max.burst", "CPU time the group may bank above its quota", '"20ms"'),
    ),
    defaults={"cpu.weight": "100", "cpu.max": "max 100000", "cpu.max.burst": "0"},
    pass_files=("cpu.stat",),
    counters=("cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
              "cpu_nr_throttled", "cpu_throttled_usec"),
    quantities=(
        Quantity("cpu_usec", "cpu", "core-hour", "cpu_core_hour", _HOUR_US,
                 "CPU time used (cpu.stat usage_usec)"),
        Quantity("cpu_user_usec", "cpu_user", "core-hour", None, _HOUR_US,
                 "CPU time in user mode (cpu.stat user_usec)"),
        Quantity("cpu_system_usec", "cpu_system", "core-hour", None, _HOUR_US,
                 "CPU time in kernel mode (cpu.stat system_usec)"),
        Quantity("cpu_throttled_usec", "cpu_throttled", "hour", None, _HOUR_US,
                 "time the group was throttled by cpu.max (cpu.stat throttled_usec)"),
    ),
    metrics=(
        Metric("governor_cpu_usage_seconds_total", "counter",
               "CPU time used by the group's tasks (cpu.stat usage_usec).",
               usec=True, kind="key", source="cpu", key="usage_usec"),
        Metric("governor_cpu_user_seconds_total", "counter",
               "CPU time in user mode (cpu.stat user_usec).",
               usec=True, kind="key", source="cpu", key="user_usec"),
        Metric("governor_cpu_system_seconds_total", "counter",
               "CPU time in kernel mode (cpu.stat system_usec).",
               usec=True, kind="key", source="cpu", key="system_usec"),
        Metric("governor_cpu_periods_total", "counter",
               "Enforcement periods elapsed under cpu.max (cpu.stat nr_periods).",
               kind="key", source="cpu", key="nr_periods"),
        Metric("governor_cpu_throttled_periods_total", "counter",
               "Periods in which the group was throttled by cpu.max (cpu.stat nr_throttled).",
               kind="key", source="cpu", key="nr_throttled"),
        Metric("governor_cpu_throttled_seconds_total", "counter",
               "Time the group's tasks were throttled by cpu.max (cpu.stat throttled_usec).",
               usec=True, kind="key", source="cpu", key="throttled_usec"),
    ),
)
