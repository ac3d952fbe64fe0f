"""The memory controller (Documentation/admin-guide/cgroup-v2.rst, "Memory").

Policy keys: the sizes ``memory.min``, ``memory.low``, ``memory.high``, ``memory.max``,
``memory.swap.max`` and ``oom.group_kill`` (``memory.oom.group``), validated by
governor.policy.limits (the cross-key checks: a protection above the hard limit).  Read on
every pass: ``memory.current``, ``memory.peak`` (Linux 5.19+), ``memory.swap.current`` and
``memory.events``; ``memory.stat``'s subset on the slow tier.  Billed: the integral of
``memory.current`` (byte-seconds) and the OOM kills of ``memory.events``.

A first-wave controller: its values travel in GroupSample fields of their own, parsed and
metered by the specialised paths (C accelerators included); this module declares the names
those paths use.
"""

from __future__ import annotations

from typing import Final

from governor.controllers.base import Controller, Metric, PolicyKey, Quantity

#: the size keys (bytes, or a size like "512M", or "max"), in the order they are checked
SIZES: Final = (
    PolicyKey("memory.min", "memory the kernel never reclaims from the group (protection)",
              '"256M"'),
    PolicyKey("memory.low", "best-effort protection: reclaimed only when nothing else can be",
              '"512M"'),
    PolicyKey("memory.high", "throttling threshold: reclaimed hard above it, never killed",
              '"1G"'),
    PolicyKey("memory.max", "hard limit: the OOM killer runs in the group above it", '"2G"'),
    PolicyKey("memory.swap.max", "swap the group may use", '"512M"'),
)
GROUP_KILL: Final = PolicyKey(
    "oom.group_kill", "an OOM kill in the group kills the whole group (memory.oom.group)",
    "true")

_GIB: Final = 1 << 30

CONTROLLER: Final = Controller(
    name="memory",
    doc="memory use, limits, protections and OOM events",
    keys=(*SIZES, GROUP_KILL),
    defaults={"memory.min": "0", "memory.low": "0", "memory.high": "max",
              "memory.max": "max", "memory.swap.max": "max", "memory.oom.group": "0"},
    pass_files=("memory.current", "memory.peak", "memory.swap.current", "memory.events"),
    counters=("memory_events_low", "memory_events_high", "memory_events_max",
              "memory_events_oom", "memory_events_oom_kill", "memory_events_oom_group_kill"),
    gauges=("memory_current", "memory_peak", "memory_swap_current", "memory_stat_anon",
            "memory_stat_file", "memory_stat_kernel", "memory_stat_sock",
            "memory_stat_shmem"),
    quantities=(
        Quantity("memory_byte_seconds", "memory", "GiB-hour", "memory_gib_hour", _GIB * 3600,
                 "the integral of memory.current (trapezoid over each interval)"),
        Quantity("oom_events", "oom_event", "event", None, 1,
                 "times the group hit its limit and the OOM killer ran (memory.events oom)"),
        Quantity("oom_kills", "oom_kill", "kill", "oom_kill", 1,
                 "processes killed by the OOM killer (memory.events oom_kill)"),
    ),
    metrics=(
        Metric("governor_memory_usage_bytes", "gauge",
               "Memory charged to the group (memory.current).",
               kind="attr", source="memory_current"),
        Metric("governor_memory_peak_bytes", "gauge",
               "Highest memory usage since the group was created (memory.peak).",
               kind="attr", source="memory_peak"),
        Metric("governor_memory_swap_usage_bytes", "gauge",
               "Swap used by the group (memory.swap.current).",
               kind="attr", source="swap_current"),
        Metric("governor_memory_low_events_total", "counter",
               "Times reclaim ran below memory.low (memory.events low).",
               kind="key", source="memory_events", key="low"),
        Metric("governor_memory_high_events_total", "counter",
               "Times the group was throttled for exceeding memory.high (memory.events high).",
               kind="key", source="memory_events", key="high"),
        Metric("governor_memory_max_events_total", "counter",
               "Times usage was about to exceed memory.max (memory.events max).",
               kind="key", source="memory_events", key="max"),
        Metric("governor_oom_events_total", "counter",
               "Times the group hit its limit and the OOM killer was invoked "
               "(memory.events oom).",
               kind="key", source="memory_events", key="oom"),
        Metric("governor_oom_kills_total", "counter",
               "Processes in the group killed by the OOM killer (memory.events oom_kill).",
               kind="key", source="memory_events", key="oom_kill"),
        Metric("governor_oom_group_kills_total", "counter",
               "Whole-group OOM kills, memory.oom.group (memory.events oom_group_kill).",
               kind="key", source="memory_events", key="oom_group_kill"),
        Metric("governor_memory_max_bytes", "gauge",
               "Hard memory limit from the policy (memory.max; +Inf: no limit).",
               kind="limit", source="memory_max"),
        Metric("governor_memory_high_bytes", "gauge",
               "Memory throttling threshold from the policy (memory.high; +Inf: none).",
               kind="limit", source="memory_high"),
        Metric("governor_memory_low_bytes", "gauge",
               "Best-effort memory protection from the policy (memory.low).",
               kind="limit", source="memory_low"),
        Metric("governor_memory_min_bytes", "gauge",
               "Hard memory protection from the policy (memory.min).",
               kind="limit", source="memory_min"),
        Metric("governor_memory_swap_max_bytes", "gauge",
               "Swap limit from the policy (memory.swap.max; +Inf: no limit).",
               kind="limit", source="memory_swap_max"),
    ),
)
