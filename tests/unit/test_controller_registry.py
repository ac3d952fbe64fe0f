"""The controller registry (issue #17): the first-wave controllers' modules declare what the
consumers use, and the consumers' tables are the registry's, in the specialised paths'
order (the C accelerators compile some of those orders in)."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from governor.billing import generic, report
from governor.billing import quantities as billing_quantities
from governor.cgroupfs import reader
from governor.controllers import base, registry
from governor.enforce.plan import KERNEL_DEFAULTS
from governor.exporter import render
from governor.metering import usage
from governor.metering.sample import COUNTER_FIELDS, GAUGE_FIELDS, GroupSample
from governor.policy import context
from governor.store import tables

ROOT = Path(__file__).resolve().parents[2]
CONTROLLERS_DIR = ROOT / "governor" / "controllers"
FIRST_WAVE = ("memory", "cpu", "io", "pids", "pressure")
#: controllers the kernel lists in cgroup.controllers (kernel/cgroup/cgroup.c, cgroup_subsys.h)
KERNEL_CONTROLLERS = frozenset({"cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma",
                                "misc", "perf_event", "dmem"})
#: the PSI files (cpu/memory/io.pressure) are the cgroup core's, not a controller's
#: (Documentation/accounting/psi.rst): the one module that is not a kernel controller
CORE_FILES = frozenset({"pressure"})


def _c_strings(source: str, array: str) -> tuple[str, ...]:
    """The string literals of ``array``'s initialiser in a C source."""
    m = re.search(rf"\b{array}\[[A-Z_0-9]*\]\s*=\s*\{{(.*?)\}};", source, re.S)
    assert m is not None, f"{array} not found"
    return tuple(re.findall(r'"([^"]*)"', m[1]))


def test_first_wave_leads_the_registry_in_order() -> None:
    assert tuple(c.name for c in registry.CONTROLLERS[:5]) == FIRST_WAVE
    assert all(not c.generic for c in registry.CONTROLLERS[:5])


def test_names_are_unique_kernel_controllers() -> None:
    names = [c.name for c in registry.CONTROLLERS]
    assert len(names) == len(set(names))
    for name in names:
        assert name in KERNEL_CONTROLLERS | CORE_FILES, name
        assert registry.by_name(name) is not None


def test_every_limit_key_belongs_to_exactly_one_module() -> None:
    for key in context._LIMIT_KEYS:
        owners = [c.name for c in registry.CONTROLLERS if c.key(key) is not None]
        assert len(owners) == 1, (key, owners)
    declared = [k.name for c in registry.first_wave() for k in c.keys]
    assert len(declared) == len(set(declared))
    assert frozenset(declared) == context._LIMIT_KEYS
    assert context.SIZE_KEYS == ("memory.min", "memory.low", "memory.high", "memory.max",
                                 "memory.swap.max")
    assert context._LIMIT_KEYS <= context.GROUP_KEYS
    assert context._LIMIT_KEYS <= context.TENANT_KEYS
    for k in registry.policy_keys():
        assert k.doc and k.example and k.scopes == base.BOTH


def test_pass_files_are_the_readers_in_its_order() -> None:
    assert reader.FAST_FILES == registry.pass_files() == (
        "cpu.stat", "memory.current", "memory.peak", "memory.swap.current", "memory.events",
        "io.stat", "pids.current", "cpu.pressure", "memory.pressure", "io.pressure")
    # _fastread gets the files' parsing from _FAST_SPEC at configure time (not compiled
    # in, tests/unit/test_fastread.py runs it), positionally: it must follow FAST_FILES
    spec = [(kind, target) for kind, target, _parse in reader._FAST_SPEC]
    assert spec == [(0, "cpu"), (1, "memory_current"), (1, "memory_peak"),
                    (1, "swap_current"), (0, "memory_events"), (2, "io"),
                    (1, "pids_current"), (3, "cpu"), (3, "memory"), (3, "io")]


def test_sample_fields_are_the_registrys_in_the_c_order() -> None:
    assert registry.counters() == COUNTER_FIELDS
    assert (*registry.gauges(), "storage_bytes") == GAUGE_FIELDS
    fields = {f.name for f in dataclasses.fields(GroupSample)}
    assert set(COUNTER_FIELDS) | set(GAUGE_FIELDS) <= fields
    # _fastmeter.c compiles the counters' order in
    meter_c = (ROOT / "governor/metering/_fastmeter.c").read_text()
    assert _c_strings(meter_c, "COUNTER_NAMES") == COUNTER_FIELDS
    # _fastsample.c the cpu.stat and memory.events keys behind them
    sample_c = (ROOT / "governor/metering/_fastsample.c").read_text()
    keys = (*_c_strings(sample_c, "CPU_KEYS"), *_c_strings(sample_c, "EV_KEYS"))
    assert tuple(f"cpu_{k}" for k in keys[:6]) == COUNTER_FIELDS[:6]
    assert tuple(f"memory_events_{k}" for k in keys[6:]) == COUNTER_FIELDS[6:]


