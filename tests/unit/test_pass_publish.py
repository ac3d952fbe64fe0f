"""What a sampling pass hands the exporter (governor/daemon/passes.py): the policy's limits
made once per policy, and the pass's samples by path made only when a scrape renders
(issue #16: a pass no scrape asks for builds nothing for the exposition)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from governor.daemon.passes import SamplingPass, _render
from governor.exporter.render import Health, Snapshot, render
from governor.policy import parse_policy
from tests.helpers.db import make_sample

POLICY = """
[tenants.acme]
memory.max = "1G"
[tenants.acme.groups.web]
memory.max = "256M"
cpu.weight = 200
"""


def _policy(text: str) -> Any:
    return parse_policy([("p.toml", text)], device_resolver=lambda _d: (254, 0))


def test_the_limits_are_made_once_per_policy() -> None:
    sp = SamplingPass.__new__(SamplingPass)
    pol = _policy(POLICY)
    first = sp._limits_of(pol)
    assert set(first) == {"acme", "acme/web"}
    assert first["acme/web"].memory_max == 256 << 20
    assert sp._limits_of(pol) is first          # the same policy: not made again
    other = _policy(POLICY.replace('"256M"', '"512M"'))
    again = sp._limits_of(other)                # a reload: made from the new one
    assert again is not first and again["acme/web"].memory_max == 512 << 20
    assert sp._limits_of(None) == {}


def test_the_rendering_has_the_samples_by_path() -> None:
    t = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    samples = [make_sample(tenant="acme", group="web", wall=t, storage=12345),
               make_sample(tenant="acme", group="db", cgroup_id=7, wall=t, storage=None)]
    snap = Snapshot(node="n1", groups={}, health=Health(pass_duration=0.1,
                                                        last_success=t.timestamp()))
    body = _render(snap, samples)
    assert body == render(dataclasses.replace(snap, samples={s.path: s for s in samples}))
    lines = [ln for ln in body.splitlines() if ln.startswith(b"governor_storage_bytes{")]
    # the web group's bytes; none for db, whose bytes were not measured (missing, not 0)
    assert lines == [b'governor_storage_bytes{group="web",node="n1",tenant="acme"} 12345']


def test_a_stage_is_counted_the_pass_threads_cpu_since_the_last_mark() -> None:
    import time

    from governor.daemon.passes import PASS_STAGES

    sp = SamplingPass.__new__(SamplingPass)
    sp.pass_cpu = dict.fromkeys(PASS_STAGES, 0.0)
    sp._cpu_mark = time.thread_time()
    end = time.thread_time() + 0.05
    while time.thread_time() < end:   # 50 ms of this thread's CPU
        pass
    sp._cpu_to("store")
    time.sleep(0.2)                   # waiting is not CPU
    sp._cpu_to("meter")
    assert 0.05 <= sp.pass_cpu["store"] < 0.5, sp.pass_cpu
    assert sp.pass_cpu["meter"] < 0.02, sp.pass_cpu
    assert sp.pass_cpu["read"] == sp.pass_cpu["other"] == sp.pass_cpu["gc"] == 0.0
    before = dict(sp.pass_cpu)
    sp._cpu_to("read")                # counted from the last mark, not from the start
    assert sp.pass_cpu["read"] < 0.02 and sp.pass_cpu["store"] == before["store"]


def test_the_collectors_runs_in_the_pass_count_to_gc_not_to_the_stage() -> None:
    import gc
    import threading
    import time

    from governor.daemon.passes import PASS_STAGES

    sp = SamplingPass.__new__(SamplingPass)
    sp.pass_cpu = dict.fromkeys(PASS_STAGES, 0.0)
    sp._pass_running_since, sp._pass_thread = time.monotonic(), threading.get_ident()
    sp._cpu_mark = time.thread_time()
    gc.callbacks.append(sp._gc_callback)
    try:
        junk = [[i] for i in range(300_000)]   # a collection with something to traverse
        gc.collect()
        del junk
        sp._cpu_to("store")
        # a collection in another thread is not the pass's
        t = threading.Thread(target=gc.collect)
        t.start()
        t.join()
        sp._cpu_to("meter")
    finally:
        gc.callbacks.remove(sp._gc_callback)
    assert sp.pass_cpu["gc"] > 0, sp.pass_cpu
    assert sp.pass_cpu["store"] > 0, sp.pass_cpu   # the list made, beside the collection
    assert sp.pass_cpu["meter"] < 0.02, sp.pass_cpu
    # nothing counted twice: the stages add up to the thread's CPU between the marks
    assert sp._gc_s == 0.0 and sp._gc_start is None


def test_a_job_is_counted_its_threads_cpu_per_run_and_listed_from_the_start() -> None:
    import threading
    import time

    from apscheduler.schedulers.background import BackgroundScheduler

    from governor.daemon import Daemon

    d = object.__new__(Daemon)
    d.job_cpu = {}
    d.scheduler = BackgroundScheduler(timezone="UTC")
    d._add_job("reconcile", 3600, lambda: None)
    assert d.job_cpu == {"reconcile": 0.0}   # a series from the start, before any run
    assert d.scheduler.get_job("reconcile") is not None

    def busy() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:   # 50 ms of this thread's CPU
            pass
        time.sleep(0.2)                   # waiting is not CPU
        raise RuntimeError("a failed run is counted all the same")

    run = d._timed("costs", busy)
    # another thread's CPU meanwhile is not the job's
    spin = threading.Thread(target=lambda: [i * i for i in range(2_000_000)])
    spin.start()
    with pytest.raises(RuntimeError):
        run()
    spin.join()
    assert 0.05 <= d.job_cpu["costs"] < 0.15, d.job_cpu
    first = d.job_cpu["costs"]
    with pytest.raises(RuntimeError):
        run()
    assert d.job_cpu["costs"] >= first + 0.05, d.job_cpu   # added up over the runs
