"""SIGKILL at exact spots (failpoints, governor/failpoint.py), then a restart: the limits are
in force, no group is lost, no row is doubled, and the bills over the whole run equal the
kernel's counters (issue #7, "Reliability, proven in the VM").

A random SIGKILL is test_daemon_kernel.py's; here the daemon kills itself in the middle of a
sampling pass, inside the transaction that stores a pass, between that commit and the
metering after it, inside metering's transaction, and in the middle of a policy apply.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from governor.cgroupfs import parse
from governor.failpoint import ENV
from governor.store.models import Group, HourlyRollup, IntervalUsageRow, Sample, SampleIo
from tests.kernel.test_daemon_kernel import (
    BURN,
    POLICY,
    Gov,
    billed,
    daemon_setup,
    engine,
    in_group,
    kernel_counter,
    raw,
    wait,
)

pytestmark = pytest.mark.kernel

GROUPS = ("t", "t/cpu", "t/io", "t/mem")   # what POLICY makes (the tenant is sampled too)
LIMITS = {("t/cpu", "cpu.weight"): "100", ("t/mem", "memory.max"): str(256 << 20),
          ("t/io", "pids.max"): "64"}

#: a new version of POLICY: three limits changed, a group and a tenant with a group added
POLICY2 = POLICY.replace("cpu.weight = 100", "cpu.weight = 250").replace(
    '"256M"', '"384M"').replace("pids.max = 64", "pids.max = 100") + """
[tenants.t.groups.new]
pids.max = 32
[tenants.u]
[tenants.u.groups.x]
cpu.weight = 50
"""
GROUPS2 = (*GROUPS, "t/new", "u", "u/x")
LIMITS2 = {("t/cpu", "cpu.weight"): "250", ("t/mem", "memory.max"): str(384 << 20),
           ("t/io", "pids.max"): "100", ("t/new", "pids.max"): "32",
           ("u/x", "cpu.weight"): "50"}

#: the pass (1-based; the first is taken before "governor running") the daemon dies in
KILL_PASS = 6


@pytest.fixture
def gov(scratch_subtree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gov]:
    monkeypatch.delenv(ENV, raising=False)
    with daemon_setup(scratch_subtree, tmp_path) as g:
        yield g


def dd(sub: Path, mib: int) -> subprocess.Popen[bytes]:
    return in_group(sub, "t/io", ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M",
                                  f"count={mib}", "oflag=direct"], stderr=subprocess.DEVNULL)


def burner(sub: Path, cpu_seconds: float) -> subprocess.Popen[bytes]:
    return in_group(sub, "t/cpu", [sys.executable, "-c", BURN, str(cpu_seconds)],
                    stdout=subprocess.PIPE)


def wait_killed_at(gov: Gov, name: str, hit: int) -> None:
    """The daemon dies by SIGKILL, and at failpoint ``name``'s ``hit``-th hit."""
    assert gov.proc is not None
    try:
        rc = gov.proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"governor did not die at {name}@{hit} (samples stored: "
                    f"{db_state(gov)[0]}):\n{gov.tail()}")
    gov.proc = None
    assert rc == -signal.SIGKILL, gov.tail()
    fired = [ln for ln in gov.log.read_text().splitlines() if ln.startswith("failpoint ")]
    assert fired == [f"failpoint {name} hit {hit}: kill"], gov.tail()


def db_state(gov: Gov) -> tuple[dict[str, int], dict[str, bool]]:
    """Per path: how many samples are stored, and whether the last one is metered."""
    e = engine(gov)
    with e.connect() as c:
        rows = c.execute(select(Group.path, func.count(), func.max(Sample.ts),
                                Group.metered_until)
                         .join(Sample, Sample.group_id == Group.id)
                         .group_by(Group.id)).all()
    e.dispose()
    return ({p: n for p, n, _, _ in rows},
            {p: last == until for p, _, last, until in rows})


def io_wbytes(text: str) -> int:
    return sum(int(v.get("wbytes", 0)) for v in parse.parse_io_stat(text).values())