def test_kernel_defaults_are_the_registrys() -> None:
    assert registry.kernel_defaults() == KERNEL_DEFAULTS
    assert {f: v for c in registry.first_wave() for f, v in c.defaults.items()} == {
        "memory.min": "0", "memory.low": "0", "memory.high": "max", "memory.max": "max",
        "memory.swap.max": "max", "cpu.weight": "100", "cpu.max": "max 100000",
        "cpu.max.burst": "0", "io.weight": "default 100", "pids.max": "max",
        "memory.oom.group": "0"}
    for file, value in KERNEL_DEFAULTS.items():
        assert registry.kernel_default(file) == value


def test_exporter_families_are_the_registrys_in_order() -> None:
    first = [m for c in registry.first_wave() for m in c.metrics]
    rendered = [m for m in render.ALL_METRICS if m in set(first)]
    assert sorted(m.name for m in rendered) == sorted(m.name for m in first)
    assert [m.name for m in render.ALL_METRICS[:34]] == [
        "governor_cpu_usage_seconds_total", "governor_cpu_user_seconds_total",
        "governor_cpu_system_seconds_total", "governor_cpu_periods_total",
        "governor_cpu_throttled_periods_total", "governor_cpu_throttled_seconds_total",
        "governor_memory_usage_bytes", "governor_memory_peak_bytes",
        "governor_memory_swap_usage_bytes", "governor_pids_current", "governor_storage_bytes",
        "governor_memory_low_events_total", "governor_memory_high_events_total",
        "governor_memory_max_events_total", "governor_oom_events_total",
        "governor_oom_kills_total", "governor_oom_group_kills_total",
        "governor_cpu_pressure_some_seconds_total", "governor_cpu_pressure_full_seconds_total",
        "governor_memory_pressure_some_seconds_total",
        "governor_memory_pressure_full_seconds_total",
        "governor_io_pressure_some_seconds_total", "governor_io_pressure_full_seconds_total",
        "governor_io_read_bytes_total", "governor_io_written_bytes_total",
        "governor_io_reads_total", "governor_io_writes_total",
        "governor_io_discarded_bytes_total", "governor_memory_max_bytes",
        "governor_memory_high_bytes", "governor_memory_low_bytes",
        "governor_memory_min_bytes", "governor_memory_swap_max_bytes", "governor_pids_max"]
    names = [m.name for c in registry.CONTROLLERS for m in c.metrics]
    assert len(names) == len(set(names))
    for m in first:
        assert m.kind is not None
        assert m.name.endswith("_total") == (m.type == "counter")


def test_billing_quantities_are_the_registrys() -> None:
    # the first wave's (a generic controller's are metered into rollup_values and billed by
    # governor.billing.generic: tests/unit/test_billing_hugetlb.py)
    first = [q for c in registry.first_wave() for q in c.quantities]
    qs = {q.name: q for q in first}
    assert len(qs) == len(first)
    stored = {c.name for c in tables.rollups_hourly.columns} & (
        {c.name for c in tables.usage_intervals.columns})
    assert set(usage.QUANTITIES) == {*qs, "storage_byte_seconds"}
    assert {*qs, "storage_byte_seconds"} <= stored
    priced = {q.resource: q for q in qs.values() if q.plan_key is not None}
    assert set(billing_quantities.FIELDS) == {
        "covered_us", *(q.name for q in priced.values()), "storage_byte_seconds"}
    assert set(context.PRICE_FIELDS) == {
        *(q.plan_key for q in priced.values()), "storage_gib_hour"}
    hour_us, gib = 3_600_000_000, 1 << 30
    assert {
        "cpu": ("core-hour", hour_us, "cpu_core_hour"),
        "memory": ("GiB-hour", gib * hour_us, "memory_gib_hour"),
        "storage": ("GiB-hour", gib * hour_us, "storage_gib_hour"),
        "io_read": ("GiB", gib, "io_read_gib"),
        "io_write": ("GiB", gib, "io_write_gib"),
        "oom_kill": ("kill", 1, "oom_kill"),
    } == {k: v for k, v in report.RESOURCES.items() if k not in generic.RESOURCES}
    # the invoice's line order: the first wave's, then the generic controllers'
    assert list(report.RESOURCES) == [*report.LINE_ORDER, *generic.RESOURCES]
    for q in qs.values():
        assert q.method is None and q.values is None and q.per_unit > 0 and q.doc


@pytest.mark.parametrize("path", sorted(CONTROLLERS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_controller_modules_import_only_the_bottom_layer(path: Path) -> None:
    allowed = {"governor.controllers.base", "governor.errors"}
    if path.name == "registry.py":  # the list: the controller modules besides
        allowed |= {f"governor.controllers.{p.stem}" for p in CONTROLLERS_DIR.glob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "governor.controllers":
                names = [f"governor.controllers.{a.name}" for a in node.names]
            else:
                names = [node.module]
        for name in names:
            if name == "governor" or name.startswith("governor."):
                assert name in allowed, f"{path.name} imports {name}"
