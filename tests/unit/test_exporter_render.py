"""The fast renderer against prometheus-client: same samples, same types, escaping, gzip."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import GroupStats
from governor.exporter.collector import SnapshotCollector
from governor.exporter.render import (
    ALL_METRICS,
    Health,
    Rendering,
    Snapshot,
    escape_label,
    fmt_value,
    render,
)
from governor.metering.sample import GroupSample
from governor.policy.model import Limits
from governor.policy.units import MAX
from tests.helpers.exposition import family_types, parsed_samples, snapshot


def reference(snap: Snapshot) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap))
    return generate_latest(reg)


@pytest.mark.parametrize("odd", [False, True])
def test_same_samples_and_types_as_generate_latest(odd: bool) -> None:
    snap = snapshot(120, tenants=7, devices=2, odd_names=odd)
    ours, ref = render(snap).decode(), reference(snap).decode()
    a, b = parsed_samples(ours), parsed_samples(ref)
    assert a == b
    assert len(a) > 120 * 30
    assert family_types(ours) == family_types(ref)
    # every family has its HELP and TYPE exactly once
    for m in ALL_METRICS:
        assert ours.count(f"# TYPE {m.name} ") == 1, m.name
        assert ours.count(f"# HELP {m.name} ") == 1, m.name


def _one_group() -> Snapshot:
    st = GroupStats(
        cgroup_id=7,
        cpu={"usage_usec": 2_500_000, "user_usec": 2_000_000, "system_usec": 500_000,
             "nr_periods": 10, "nr_throttled": 3, "throttled_usec": 1500},
        memory_current=1 << 30, memory_peak=(1 << 30) + 4096, swap_current=0,
        memory_events={"low": 0, "high": 5, "max": 2, "oom": 1, "oom_kill": 1,
                       "oom_group_kill": 0},
        io={"254:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2, "dbytes": 0,
                      "dios": 0}},
        pids_current=3,
        psi={"memory": Psi(PsiLine(0.5, 0.1, 0.0, 1_234_567), PsiLine(0.0, 0.0, 0.0, 42))},
    )
    walls = {"wall": datetime(2026, 12, 6, tzinfo=UTC), "monotonic": 1.0}
    samples = {"acme/web": GroupSample(node="n1", tenant="acme", group="web", cgroup_id=7,
                                       storage_bytes=(5 << 30) + 1, **walls),  # type: ignore[arg-type]
               "acme": GroupSample(node="n1", tenant="acme", group=None, cgroup_id=7,
                                   **walls)}  # type: ignore[arg-type]
    return Snapshot(node="n1", groups={"acme/web": st, "acme": st}, samples=samples,
                    limits={"acme/web": Limits(memory_max=MAX, memory_high=1 << 29,
                                               memory_low=0, pids_max=64)},
                    costs={("acme", "EUR"): Decimal("12.50")},
                    pressure_warnings={"acme/web": 2},
                    health=Health(pass_duration=0.25, last_success=1700000000.5,
                                  reloads={"ok": 1, "invalid": 2}, drift={"memory.max": 1},
                                  db_write_errors=0, spool_depth=5,
                                  spool_write_errors={"ENOSPC": 2},
                                  pass_cpu={"read": 3.5, "store": 1.25, "meter": 0.5,
                                            "other": 0.125},
                                  job_cpu={"reconcile": 0.75, "placement-rescan": 0.25}))


def test_values_units_and_labels() -> None:
    s = parsed_samples(render(_one_group()).decode())
    web = (("group", "web"), ("node", "n1"), ("tenant", "acme"))
    tenant = (("group", ""), ("node", "n1"), ("tenant", "acme"))
    assert s[("governor_cpu_usage_seconds_total", web)] == 2.5
    assert s[("governor_cpu_usage_seconds_total", tenant)] == 2.5
    assert s[("governor_cpu_throttled_seconds_total", web)] == 0.0015
    assert s[("governor_cpu_throttled_periods_total", web)] == 3
    assert s[("governor_memory_usage_bytes", web)] == 1 << 30
    assert s[("governor_memory_peak_bytes", web)] == (1 << 30) + 4096
    assert s[("governor_storage_bytes", web)] == (5 << 30) + 1   # the writable layers
    assert ("governor_storage_bytes", tenant) not in s   # none measured: no series
    assert s[("governor_memory_max_bytes", web)] == math.inf
    assert s[("governor_memory_high_bytes", web)] == 1 << 29
    assert s[("governor_pids_max", web)] == 64
    assert ("governor_memory_min_bytes", web) not in s  # not in the policy: no series
    assert ("governor_memory_max_bytes", tenant) not in s
    assert s[("governor_oom_kills_total", web)] == 1
    assert s[("governor_memory_high_events_total", web)] == 5
    assert s[("governor_memory_pressure_some_seconds_total", web)] == 1.234567
    assert s[("governor_memory_pressure_full_seconds_total", web)] == 0.000042
    assert ("governor_cpu_pressure_some_seconds_total", web) not in s  # missing, not zero
    assert s[("governor_io_read_bytes_total", (("device", "254:0"), *web))] == 4096
    assert s[("governor_io_writes_total", (("device", "254:0"), *web))] == 2
    assert s[("governor_billed_cost", (("currency", "EUR"), ("node", "n1"),
                                       ("tenant", "acme")))] == 12.5
    assert s[("governor_memory_pressure_warnings_total", web)] == 2
    assert s[("governor_policy_reloads_total", (("node", "n1"), ("result", "invalid")))] == 2
    assert s[("governor_drift_corrections_total", (("file", "memory.max"),
                                                   ("node", "n1")))] == 1
    assert s[("governor_spool_depth", (("node", "n1"),))] == 5
    assert s[("governor_spool_write_errors_total", (("errno", "ENOSPC"), ("node", "n1")))] == 2
    assert s[("governor_last_sample_timestamp_seconds", (("node", "n1"),))] == 1700000000.5
    assert s[("governor_pass_cpu_seconds_total", (("node", "n1"), ("stage", "read")))] == 3.5
    assert s[("governor_pass_cpu_seconds_total", (("node", "n1"), ("stage", "other")))] == 0.125
    assert s[("governor_job_cpu_seconds_total", (("job", "reconcile"), ("node", "n1")))] == 0.75
    assert s[("governor_job_cpu_seconds_total", (("job", "placement-rescan"),
                                                 ("node", "n1")))] == 0.25
    assert ("governor_placements_total", (("node", "n1"), ("result", "moved"))) not in s


def test_missing_values_are_left_out_not_zero() -> None:
    snap = Snapshot(node="n", groups={"t/g": GroupStats(cgroup_id=1, memory_current=10)})
    text = render(snap).decode()
    assert parsed_samples(text) == {
        ("governor_memory_usage_bytes", (("group", "g"), ("node", "n"), ("tenant", "t"))): 10}
    assert "governor_cpu_usage_seconds_total" not in text  # no empty families either


def test_storage_is_written_exactly_for_the_samples_that_measured_it() -> None:
    """Issue #19: governor_storage_bytes comes from the pass's samples, only where
    storage_bytes is known (nothing measured: no series, not 0), as an exact
    integer past 2**53 too."""
    def sample(path: str, storage: int | None) -> GroupSample:
        tenant, _, group = path.partition("/")
        return GroupSample(node="n", tenant=tenant, group=group or None, cgroup_id=1,
                           wall=datetime(2026, 12, 6, tzinfo=UTC), monotonic=1.0,
                           storage_bytes=storage)

    snap = Snapshot(node="n", groups={}, samples={
        "t/a": sample("t/a", (1 << 53) + 1), "t/b": sample("t/b", None),
        "t/c": sample("t/c", 0), "t": sample("t", None)})
    text = render(snap).decode()
    assert text == (
        "# HELP governor_storage_bytes Bytes used by the writable layers of the group's "
        "containers launched from images, summed (a project quota per container); no "
        "series while none is measured.\n"
        "# TYPE governor_storage_bytes gauge\n"
        'governor_storage_bytes{group="a",node="n",tenant="t"} 9007199254740993\n'
        'governor_storage_bytes{group="c",node="n",tenant="t"} 0\n')
    ref = parsed_samples(reference(snap).decode())   # floats: the same doubles
    assert {k: float(v) for k, v in parsed_samples(text).items()} == ref
    none = Snapshot(node="n", groups={}, samples={"t/b": sample("t/b", None)})
    assert render(none) == b""


def test_empty_snapshot_renders_nothing() -> None:
    assert render(Snapshot(node="n", groups={})) == b""


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ('a"b', 'a\\"b'),
    ("a\\b", "a\\\\b"),
    ("a\nb", "a\\nb"),
    ('\\"\n', '\\\\\\"\\n'),
    ("ünï", "ünï"),
])
def test_label_escaping(raw: str, escaped: str) -> None:
    assert escape_label(raw) == escaped
    snap = Snapshot(node=raw, groups={"t/g": GroupStats(cgroup_id=1, pids_current=1)})
    body = render(snap)
    assert f'node="{escaped}"'.encode() in body
    ((_name, labels),) = parsed_samples(body.decode())
    assert dict(labels)["node"] == raw


@pytest.mark.parametrize("v", [0, 1, 0.5, 1e-06, 123456.0, 1234567.0, 10000000.0,
                               12345678.9, 2**53, 2**63 - 1, 1e16, 1.5e300, -3.25,
                               math.inf, -math.inf, math.nan, 5e-324])
def test_fmt_value_is_client_pythons_float_to_go_string(v: float) -> None:
    assert fmt_value(v) == floatToGoString(v)


def test_rendering_gzip_made_once_and_round_trips() -> None:
    body = render(snapshot(30))
    r = Rendering(body)
    gz = r.gzipped()
    assert gzip.decompress(gz) == body
    assert r.gzipped() is gz  # made once, then reused
    assert len(gz) < len(body) / 5


def test_once_gzipped_only_the_gzip_copy_is_held() -> None:
    """Issue #16 (resident memory): after the first gzip request the text is dropped;
    a plain request still gets the same text, from the gzip copy, and nothing renders
    again."""
    snap = snapshot(30)
    calls: list[int] = []

    def make() -> bytes:
        calls.append(1)
        return render(snap)

    r = Rendering(make)
    gz = r.gzipped()
    assert r._body is None and r._gz is gz
    assert r.body == render(snap) and calls == [1]
    assert r._body is None   # not kept either
    plain_first = Rendering(make)
    assert plain_first.body == render(snap)
    assert gzip.decompress(plain_first.gzipped()) == render(snap)
    assert plain_first._body is None and calls == [1, 1]


def test_a_pass_publishes_without_rendering_the_first_scrape_renders_once() -> None:
    """Issue #16: passes no scrape asks for cost no rendering; concurrent scrapes of one
    pass share one rendering, gzipped or not."""
    import threading

    snap = snapshot(30)
    calls: list[int] = []

    def make() -> bytes:
        calls.append(1)
        return render(snap)

    r = Rendering(make, created=1.0)
    assert not r.rendered and calls == []
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(r.body)) for _ in range(8)]
    threads += [threading.Thread(target=lambda: bodies.append(gzip.decompress(r.gzipped())))
                for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and r.rendered
    assert set(bodies) == {render(snap)}


def test_storage_max_reached_counter() -> None:
    from governor.exporter.render import Health

    snap = Snapshot(node="n1", groups={}, limits={}, costs={}, pressure_warnings={},
                    health=Health(storage_full={"acme/web": 2, 'b"x/y\\z': 0}))
    text = render(snap).decode()
    assert "# TYPE governor_storage_max_reached_total counter" in text
    assert 'governor_storage_max_reached_total{group="web",node="n1",tenant="acme"} 2' in text
    assert 'governor_storage_max_reached_total{group="y\\\\z",node="n1",tenant="b\\"x"} 0' \
        in text
    got = parsed_samples(text)
    assert sum(1 for name, _ in got if name == "governor_storage_max_reached_total") == 2
    empty = Snapshot(node="n1", groups={}, limits={}, costs={}, pressure_warnings={},
                     health=Health())
    assert "governor_storage_max_reached_total" not in render(empty).decode()