def check_whole_run(gov: Gov, paths: tuple[str, ...], limits: dict[tuple[str, str], str],
                    io_written: int) -> None:
    """After a clean stop: every group there with its limits, one incarnation each, no row
    doubled, and each bill equal to the kernel's counter delta over the whole run."""
    s = gov.sub
    for (path, file), want in limits.items():
        assert (s / path / file).read_text().strip() == want, (path, file)
    dirs = {str(p.relative_to(s)) for p in [*s.glob("*"), *s.glob("*/*")] if p.is_dir()}
    assert dirs == set(paths)
    e = engine(gov)
    with e.connect() as c:
        incarnations = dict(c.execute(select(Group.path, func.count()).group_by(Group.path))
                            .tuples().all())
        dup_samples = c.execute(select(func.count()).select_from(
            select(Sample.group_id, Sample.ts).group_by(Sample.group_id, Sample.ts)
            .having(func.count() > 1).subquery())).scalar_one()
        dup_io = c.execute(select(func.count()).select_from(
            select(SampleIo.group_id, SampleIo.ts, SampleIo.device)
            .group_by(SampleIo.group_id, SampleIo.ts, SampleIo.device)
            .having(func.count() > 1).subquery())).scalar_one()
        intervals = c.execute(select(IntervalUsageRow.group_id, IntervalUsageRow.start_ts,
                                     IntervalUsageRow.end_ts)
                              .order_by(IntervalUsageRow.group_id,
                                        IntervalUsageRow.start_ts)).all()
        by_group: dict[str, dict[int, tuple[int, int]]] = {}
        for model in (IntervalUsageRow, HourlyRollup):
            by_group[model.__name__] = {gid: (cpu, io) for gid, cpu, io in c.execute(
                select(model.group_id, func.sum(model.cpu_usec), func.sum(model.io_wbytes))
                .group_by(model.group_id)).tuples()}
        first_io: dict[str, int] = {}
        for path in paths:
            gid, ts = c.execute(select(Sample.group_id, func.min(Sample.ts))
                                .join(Group, Group.id == Sample.group_id)
                                .where(Group.path == path).group_by(Sample.group_id)).one()
            first_io[path] = int(c.execute(
                select(func.coalesce(func.sum(SampleIo.wbytes), 0))
                .where(SampleIo.group_id == gid, SampleIo.ts == ts)).scalar_one())
    e.dispose()
    assert incarnations == dict.fromkeys(paths, 1), incarnations   # no group lost or re-made
    assert dup_samples == 0 and dup_io == 0
    # no interval counted twice: each incarnation's intervals follow each other
    for (g1, _s1, end1), (g2, start2, _e2) in itertools.pairwise(intervals):
        assert g1 != g2 or start2 >= end1, (g1, end1, start2)
    # the hourly rollups (what bills read) hold exactly the interval usage, not more
    assert by_group["HourlyRollup"] == by_group["IntervalUsageRow"]
    for path in paths:
        samples = raw(gov, path, "cpu_usage_usec")
        assert samples == sorted(samples), path
        kernel_now = kernel_counter(s, path, "cpu.stat", "usage_usec")
        assert samples[-1] == kernel_now, path
        assert billed(gov, path, "cpu_usec") == kernel_now - samples[0], path
        kernel_io = io_wbytes((s / path / "io.stat").read_text())
        assert billed(gov, path, "io_wbytes") == kernel_io - first_io[path], path
    assert billed(gov, "t/io", "io_wbytes") == io_written
    assert io_wbytes((s / "t/io/io.stat").read_text()) == io_written


# each: the failpoint, its hit that falls in pass KILL_PASS, and what the database holds
# at the death (samples of the passes before it, plus that pass's if its commit happened;
# whether the last stored pass was metered)
PASS_FAILPOINTS = {
    # 4 groups a pass: the 2nd group read of pass KILL_PASS (a pass half read)
    "metering.sample.group": ((KILL_PASS - 1) * len(GROUPS) + 2, KILL_PASS - 1, True),
    "store.write.before_commit": (KILL_PASS, KILL_PASS - 1, True),
    "store.write.after_commit": (KILL_PASS, KILL_PASS, False),
    "store.meter.before_commit": (KILL_PASS, KILL_PASS, False),
}


