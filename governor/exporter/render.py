"""The fast renderer of the Prometheus text exposition format (version 0.0.4).

The sampler renders once per pass (:func:`render`) and every scrape is served from that
rendering (:class:`Rendering`, with a gzip copy made on the first gzip request), so a scrape
costs a memcpy, not a walk over the groups.  The input is plain data, never the store:
the latest :class:`~governor.cgroupfs.reader.GroupStats` per group path (``Sampler.latest``),
the pass's :class:`~governor.metering.sample.GroupSample` per path (for what only a sample
carries: the writable layers' bytes), the policy's :class:`~governor.policy.model.Limits`
per path, billed cost per tenant and currency, and the governor's own health counters
(:class:`Snapshot`).

The output is byte-for-byte what prometheus-client's ``generate_latest`` writes for the same
families (labels in sorted name order, values through client_python's ``floatToGoString``,
HELP escaped the same way): ``tests/unit/test_exporter_render.py`` compares the two, and
``bench/exporter.py`` times them.  Every metric is documented in ``docs/metrics.md``.

Label conventions: ``tenant``, ``group``, ``node`` and, for IO, ``device`` (``MAJ:MIN``).  A
tenant's own cgroup (which contains all its groups) has ``group=""``, so ``{group=""}``
selects tenant totals and ``{group!=""}`` the groups (summing both would count twice).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from governor.cgroupfs.reader import GroupStats
from governor.controllers import registry
from governor.controllers.base import Metric
from governor.exporter.compress import gunzip, gzip_member
from governor.exporter.families import (
    KIND_ATTR,
    KIND_DICT,
    KIND_DICT_USEC,
    KIND_ITEM,
    KIND_PSI_FULL,
    KIND_PSI_SOME,
    escape_help,
    escape_label,
    family,
)
from governor.exporter.generic import controller_families
from governor.metering.sample import GroupSample
from governor.policy.model import Limits
from governor.policy.units import MAX

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_INF: Final = math.inf
_NINF: Final = -math.inf


def fmt_value(v: float | int) -> str:
    """A sample value exactly as client_python's ``floatToGoString`` writes it."""
    d = float(v)
    s = repr(d)
    if d > 0:
        dot = s.find(".")
        if dot > 6:  # Go switches to exponent notation sooner than Python
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        if d == _INF:
            return "+Inf"
        return s
    if d == d and d != _NINF:  # noqa: PLR0124 (NaN is the value not equal to itself)
        return s
    return "NaN" if d != d else "-Inf"  # noqa: PLR0124


