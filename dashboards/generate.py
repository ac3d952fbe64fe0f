"""Write the Grafana dashboards (JSON for provisioning) from one compact description.

    .venv/bin/python dashboards/generate.py     # rewrites dashboards/*.json

Every PromQL expression is here once; tests/kernel/test_oom_exporter_kernel.py runs each
of them against a real Prometheus that scraped a real governor (with the alert and the
recording rules, dashboards/alerts.yml and recording.yml, loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
G = 'tenant=~"$tenant",group=~"$group"'
T = 'tenant=~"$tenant",group=""'


def variables(groups: bool = True, multi: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        {"name": "node", "label": "Node", "type": "query", "datasource": DS,
         "query": {"query": "label_values(governor_memory_usage_bytes, node)",
                   "refId": "node"},
         "definition": "label_values(governor_memory_usage_bytes, node)",
         "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"text": "All", "value": "$__all"}},
        {"name": "tenant", "label": "Tenant", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(governor_memory_usage_bytes{node=~"$node"}, tenant)',
                   "refId": "tenant"},
         "definition": 'label_values(governor_memory_usage_bytes{node=~"$node"}, tenant)',
         "refresh": 2, "includeAll": multi, "multi": multi, "allValue": ".*",
         "current": {"text": "All", "value": "$__all"} if multi else {}},
    ]
    if groups:
        q = ('label_values(governor_memory_usage_bytes{node=~"$node",tenant=~"$tenant",'
             'group!=""}, group)')
        out.append({"name": "group", "label": "Group", "type": "query", "datasource": DS,
                    "query": {"query": q, "refId": "group"}, "definition": q, "refresh": 2,
                    "includeAll": multi, "multi": multi, "allValue": ".+",
                    "current": {"text": "All", "value": "$__all"} if multi else {}})
    return out


def panel(pid: int, title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int,  # noqa: PLR0917
          w: int = 12, h: int = 8, kind: str = "timeseries", desc: str = "") -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}} if kind ==
        "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr,
                     "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]],
              var: list[dict[str, Any]]) -> dict[str, Any]:
    return {"uid": uid, "title": title, "tags": ["governor"], "timezone": "utc",
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "editable": True,
            "templating": {"list": var}, "panels": panels, "annotations": {"list": []}}


def tenants_overview() -> dict[str, Any]:
    n = 'node=~"$node",'
    return dashboard("governor-tenants", "governor / tenants overview", [
        panel(1, "CPU (cores) per tenant",
              [(f"sum by (tenant) (rate(governor_cpu_usage_seconds_total{{{n}{T}}}"
                "[$__rate_interval]))", "{{tenant}}")], "short", 0, 0,
              desc="Cores used: CPU seconds per second of the tenant's own cgroup."),
        panel(2, "Memory vs limit per tenant",
              [(f"sum by (tenant) (governor_memory_usage_bytes{{{n}{T}}})", "{{tenant}} used"),
               (f"sum by (tenant) (governor_memory_max_bytes{{{n}{T}}} < +Inf)",
                "{{tenant}} memory.max")], "bytes", 12, 0),
        panel(3, "IO read/write per tenant",
              [(f"sum by (tenant) (rate(governor_io_read_bytes_total{{{n}{T}}}"
                "[$__rate_interval]))", "{{tenant}} read"),
               (f"sum by (tenant) (rate(governor_io_written_bytes_total{{{n}{T}}}"
                "[$__rate_interval]))", "{{tenant}} write")], "Bps", 0, 8),
        panel(4, "OOM kills (range)",
              [(f"sum by (tenant, group) (increase(governor_oom_kills_total{{{n}"
                'tenant=~"$tenant",group!=""}[$__range]))', "{{tenant}}/{{group}}")],
              "short", 12, 8, kind="bargauge"),
        panel(5, "Cost this billing period (selected nodes)",
              [(f'sum by (tenant, currency) (governor_billed_cost{{{n}tenant=~"$tenant"}})',
                "{{tenant}} {{currency}}")], "none", 0, 16, kind="stat",
              desc="Each node's share of the tenant's bill so far this month, summed over "
                   "the selected nodes (All: the fleet's)."),
        panel(6, "Memory pressure (some, share of time)",
              [(f"max by (tenant) (rate(governor_memory_pressure_some_seconds_total{{{n}{T}}}"
                "[$__rate_interval]))", "{{tenant}}")], "percentunit", 12, 16),
        panel(7, "Writable layers per tenant (containers from images)",
              [(f'sum by (tenant) (governor_storage_bytes{{{n}tenant=~"$tenant",group!=""}})',
                "{{tenant}}")], "bytes", 0, 24,
              desc="Bytes of the writable layers of the tenant's groups' containers "
                   "launched from images, billed per GiB-hour as storage."),
        panel(8, "Fleet cost this billing period",
              [('governor:billed_cost:sum{tenant=~"$tenant"}', "{{tenant}} {{currency}}"),
               ("governor:billed_cost_all_tenants:sum", "all tenants {{currency}}")],
              "none", 12, 24, kind="stat",
              desc="Every node's share summed, whatever the node selection (recording "
                   "rules of dashboards/recording.yml; the bill of record is `governor "
                   "bill` over the central database)."),
    ], variables(groups=False))


def group_detail() -> dict[str, Any]:
    s = f'node=~"$node",{G}'
    return dashboard("governor-group", "governor / group detail", [
        panel(1, "CPU (cores)", [(f"rate(governor_cpu_usage_seconds_total{{{s}}}"
                                  "[$__rate_interval])", "{{group}} usage"),
                                 (f"rate(governor_cpu_throttled_seconds_total{{{s}}}"
                                  "[$__rate_interval])", "{{group}} throttled")],
              "short", 0, 0),
        panel(2, "Throttled periods (share)",
              [(f"rate(governor_cpu_throttled_periods_total{{{s}}}[$__rate_interval]) / "
                f"rate(governor_cpu_periods_total{{{s}}}[$__rate_interval])", "{{group}}")],
              "percentunit", 12, 0),
        panel(3, "Memory and limits",
              [(f"governor_memory_usage_bytes{{{s}}}", "{{group}} used"),
               (f"governor_memory_peak_bytes{{{s}}}", "{{group}} peak"),
               (f"governor_memory_swap_usage_bytes{{{s}}}", "{{group}} swap"),
               (f"governor_memory_max_bytes{{{s}}} < +Inf", "{{group}} max"),
               (f"governor_memory_high_bytes{{{s}}} < +Inf", "{{group}} high"),
               (f"governor_memory_low_bytes{{{s}}}", "{{group}} low"),
               (f"governor_memory_min_bytes{{{s}}}", "{{group}} min")], "bytes", 0, 8),
        panel(4, "Memory events",
              [(f"increase(governor_memory_high_events_total{{{s}}}[$__rate_interval])",
                "{{group}} high"),
               (f"increase(governor_memory_max_events_total{{{s}}}[$__rate_interval])",
                "{{group}} max"),
               (f"increase(governor_oom_kills_total{{{s}}}[$__rate_interval])",
                "{{group}} oom kills"),
               (f"increase(governor_oom_group_kills_total{{{s}}}[$__rate_interval])",
                "{{group}} group kills"),
               (f"increase(governor_memory_pressure_warnings_total{{{s}}}[$__rate_interval])",
                "{{group}} warnings")], "short", 12, 8),
        panel(5, "IO bytes per device",
              [(f"rate(governor_io_read_bytes_total{{{s}}}[$__rate_interval])",
                "{{group}} {{device}} read"),
               (f"rate(governor_io_written_bytes_total{{{s}}}[$__rate_interval])",
                "{{group}} {{device}} write")], "Bps", 0, 16),
        panel(6, "IO operations per device",
              [(f"rate(governor_io_reads_total{{{s}}}[$__rate_interval])",
                "{{group}} {{device}} reads"),
               (f"rate(governor_io_writes_total{{{s}}}[$__rate_interval])",
                "{{group}} {{device}} writes")], "iops", 12, 16),
        panel(7, "Pressure stall (share of time)",
              [(f"rate(governor_{res}_pressure_{line}_seconds_total{{{s}}}[$__rate_interval])",
                f"{{{{group}}}} {res} {line}")
               for res in ("cpu", "memory", "io") for line in ("some", "full")],
              "percentunit", 0, 24),
        panel(8, "Tasks", [(f"governor_pids_current{{{s}}}", "{{group}} tasks"),
                           (f"governor_pids_max{{{s}}} < +Inf", "{{group}} pids.max")],
              "short", 12, 24),
        panel(9, "Writable layers (containers from images)",
              [(f"governor_storage_bytes{{{s}}}", "{{group}} writable layers")], "bytes", 0, 32,
              desc="Bytes of the writable layers of the group's containers launched from "
                   "images (no series while not measured), billed per GiB-hour as storage."),
    ], variables())


def governor_health() -> dict[str, Any]:
    n = 'node=~"$node"'
    return dashboard("governor-health", "governor / health", [
        panel(1, "Sampling pass duration", [(f"governor_sampling_duration_seconds{{{n}}}",
                                             "{{node}}")], "s", 0, 0),
        panel(2, "Seconds since the last sample",
              [(f"time() - governor_last_sample_timestamp_seconds{{{n}}}", "{{node}}")],
              "s", 12, 0),
        panel(3, "Groups sampled", [(f"governor_sampled_groups{{{n}}}", "{{node}}")],
              "short", 0, 8),
        panel(4, "Placements by result",
              [(f"sum by (result) (rate(governor_placements_total{{{n}}}[$__rate_interval]))",
                "{{result}}")], "ops", 12, 8),
        panel(5, "Policy reloads by result",
              [(f"sum by (result) (increase(governor_policy_reloads_total{{{n}}}[$__range]))",
                "{{result}}")], "short", 0, 16, kind="bargauge"),
        panel(6, "Drift corrections by file",
              [(f"sum by (file) (increase(governor_drift_corrections_total{{{n}}}"
                "[$__rate_interval]))", "{{file}}")], "short", 12, 16),
        panel(7, "Database write errors and spool depth",
              [(f"increase(governor_database_write_errors_total{{{n}}}[$__rate_interval])",
                "{{node}} write errors"),
               (f"governor_spool_depth{{{n}}}", "{{node}} spooled samples")], "short", 0, 24),
        panel(8, "Enforcer write errors and OOM alerts",
              [(f"increase(governor_enforce_write_errors_total{{{n}}}[$__rate_interval])",
                "{{node}} cgroup write errors"),
               (f"sum by (result) (increase(governor_oom_alerts_total{{{n}}}"
                "[$__rate_interval]))", "alerts {{result}}")], "short", 12, 24),
        panel(9, "governor's own CPU by pass stage",
              [(f"sum by (stage) (rate(governor_pass_cpu_seconds_total{{{n}}}"
                "[$__rate_interval]))", "{{stage}}")], "percentunit", 0, 32,
              desc="Share of one core the sampling passes spend on each stage: read (the "
                   "counter files), store (the raw samples), meter, other, gc. The whole "
                   "process's CPU is process_cpu_seconds_total."),
    ], variables(groups=False)[:2])


def main() -> None:
    for name, d in (("tenants-overview", tenants_overview()), ("group-detail", group_detail()),
                    ("governor-health", governor_health())):
        (HERE / f"{name}.json").write_text(json.dumps(d, indent=2) + "\n")


if __name__ == "__main__":
    main()
