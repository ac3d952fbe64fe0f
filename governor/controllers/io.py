"""The io controller (Documentation/admin-guide/cgroup-v2.rst, "IO").

Policy keys: ``io.weight`` (or Docker's ``io.blkio_weight``, converted) and ``io.max``
(a table of devices, each with rbps, wbps, riops, wiops), validated by
governor.policy.limits (devices resolved, one weight key).  Read on every pass:
``io.stat``.  Billed: bytes read and written, in GiB.

A first-wave controller: its values travel in GroupSample's ``io`` (per device), parsed and
metered by the specialised paths (C accelerators included); this module declares the names
those paths use.
"""

from __future__ import annotations

from typing import Final

from governor.controllers.base import Controller, Metric, PolicyKey, Quantity

_GIB: Final = 1 << 30

CONTROLLER: Final = Controller(
    name="io",
    doc="block IO: weight, per-device limits, bytes and operations",
    keys=(
        PolicyKey("io.weight", "the group's share of IO under contention (1..10000)", "200"),
        PolicyKey("io.blkio_weight", "Docker blkio-weight (10..1000), converted to io.weight",
                  "500"),
        PolicyKey("io.max", "per-device limits: rbps, wbps (sizes), riops, wiops",
                  '{ "/dev/vda" = { wbps = "10M" } }'),
    ),
    defaults={"io.weight": "default 100"},
    pass_files=("io.stat",),
    quantities=(
        Quantity("io_rbytes", "io_read", "GiB", "io_read_gib", _GIB,
                 "bytes read, all devices (io.stat rbytes)"),
        Quantity("io_wbytes", "io_write", "GiB", "io_write_gib", _GIB,
                 "bytes written, all devices (io.stat wbytes)"),
        Quantity("io_rios", "io_reads", "operation", None, 1,
                 "read operations, all devices (io.stat rios)"),
        Quantity("io_wios", "io_writes", "operation", None, 1,
                 "write operations, all devices (io.stat wios)"),
        Quantity("io_dbytes", "io_discard", "GiB", None, _GIB,
                 "bytes discarded, all devices (io.stat dbytes)"),
    ),
    metrics=(
        Metric("governor_io_read_bytes_total", "counter",
               "Bytes read from the device (io.stat rbytes).", kind="device", key="rbytes"),
        Metric("governor_io_written_bytes_total", "counter",
               "Bytes written to the device (io.stat wbytes).", kind="device", key="wbytes"),
        Metric("governor_io_reads_total", "counter",
               "Read operations on the device (io.stat rios).", kind="device", key="rios"),
        Metric("governor_io_writes_total", "counter",
               "Write operations on the device (io.stat wios).", kind="device", key="wios"),
        Metric("governor_io_discarded_bytes_total", "counter",
               "Bytes discarded on the device (io.stat dbytes).", kind="device", key="dbytes"),
    ),
)