# the same with the derived rows written every 6th pass ([sampling] write_every = 6, the
# default): the first pass meters what the store holds (a catch-up: the meter failpoint's
# first hit), passes 2 to 7 are held and written at the 7th (its second hit); a death
# before that finds the stored passes after the first not metered, and the restart's
# catch-up meters them
BATCHED_FAILPOINTS = {
    "metering.sample.group": ((KILL_PASS - 1) * len(GROUPS) + 2, KILL_PASS - 1, False),
    "store.write.before_commit": (KILL_PASS, KILL_PASS - 1, False),
    "store.write.after_commit": (KILL_PASS, KILL_PASS, False),
    "store.meter.before_commit": (2, 7, False),
}


@pytest.mark.parametrize(("name", "write_every"),
                         [*((n, 1) for n in PASS_FAILPOINTS),
                          *((n, 6) for n in BATCHED_FAILPOINTS)])
def test_killed_at_failpoint_then_restarted_bills_exactly(
        gov: Gov, monkeypatch: pytest.MonkeyPatch, name: str, write_every: int) -> None:
    hit, stored, metered = (PASS_FAILPOINTS if write_every == 1 else BATCHED_FAILPOINTS)[name]
    gov.cfg.write_text(gov.cfg.read_text() + f"[sampling]\nwrite_every = {write_every}\n")
    s = gov.sub
    monkeypatch.setenv(ENV, f"{name}=kill@{hit}")
    gov.start()
    work = burner(s, 600.0)   # killed once the restarted daemon has sampled it a while
    try:
        assert dd(s, 8).wait(120) == 0
        wait_killed_at(gov, name, hit)
        assert work.poll() is None   # the workload was running when it died
        samples, last_metered = db_state(gov)
        assert samples == dict.fromkeys(GROUPS, stored), (samples, gov.tail())
        assert last_metered == dict.fromkeys(GROUPS, metered), last_metered
        assert dd(s, 4).wait(120) == 0     # while governor is down
        monkeypatch.delenv(ENV)
        gov.start()
        assert wait(lambda: db_state(gov)[0]["t/cpu"] > stored + 2, 300), (
            db_state(gov), gov.tail())
        work.kill()
        work.wait()
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
        assert gov.stop() == 0
    restarted = gov.log.read_text().split("governor running")[-1]
    assert not [ln for ln in restarted.splitlines() if ln.startswith("failpoint ")]
    check_whole_run(gov, GROUPS, LIMITS, 12 << 20)


def test_killed_mid_policy_apply_then_restarted(gov: Gov, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s = gov.sub
    name = "enforce.apply.write"
    gov.start()                                  # makes the groups of POLICY
    work = burner(s, 600.0)
    try:
        assert dd(s, 8).wait(120) == 0
        assert gov.stop() == 0
        # armed from the start: adopting the groups as they are writes nothing, so the
        # third write is the third of the reload below
        monkeypatch.setenv(ENV, f"{name}=kill@3")
        gov.start()
        new = tmp_path / "policy.new"
        new.write_text(POLICY2)
        new.replace(tmp_path / "policy.toml")    # the watcher notices, the reload applies
        wait_killed_at(gov, name, 3)
        assert work.poll() is None
        # mid-apply: some of the new version is in the kernel, not all of it
        made = {p: (s / p).is_dir() for p in GROUPS2 if p not in GROUPS}
        done = {k: (s / k[0]).is_dir() and (s / k[0] / k[1]).read_text().strip() == v
                for k, v in LIMITS2.items()}
        progress = sum(made.values()) + sum(done.values())
        assert 0 < progress < len(made) + len(done), (made, done)
        assert dd(s, 4).wait(120) == 0           # while governor is down
        monkeypatch.delenv(ENV)
        gov.start()
        # the start applies the rest before "governor running"
        for (path, file), want in LIMITS2.items():
            assert (s / path / file).read_text().strip() == want, (path, file)
        assert wait(lambda: db_state(gov)[0].get("u/x", 0) > 2, 300), (
            db_state(gov), gov.tail())
        work.kill()
        work.wait()
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
        assert gov.stop() == 0
    check_whole_run(gov, GROUPS2, LIMITS2, 12 << 20)
