"""The pids controller (Documentation/admin-guide/cgroup-v2.rst, "PID").

Policy key: ``pids.max`` (a number of tasks, or "max"), validated by
governor.policy.limits.  Read on every pass: ``pids.current``.

A first-wave controller: its value travels in GroupSample's ``pids_current``, parsed by
the specialised paths (C accelerators included); this module declares the names those
paths use.
"""

from __future__ import annotations

from typing import Final

from governor.controllers.base import Controller, Metric, PolicyKey

CONTROLLER: Final = Controller(
    name="pids",
    doc="the number of tasks and its limit",
    keys=(PolicyKey("pids.max", "the most tasks the group may hold (1..2^31-1, or max)",
                    "512"),),
    defaults={"pids.max": "max"},
    pass_files=("pids.current",),
    gauges=("pids_current",),
    metrics=(
        Metric("governor_pids_current", "gauge", "Tasks in the group (pids.current).",
               kind="attr", source="pids_current"),
        Metric("governor_pids_max", "gauge",
               "Task limit from the policy (pids.max; +Inf: no limit).",
               kind="limit", source="pids_max"),
    ),
)
