"""Pressure stall information: ``cpu.pressure``, ``memory.pressure``, ``io.pressure``
(Documentation/accounting/psi.rst).

Not a controller of ``cgroup.controllers``: the pressure files are the cgroup core's
(every group has them on a kernel built with CONFIG_PSI, whichever controllers are
enabled), declared here as one module so that a reader finds them in one place.  Read on
every pass; their ``total=`` stall times travel in GroupSample's ``psi`` (keys
``<resource>_<some|full>``, governor.metering.sample.PSI_KEYS).  No policy key: the OOM
settings' ``oom.pressure`` thresholds are the OOM watch's (governor.oom).
"""

from __future__ import annotations

from typing import Final

from governor.controllers.base import Controller, Metric

#: the resources with a pressure file, and how the metrics' help names them
_RESOURCES: Final = (("cpu", "CPU"), ("memory", "memory"), ("io", "IO"))

CONTROLLER: Final = Controller(
    name="pressure",
    doc="pressure stall information (PSI) of CPU, memory and IO",
    pass_files=tuple(f"{res}.pressure" for res, _ in _RESOURCES),
    metrics=tuple(
        Metric(f"governor_{res}_pressure_{line}_seconds_total", "counter",
               f"Time {'some' if line == 'some' else 'all'} tasks stalled on {what} "
               f"({res}.pressure {line} total).", kind="psi", source=res, key=line)
        for res, what in _RESOURCES for line in ("some", "full")),
)
