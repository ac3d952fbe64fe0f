"""The registered controllers' metric families (governor/exporter/generic.py): cpuset's
effective gauges, and a ``Metric.values`` family (extra labels from the pattern's named
groups, microseconds as seconds) of a controller registered for the test; the renderer
against the reference collector, and promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from governor.controllers import registry
from governor.controllers.base import Controller, Metric
from governor.exporter.render import Snapshot, render
from governor.metering.sample import GroupSample
from tests.helpers.exposition import family_types, parsed_samples, snapshot
from tests.unit.test_exporter_render import reference


@dataclass(frozen=True)
class _Pages(Controller):
    generic = True


PAGES = _Pages(name="pages", doc="a controller for the test", metrics=(
    Metric("governor_pages_usage_bytes", "gauge", "Pages used (pages.<size>.current).",
           values=re.compile(r"pages\.(?P<size>[0-9]+[KMG]B)\.current")),
    Metric("governor_pages_wait_seconds_total", "counter", "Time waited (pages.wait_usec).",
           values=re.compile(r"pages\.wait_usec"), usec=True),
))


def _sample(path: str, values: dict[str, int] | None) -> GroupSample:
    tenant, _, group = path.partition("/")
    return GroupSample(node="n", tenant=tenant, group=group or None, cgroup_id=1,
                       wall=datetime(2026, 12, 6, tzinfo=UTC), monotonic=1.0,
                       values=values)


def test_cpuset_gauges_count_the_effective_entries() -> None:
    snap = Snapshot(node="n1", groups={}, effective={
        "acme": {"cpus": "0-3", "mems": "0"},
        "acme/web": {"cpus": "1", "mems": "0"},
        "acme/db": {"cpus": "0,2-3"},
        "acme/odd": {"cpus": "x-y"},     # not a list: no series (missing is not zero)
    })
    text = render(snap).decode()
    assert text == (
        "# HELP governor_cpuset_cpus CPUs the group's tasks may run on (entries of "
        "cpuset.cpus.effective).\n"
        "# TYPE governor_cpuset_cpus gauge\n"
        'governor_cpuset_cpus{group="",node="n1",tenant="acme"} 4\n'
        'governor_cpuset_cpus{group="db",node="n1",tenant="acme"} 3\n'
        'governor_cpuset_cpus{group="web",node="n1",tenant="acme"} 1\n'
        "# HELP governor_cpuset_mems Memory nodes the group's tasks may allocate from "
        "(entries of cpuset.mems.effective).\n"
        "# TYPE governor_cpuset_mems gauge\n"
        'governor_cpuset_mems{group="",node="n1",tenant="acme"} 1\n'
        'governor_cpuset_mems{group="web",node="n1",tenant="acme"} 1\n')
    assert parsed_samples(text) == parsed_samples(reference(snap).decode())


def test_no_effective_values_no_family() -> None:
    assert b"governor_cpuset" not in render(Snapshot(node="n", groups={}))


def test_labels_escaped() -> None:
    snap = Snapshot(node='n"1', groups={}, effective={'we"ird\\t/g\n': {"cpus": "1"}})
    text = render(snap).decode()
    assert 'governor_cpuset_cpus{group="g\\n",node="n\\"1",tenant="we\\"ird\\\\t"} 1' in text
    assert parsed_samples(text) == parsed_samples(reference(snap).decode())


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "CONTROLLERS", (*registry.CONTROLLERS, PAGES))


@pytest.mark.usefixtures("pages")
def test_values_families_with_pattern_labels_and_seconds() -> None:
    snap = Snapshot(node="n1", groups={}, samples={
        "acme/web": _sample("acme/web", {"pages.2MB.current": 4194304,
                                         "pages.1GB.current": 0, "pages.wait_usec": 1500,
                                         "pages.other": 9}),
        "acme": _sample("acme", None),                 # none read: no series
        "acme/db": _sample("acme/db", {"pages.wait_usec": 2_000_000}),
    })
    text = render(snap).decode()
    assert ('governor_pages_usage_bytes{group="web",node="n1",size="1GB",tenant="acme"} 0'
            in text)
    assert ('governor_pages_usage_bytes{group="web",node="n1",size="2MB",tenant="acme"} '
            "4194304" in text)
    assert 'governor_pages_wait_seconds_total{group="db",node="n1",tenant="acme"} 2.0' in text
    assert ('governor_pages_wait_seconds_total{group="web",node="n1",tenant="acme"} 0.0015'
            in text)
    assert "# TYPE governor_pages_wait_seconds_total counter\n" in text
    assert "pages.other" not in text and "9\n" not in text
    assert parsed_samples(text) == parsed_samples(reference(snap).decode())
    assert family_types(text) == family_types(reference(snap).decode())


@pytest.mark.usefixtures("pages")
def test_full_snapshot_matches_the_collector() -> None:
    snap = snapshot(60, tenants=4, odd_names=True)
    samples = {p: _sample(p, {"pages.2MB.current": i, "pages.wait_usec": i * 7})
               for i, p in enumerate(snap.samples)}
    snap = Snapshot(node=snap.node, groups=snap.groups, samples=samples,
                    effective=snap.effective)
    ours, ref = render(snap).decode(), reference(snap).decode()
    assert parsed_samples(ours) == parsed_samples(ref)
    assert family_types(ours) == family_types(ref)
    assert ours.count("# TYPE governor_cpuset_cpus gauge") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.usefixtures("pages")
def test_promtool_accepts_the_controllers_families() -> None:
    snap = snapshot(30, tenants=3)
    samples = {p: _sample(p, {"pages.2MB.current": i, "pages.1GB.current": 1,
                              "pages.wait_usec": i * 1000})
               for i, p in enumerate(snap.samples)}
    snap = Snapshot(node=snap.node, groups=snap.groups, samples=samples,
                    limits=snap.limits, health=snap.health, effective=snap.effective)
    body = render(snap)
    assert b"governor_cpuset_cpus{" in body and b"governor_pages_usage_bytes{" in body
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
