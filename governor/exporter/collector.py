"""The same metrics as :mod:`governor.exporter.render`, as a prometheus-client Collector.

This is the shape of client_python's own ``process_collector.py``: a custom collector that
builds fresh metric families per ``collect()`` from the state it is given.  governor serves
the fast renderer's bytes instead (one rendering per sampling pass, not one per scrape);
this collector is the reference the renderer is checked against (``generate_latest`` of a
registry holding it must parse to the same samples) and the baseline ``bench/exporter.py``
times.  It is written plainly, independently of the renderer's string building.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from governor.controllers import base, registry
from governor.exporter import render as r
from governor.exporter.generic import series
from governor.exporter.render import Snapshot, split_path
from governor.policy.units import MAX


def _family(m: base.Metric, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    if m.type == r.COUNTER:
        return CounterMetricFamily(m.name, m.help, labels=labels)
    return GaugeMetricFamily(m.name, m.help, labels=labels)


def _counted(m: base.Metric, label: str, node: str,
             counts: Mapping[str, float]) -> CounterMetricFamily | GaugeMetricFamily:
    """One counter family with a sample per ``label`` value."""
    fam = _family(m, ["node", label])
    for k, n in sorted(counts.items()):
        fam.add_metric([node, k], float(n))
    return fam


class SnapshotCollector:
    """Yields the families of the snapshot ``source()`` returns at collect time."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        node = snap.node
        glabels = ["tenant", "group", "node"]
        paths = sorted(snap.groups)
        groups = [(path, snap.groups[path]) for path in paths]
        for m, key, seconds in r.CPU_METRICS:
            fam = _family(m, glabels)
            for path, st in groups:
                if st.cpu is not None and key in st.cpu:
                    raw = st.cpu[key]
                    fam.add_metric([*split_path(path), node],
                                   raw / 1e6 if seconds else float(raw))
            if fam.samples:
                yield fam
        for m, attr in r.MEMORY_METRICS:
            fam = _family(m, glabels)
            for path, st in groups:
                if getattr(st, attr) is not None:
                    fam.add_metric([*split_path(path), node], float(getattr(st, attr)))
            if fam.samples:
                yield fam
        for m, attr in r.SAMPLE_METRICS:
            fam = _family(m, glabels)
            for path in sorted(snap.samples):
                value = getattr(snap.samples[path], attr)
                if value is not None:
                    fam.add_metric([*split_path(path), node], float(value))
            if fam.samples:
                yield fam
        for m, key in r.EVENT_METRICS:
            fam = _family(m, glabels)
            for path, st in groups:
                if st.memory_events is not None and key in st.memory_events:
                    fam.add_metric([*split_path(path), node], float(st.memory_events[key]))
            if fam.samples:
                yield fam
        for m, res, line in r.PSI_METRICS:
            fam = _family(m, glabels)
            for path, st in groups:
                psi = st.psi.get(res)
                pl = None if psi is None else (psi.some if line == "some" else psi.full)
                if pl is not None:
                    fam.add_metric([*split_path(path), node], pl.total / 1e6)
            if fam.samples:
                yield fam
        for m, key in r.IO_METRICS:
            fam = _family(m, [*glabels, "device"])
            for path in paths:
                for dev, counters in sorted((snap.groups[path].io or {}).items()):
                    if key in counters:
                        fam.add_metric([*split_path(path), node, dev], float(counters[key]))
            if fam.samples:
                yield fam
        for m, attr in r.LIMIT_METRICS:
            fam = _family(m, glabels)
            for path in sorted(snap.limits):
                lim = getattr(snap.limits[path], attr)
                if lim is not None:
                    fam.add_metric([*split_path(path), node],
                                   math.inf if lim is MAX else float(lim))
            if fam.samples:
                yield fam
        for cm in registry.generic_metrics():   # the registered controllers' (generic.py)
            rows = list(series(cm, snap.samples, snap.effective))
            names = sorted({k for labels, _ in rows for k in labels} | {"node"})
            cfam = _family(cm, names)
            for labels, value in rows:
                cfam.add_metric([node if k == "node" else labels.get(k, "") for k in names],
                                float(value))
            if cfam.samples:
                yield cfam
        fam = _family(r.PRESSURE_WARNINGS, glabels)
        for path in sorted(snap.pressure_warnings):
            fam.add_metric([*split_path(path), node], float(snap.pressure_warnings[path]))
        if fam.samples:
            yield fam
        fam = _family(r.COST, ["tenant", "currency", "node"])
        for (tenant, currency), amount in sorted(snap.costs.items()):
            fam.add_metric([tenant, currency, node], float(amount))
        if fam.samples:
            yield fam
        h = snap.health
        for m, v in ((r.PASS_DURATION, h.pass_duration), (r.LAST_SUCCESS, h.last_success),
                     (r.GROUPS_SAMPLED, h.groups_sampled)):
            if v is not None:
                fam = _family(m, ["node"])
                fam.add_metric([node], float(v))
                yield fam
        for m, label, counts in ((r.PLACEMENTS, "result", h.placements),
                                 (r.RELOADS, "result", h.reloads), (r.DRIFT, "file", h.drift)):
            if counts:
                yield _counted(m, label, node, counts)
        for m, v in ((r.ENFORCE_ERRORS, h.enforce_write_errors),
                     (r.POLICY_FAILED, h.policy_failed_writes),
                     (r.DATABASE_UP, None if h.database_up is None else int(h.database_up)),
                     (r.DB_ERRORS, h.db_write_errors), (r.SPOOL_DEPTH, h.spool_depth)):
            if v is not None:
                fam = _family(m, ["node"])
                fam.add_metric([node], float(v))
                yield fam
        counted: tuple[tuple[base.Metric, str, Mapping[str, float]], ...] = (
            (r.SPOOL_WRITE_ERRORS, "errno", h.spool_write_errors),
            (r.ALERTS, "result", h.alerts), (r.SAMPLE_ERRORS, "reason", h.sample_errors),
            (r.PASS_CPU, "stage", h.pass_cpu), (r.JOB_CPU, "job", h.job_cpu),
            (r.EXPORTER_DROPPED, "reason", h.exporter_dropped))
        for m, label, values in counted:
            if values:
                yield _counted(m, label, node, values)
        if h.storage_full:
            fam = _family(r.STORAGE_FULL, ["tenant", "group", "node"])
            for path, n in h.storage_full.items():
                fam.add_metric([*r.split_path(path), node], float(n))
            yield fam