@dataclass(frozen=True, slots=True)
class Health:
    """The governor's own health, as plain values (None: not known / not wired)."""

    #: wall seconds of the last sampling pass
    pass_duration: float | None = None
    #: unix time of the last sampling pass that read at least one group without error
    last_success: float | None = None
    #: groups read in the last pass
    groups_sampled: int | None = None
    #: placement outcomes by result ("moved", "excluded", "gone", ...): cumulative counts
    placements: Mapping[str, int] = field(default_factory=dict)
    #: policy reloads by result ("ok", "unchanged", "invalid"): ``Enforcer.reloads``
    reloads: Mapping[str, int] = field(default_factory=dict)
    #: drift corrections by interface file: ``Enforcer.drift``
    drift: Mapping[str, int] = field(default_factory=dict)
    #: failed cgroup writes of the enforcer: ``Enforcer.write_errors``
    enforce_write_errors: int | None = None
    #: failed writes of the last apply or reconcile (0: the kernel matches the policy):
    #: ``Enforcer.last_failed``
    policy_failed_writes: int | None = None
    #: whether the database answers with the schema this governor needs
    database_up: bool | None = None
    #: failed database writes (samples spooled, OOM events not stored)
    db_write_errors: int | None = None
    #: samples waiting in the local spool
    spool_depth: int | None = None
    #: spool writes that failed by errno name ("ENOSPC"...): ``Spool.write_errors``
    spool_write_errors: Mapping[str, int] = field(default_factory=dict)
    #: OOM webhook deliveries by result ("ok", "failed", "dropped")
    alerts: Mapping[str, int] = field(default_factory=dict)
    #: groups whose sample failed, by reason, cumulative: ``Sampler.error_counts``
    sample_errors: Mapping[str, int] = field(default_factory=dict)
    #: CPU seconds of the sampling passes' thread by stage ("read", "store", "meter",
    #: "other", "gc"), cumulative: ``SamplingPass.pass_cpu``
    pass_cpu: Mapping[str, float] = field(default_factory=dict)
    #: CPU seconds of the daemon's scheduled jobs between the passes ("reconcile",
    #: "placement-rescan", "costs", "retention", "spool-drain"), cumulative: ``Daemon.job_cpu``
    job_cpu: Mapping[str, float] = field(default_factory=dict)
    #: metrics-endpoint connections cut, by reason: ``Exporter.dropped()``
    exporter_dropped: Mapping[str, int] = field(default_factory=dict)
    #: times each group ("tenant/group") reached its storage.max: ``StorageMeter.
    #: full_counts`` (0 from the first pass that sees the group's limit)
    storage_full: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one rendering shows."""

    node: str
    #: ``Sampler.latest``: "tenant" or "tenant/group" -> raw stats
    groups: Mapping[str, GroupStats]
    #: the pass's samples by path, for the gauges a sample carries beyond the cgroup files
    #: (``storage_bytes``); a group whose sample failed this pass has none
    samples: Mapping[str, GroupSample] = field(default_factory=dict)
    #: the policy's limits per path (groups not in the policy get no limit series)
    limits: Mapping[str, Limits] = field(default_factory=dict)
    #: billed cost so far in the current period: (tenant, currency) -> amount
    costs: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    #: memory early warnings (PSI trigger or memory.high event) per path, cumulative
    pressure_warnings: Mapping[str, int] = field(default_factory=dict)
    health: Health = field(default_factory=Health)
    #: ``Sampler.effective``: the generic controllers' read-back values per path
    effective: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


# --- the metric table: (name, type, help) -------------------------------------------------
# Counters carry their ``_total`` suffix here; the TYPE line names the sample name, as
# client_python writes it for the 0.0.4 text format.  The per-group families of the
# cgroup files are the first-wave controllers' ``metrics`` (governor/controllers/<name>.py),
# each saying where its value comes from (``kind``, ``source``, ``key``); they are taken
# below by kind, in the order of the exposition.

COUNTER: Final = "counter"
GAUGE: Final = "gauge"


def _m(name: str, typ: Literal["counter", "gauge"], help_: str) -> Metric:
    return Metric(name, typ, help_)


_FIRST_WAVE: Final = tuple(m for c in registry.first_wave() for m in c.metrics)


def _of(kind: str, source: str | None = None) -> tuple[Metric, ...]:
    return tuple(m for m in _FIRST_WAVE
                 if m.kind == kind and (source is None or m.source == source))


#: cpu.stat key -> metric; True: microseconds rendered as seconds
CPU_METRICS: Final[tuple[tuple[Metric, str, bool], ...]] = tuple(
    (m, str(m.key), m.usec) for m in _of("key", "cpu"))
#: GroupStats attribute -> gauge
MEMORY_METRICS: Final[tuple[tuple[Metric, str], ...]] = tuple(
    (m, str(m.source)) for m in _of("attr"))
#: GroupSample attribute -> gauge: what a sample carries beyond the cgroup files
SAMPLE_METRICS: Final[tuple[tuple[Metric, str], ...]] = (
    (_m("governor_storage_bytes", GAUGE,
        "Bytes used by the writable layers of the group's containers launched from images, "
        "summed (a project quota per container); no series while none is measured."),
     "storage_bytes"),
)
#: memory.events key -> counter
EVENT_METRICS: Final[tuple[tuple[Metric, str], ...]] = tuple(
    (m, str(m.key)) for m in _of("key", "memory_events"))
#: PSI resource and line -> counter of the ``total=`` stall time, in seconds
PSI_METRICS: Final[tuple[tuple[Metric, str, str], ...]] = tuple(
    (m, str(m.source), str(m.key)) for m in _of("psi"))

_CPU = CPU_METRICS
_MEM = MEMORY_METRICS
_EVENTS = EVENT_METRICS
_PSI = PSI_METRICS

#: io.stat field -> metric (labels add ``device``)
IO_METRICS: Final[tuple[tuple[Metric, str], ...]] = tuple(
    (m, str(m.key)) for m in _of("device"))

#: Limits attribute -> metric ("max" is rendered as +Inf)
LIMIT_METRICS: Final[tuple[tuple[Metric, str], ...]] = tuple(
    (m, str(m.source)) for m in _of("limit"))
_TAKEN = {m for ms in (CPU_METRICS, MEMORY_METRICS, EVENT_METRICS, PSI_METRICS, IO_METRICS,
                       LIMIT_METRICS) for m, *_ in ms}
if len(_TAKEN) != len(_FIRST_WAVE):  # a family no section of render() writes
    raise ImportError("governor.exporter.render: first-wave metrics not rendered: "
                      f"{[m.name for m in _FIRST_WAVE if m not in _TAKEN]}")

PRESSURE_WARNINGS: Final = _m(
    "governor_memory_pressure_warnings_total", COUNTER,
    "Early OOM warnings raised for the group (PSI trigger on memory.pressure or a "
    "memory.high event).")
COST: Final = _m("governor_billed_cost", GAUGE,
                 "Cost billed to the tenant so far in the current billing period, in the "
                 "currency named by the label.")
PASS_DURATION: Final = _m("governor_sampling_duration_seconds", GAUGE,
                          "Wall time of the last sampling pass.")
LAST_SUCCESS: Final = _m("governor_last_sample_timestamp_seconds", GAUGE,
                         "Unix time of the last successful sampling pass.")
GROUPS_SAMPLED: Final = _m("governor_sampled_groups", GAUGE,
                           "Groups read in the last sampling pass.")
PLACEMENTS: Final = _m("governor_placements_total", COUNTER,
                       "Process placement outcomes by result.")
RELOADS: Final = _m("governor_policy_reloads_total", COUNTER, "Policy reloads by result.")
DRIFT: Final = _m("governor_drift_corrections_total", COUNTER,
                  "Interface files restored after they drifted from the policy, by file.")
ENFORCE_ERRORS: Final = _m("governor_enforce_write_errors_total", COUNTER,
                           "cgroup writes that failed while applying or restoring the policy "
                           "(every attempt counted).")
POLICY_FAILED: Final = _m("governor_policy_failed_writes", GAUGE,
                          "cgroup writes that failed in the last apply or reconcile of the "
                          "policy; 0 once the kernel matches it.")
DATABASE_UP: Final = _m("governor_database_up", GAUGE,
                        "1 while the database answers with the schema this governor needs, "
                        "0 while samples spool locally.")
DB_ERRORS: Final = _m("governor_database_write_errors_total", COUNTER,
                      "Database writes that failed (samples spooled, events not stored).")
SPOOL_DEPTH: Final = _m("governor_spool_depth", GAUGE,
                        "Samples waiting in the local spool for the database.")
SPOOL_WRITE_ERRORS: Final = _m("governor_spool_write_errors_total", COUNTER,
                               "Spool writes that failed (disk full, quota, I/O error) by "
                               "errno; each lost batch is recorded as a gap.")
ALERTS: Final = _m("governor_oom_alerts_total", COUNTER,
                   "OOM alert webhook deliveries by result.")
SAMPLE_ERRORS: Final = _m("governor_sample_errors_total", COUNTER,
                          "Group samples lost because a stat file could not be read or "
                          "parsed, by reason (the pass goes on with the other groups).")
STORAGE_FULL: Final = _m("governor_storage_max_reached_total", COUNTER,
                         "Times the writable layers of a group's containers from images "
                         "reached its storage.max (their writes fail with EDQUOT until "
                         "space is freed or the limit raised).")
PASS_CPU: Final = _m("governor_pass_cpu_seconds_total", COUNTER,
                     "CPU time of the sampling passes by stage: read (the groups' counters), "
                     "store (the raw samples, or the spool), meter (usage and rollups), "
                     "other (the rest of a pass), gc (the collector, within a pass). The whole "
                     "process's is process_cpu_seconds_total.")
JOB_CPU: Final = _m("governor_job_cpu_seconds_total", COUNTER,
                    "CPU time of the daemon's scheduled jobs between the sampling passes, "
                    "by job: reconcile (drift restored), placement-rescan, costs (the "
                    "billed-cost gauge), retention, spool-drain.")
EXPORTER_DROPPED: Final = _m("governor_exporter_connections_dropped_total", COUNTER,
                             "Connections to the metrics endpoint cut by reason: over_limit "
                             "(past max_connections), timeout (past request_timeout).")

ALL_METRICS: Final[tuple[Metric, ...]] = (
    *(m for m, _, _ in CPU_METRICS), *(m for m, _ in MEMORY_METRICS),
    *(m for m, _ in SAMPLE_METRICS), *(m for m, _ in EVENT_METRICS),
    *(m for m, _, _ in PSI_METRICS), *(m for m, _ in IO_METRICS),
    *(m for m, _ in LIMIT_METRICS), PRESSURE_WARNINGS, COST, PASS_DURATION, LAST_SUCCESS,
    GROUPS_SAMPLED, PLACEMENTS, RELOADS, DRIFT, ENFORCE_ERRORS, POLICY_FAILED, DATABASE_UP,
    DB_ERRORS, SPOOL_DEPTH, SPOOL_WRITE_ERRORS, ALERTS, SAMPLE_ERRORS, PASS_CPU,
    EXPORTER_DROPPED, STORAGE_FULL,
)


def split_path(path: str) -> tuple[str, str]:
    """``"acme/web"`` -> ``("acme", "web")``; a tenant path gets group ``""``."""
    tenant, _, group = path.partition("/")
    return tenant, group


def _family(out: list[str], m: Metric, lines: list[str]) -> None:
    """Append one family; a family without samples is left out entirely."""
    if lines:
        out.append(f"# HELP {m.name} {escape_help(m.help)}\n# TYPE {m.name} {m.type}\n")
        out.append("\n".join(lines))
        out.append("\n")


def fam_text(out: list[str], m: Metric, text: str) -> None:
    """Append one family from its joined sample lines; none: the family is left out."""
    if text:
        out.append(f"# HELP {m.name} {escape_help(m.help)}\n# TYPE {m.name} {m.type}\n")
        out.append(text)
        out.append("\n")


def render(snap: Snapshot) -> bytes:
    """The whole exposition for ``snap`` as UTF-8 bytes.

    The per-group families are written by :func:`~governor.exporter.families.family` (C,
    or its Python twin) over pre-escaped label sets; the rest with list comprehensions.
    Integer values are written as exact decimal integers and finite floats with ``repr``
    (shortest round-trip): both parse to exactly the value client_python's
    ``floatToGoString`` spelling parses to.  Values that may be infinite (limits) go through
    :func:`fmt_value`.
    """
    node = escape_label(snap.node)
    out: list[str] = []
    fam = _family
    # label sets of every group, escaped once ("device" < "group" < "node" < "tenant")
    rows: list[tuple[str, Any]] = []   # (labels, GroupStats)
    for path in sorted(snap.groups):
        tenant, group = split_path(path)
        rows.append((f'group="{escape_label(group)}",node="{node}",'
                     f'tenant="{escape_label(tenant)}"}} ', snap.groups[path]))
    for m, key, seconds in _CPU:
        fam_text(out, m, family(m.name + "{", rows, KIND_DICT_USEC if seconds else KIND_DICT,
                                "cpu", key))
    for m, attr in _MEM:
        fam_text(out, m, family(m.name + "{", rows, KIND_ATTR, attr, None))
    samples = snap.samples
    for m, attr in SAMPLE_METRICS:
        # only the samples that have it (few: the groups with containers from images)
        have = sorted(p for p, s in samples.items() if getattr(s, attr) is not None)
        sample_rows: list[tuple[str, Any]] = []   # (labels, GroupSample)
        for path in have:
            tenant, group = split_path(path)
            sample_rows.append((f'group="{escape_label(group)}",node="{node}",'
                                f'tenant="{escape_label(tenant)}"}} ', samples[path]))
        fam_text(out, m, family(m.name + "{", sample_rows, KIND_ATTR, attr, None))
    for m, key in _EVENTS:
        fam_text(out, m, family(m.name + "{", rows, KIND_DICT, "memory_events", key))
    for m, res, line in _PSI:
        fam_text(out, m, family(m.name + "{", rows,
                                KIND_PSI_SOME if line == "some" else KIND_PSI_FULL, "psi", res))
    io_rows: list[tuple[str, Any]] = []
    for lbl, st in rows:
        if st.io:
            for dev in sorted(st.io):
                io_rows.append((f'device="{escape_label(dev)}",{lbl}', st.io[dev]))
    for m, key in IO_METRICS:
        fam_text(out, m, family(m.name + "{", io_rows, KIND_ITEM, "", key))
    limit_rows: list[tuple[str, Limits]] = []
    for path in sorted(snap.limits):
        tenant, group = split_path(path)
        limit_rows.append((f'group="{escape_label(group)}",node="{node}",'
                           f'tenant="{escape_label(tenant)}"}} ', snap.limits[path]))
    for m, attr in LIMIT_METRICS:
        p = m.name + "{"
        lim = [(lbl, getattr(li, attr)) for lbl, li in limit_rows]
        fam(out, m, [f"{p}{lbl}{'+Inf' if v is MAX else v}" for lbl, v in lim
                     if v is not None])
    out.extend(controller_families(node, samples, snap.effective))  # governor/controllers/
    fam(out, PRESSURE_WARNINGS, [
        f'{PRESSURE_WARNINGS.name}{{group="{escape_label(g)}",node="{node}",'
        f'tenant="{escape_label(t)}"}} {snap.pressure_warnings[p]}'
        for p in sorted(snap.pressure_warnings) for t, g in (split_path(p),)])
    fam(out, COST, [
        f'{COST.name}{{currency="{escape_label(cur)}",node="{node}",'
        f'tenant="{escape_label(t)}"}} {fmt_value(float(snap.costs[(t, cur)]))}'
        for t, cur in sorted(snap.costs)])
    h = snap.health
    own = f'{{node="{node}"}} '
    for m, v in ((PASS_DURATION, h.pass_duration), (LAST_SUCCESS, h.last_success),
                 (GROUPS_SAMPLED, h.groups_sampled)):
        if v is not None:
            fam(out, m, [f"{m.name}{own}{fmt_value(v)}"])
    for m, label, counts in ((PLACEMENTS, "result", h.placements),
                             (RELOADS, "result", h.reloads), (DRIFT, "file", h.drift)):
        fam(out, m, _by_label(m.name, label, node, counts))
    for m, v in ((ENFORCE_ERRORS, h.enforce_write_errors),
                 (POLICY_FAILED, h.policy_failed_writes),
                 (DATABASE_UP, None if h.database_up is None else int(h.database_up)),
                 (DB_ERRORS, h.db_write_errors), (SPOOL_DEPTH, h.spool_depth)):
        if v is not None:
            fam(out, m, [f"{m.name}{own}{fmt_value(v)}"])
    fam(out, SPOOL_WRITE_ERRORS, _by_label(SPOOL_WRITE_ERRORS.name, "errno", node,
                                           h.spool_write_errors))
    fam(out, ALERTS, _by_label(ALERTS.name, "result", node, h.alerts))
    fam(out, SAMPLE_ERRORS, _by_label(SAMPLE_ERRORS.name, "reason", node, h.sample_errors))
    fam(out, PASS_CPU, _by_label(PASS_CPU.name, "stage", node, h.pass_cpu))
    fam(out, JOB_CPU, _by_label(JOB_CPU.name, "job", node, h.job_cpu))
    fam(out, EXPORTER_DROPPED, _by_label(EXPORTER_DROPPED.name, "reason", node,
                                         h.exporter_dropped))
    full = []
    for path in sorted(h.storage_full):
        tenant, _, group = path.partition("/")
        full.append(f'{STORAGE_FULL.name}{{group="{escape_label(group)}",node="{node}",'
                    f'tenant="{escape_label(tenant)}"}} {fmt_value(h.storage_full[path])}')
    fam(out, STORAGE_FULL, full)
    return "".join(out).encode()


def _by_label(name: str, label: str, node: str, counts: Mapping[str, float]) -> list[str]:
    # label names sort: "file" < "node", "node" < "result"
    if label < "node":
        return [f'{name}{{{label}="{escape_label(k)}",node="{node}"}} {fmt_value(counts[k])}'
                for k in sorted(counts)]
    return [f'{name}{{node="{node}",{label}="{escape_label(k)}"}} {fmt_value(counts[k])}'
            for k in sorted(counts)]


class Rendering:
    """One exposition, served to every scrape until the next pass replaces it.

    ``body`` is the text, or a function that renders it: then it is rendered on the first
    scrape that asks for it (issue #16: a pass never renders; passes no scrape asks for cost
    nothing, and a scrape serves what the last pass read, never the database), once,
    under a lock.  The gzip copy is made the same way, on the first request that asks for
    it (Prometheus always does); from then on only it is kept (86 KiB against the text's
    2.2 MB at 1,000 groups) and a rare plain request gets it decompressed.
    """

    __slots__ = ("_body", "_gz", "_lock", "_make", "created")

    def __init__(self, body: bytes | Callable[[], bytes], created: float | None = None
                 ) -> None:
        self._body: bytes | None = body if isinstance(body, bytes) else None
        self._make: Callable[[], bytes] | None = None if isinstance(body, bytes) else body
        #: unix time of the pass this rendering shows (None: unknown)
        self.created = created
        self._gz: bytes | None = None
        self._lock = threading.Lock()

    def _render_locked(self) -> bytes:
        assert self._make is not None
        body = self._make()
        self._make = None
        return body

    @property
    def rendered(self) -> bool:
        return self._make is None

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            with self._lock:
                if self._body is not None:
                    body = self._body
                elif self._gz is not None:
                    body = gunzip(self._gz)
                else:
                    body = self._body = self._render_locked()
        return body

    def gzipped(self) -> bytes:
        gz = self._gz
        if gz is None:
            with self._lock:
                if self._gz is None:
                    body = self._body if self._body is not None else self._render_locked()
                    # level 1 (issue #16), ISA-L's when installed: compress.py
                    self._gz = gzip_member(body)
                    self._body = None
                gz = self._gz
        return gz
