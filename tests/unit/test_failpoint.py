"""Failpoints: the GOVERNOR_FAILPOINTS syntax, and a process that dies at exactly the N-th
hit (a subprocess, since the variable is read at import and ``kill`` means SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from governor import failpoint as fp
from governor.failpoint import FailpointSpecError, Term, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("spec", "want"), [
    (None, None),
    ("", None),
    ("  ; ", None),
    ("enforce.apply.write=kill", {"enforce.apply.write": Term("kill")}),
    ("enforce.apply.write=kill@5", {"enforce.apply.write": Term("kill", at=5)}),
    ("metering.sample.group=sleep(2)", {"metering.sample.group": Term("sleep", 2.0)}),
    ("metering.sample.group=sleep(.25)@3", {"metering.sample.group": Term("sleep", .25, 3)}),
    ("store.write.before_commit=raise@3; store.meter.before_commit = kill ;",
     {"store.write.before_commit": Term("raise", at=3),
      "store.meter.before_commit": Term("kill")}),
])
def test_parse(spec: str | None, want: dict[str, Term] | None) -> None:
    assert parse(spec) == want


@pytest.mark.parametrize(("spec", "problem"), [
    ("enforce.apply.write", "not NAME=TERM"),
    ("enforce.apply.wrte=kill", "unknown failpoint 'enforce.apply.wrte'"),
    ("enforce.apply.write=kill@0", "bad term"),
    ("enforce.apply.write=kill@", "bad term"),
    ("enforce.apply.write=sleep", "bad term"),
    ("enforce.apply.write=sleep(x)", "bad term"),
    ("enforce.apply.write=exit", "bad term"),
    ("enforce.apply.write=kill@5x", "bad term"),
])
def test_parse_rejects(spec: str, problem: str) -> None:
    with pytest.raises(FailpointSpecError, match=re.escape(problem)):
        parse(spec)


def test_every_failpoint_in_the_code_is_known_and_every_known_one_is_placed() -> None:
    placed = set()
    for path in (REPO / "governor").rglob("*.py"):
        placed |= set(re.findall(r'\bfailpoint\("([^"]+)"\)', path.read_text()))
    assert placed == set(fp.NAMES)
    docs = (REPO / "docs/operations.md").read_text()
    assert all(f"`{name}`" in docs for name in fp.NAMES)


def test_disarmed_is_inert() -> None:
    # this test process has no GOVERNOR_FAILPOINTS: nothing counts, nothing fires
    assert "GOVERNOR_FAILPOINTS" not in os.environ
    for _ in range(3):
        fp.failpoint("enforce.apply.write")
    assert fp.hits("enforce.apply.write") == 0


LOOP = """
import sys
from governor.failpoint import failpoint, FailpointError
for i in range(1, 11):
    print(i, flush=True)
    try:
        failpoint("enforce.apply.write")
    except FailpointError as e:
        print("raised", e, flush=True)
print("done", flush=True)
"""


def run(spec: str, code: str = LOOP) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GOVERNOR_FAILPOINTS=spec)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False)


def test_kill_at_the_nth_hit() -> None:
    r = run("enforce.apply.write=kill@5")
    assert r.returncode == -signal.SIGKILL
    assert r.stdout.split() == ["1", "2", "3", "4", "5"]     # died at the 5th, not later
    assert r.stderr == "failpoint enforce.apply.write hit 5: kill\n"


def test_kill_at_the_first_hit_without_count() -> None:
    r = run("enforce.apply.write=kill")
    assert r.returncode == -signal.SIGKILL and r.stdout.split() == ["1"]


def test_raise_at_the_nth_hit_only() -> None:
    r = run("enforce.apply.write=raise@2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == ["1", "2", "raised failpoint enforce.apply.write (hit 2)"]
    assert r.stdout.splitlines()[-1] == "done"


def test_sleep_every_hit() -> None:
    code = ("import time\nfrom governor.failpoint import failpoint\nt = time.monotonic()\n"
            "for _ in range(3):\n    failpoint('metering.sample.group')\n"
            "print(time.monotonic() - t)\n")
    r = run("metering.sample.group=sleep(0.1)", code)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) >= 0.3
    assert r.stderr.count("failpoint metering.sample.group hit") == 3


def test_other_failpoints_stay_inert() -> None:
    r = run("store.meter.before_commit=kill")
    assert r.returncode == 0 and r.stdout.split()[-1] == "done" and r.stderr == ""


def test_a_typo_fails_at_import() -> None:
    r = run("enforce.apply.wirte=kill")
    assert r.returncode == 1 and "unknown failpoint 'enforce.apply.wirte'" in r.stderr


DRAIN = """
import sys
from governor.store.db import make_engine, scope_factory
from governor.store.spool import Spool
spool = Spool(sys.argv[1], max_samples=1000)
spool.drain(scope_factory(make_engine(sys.argv[2])))
"""


def test_spool_drain_killed_after_commit_replays_without_duplicates(tmp_path: Path) -> None:
    """SIGKILL between a drained batch's commit and the journal's note of it: the restart
    replays that batch, and the store's unique key keeps it from counting twice."""
    from governor.metering.sample import GroupSample
    from governor.store.db import make_engine, scope_factory, upgrade
    from governor.store.models import Sample
    from governor.store.spool import Spool

    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    spool = Spool(tmp_path / "s.spool", max_samples=1000)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(3):
        spool.put("n", [GroupSample(node="n", tenant="t", group=g, cgroup_id=10 + j,
                                    wall=t0.replace(second=i), monotonic=float(i),
                                    cpu_usage_usec=1000 * i)
                        for j, g in enumerate(("a", "b"))], reason="test")
    r = run("store.spool.after_commit=kill@2", DRAIN.replace("sys.argv[1]", repr(str(
        spool.path))).replace("sys.argv[2]", repr(url)))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "failpoint store.spool.after_commit hit 2: kill" in r.stderr
    assert len(spool.pending()) == 2          # the second batch is stored, not marked done
    engine = make_engine(url)
    assert spool.drain(scope_factory(engine)) == 2
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Sample)).scalar_one() == 6
    engine.dispose()
    assert not spool


SAMPLE = """
import sys, tempfile
from pathlib import Path
from governor.cgroupfs.files import CgroupFS
from governor.failpoint import armed
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import create_groups
root = Path(tempfile.mkdtemp())
create_groups(root / "governor", 3)
with CgroupFS(root, verify=False) as fs:
    s = Sampler(fs, "governor", "n1", slow_every=100)
    print(armed("metering.sample.group"), s._fast_pass is not None)
    for _ in range(3):
        print(len(s.sample().samples))
"""


@pytest.mark.parametrize("spec", ["metering.sample.group=sleep(0)", ""])
def test_the_sampling_pass_hits_its_failpoint_per_group_only_when_armed(spec: str) -> None:
    """Three passes over 3 groups and their 1 tenant: 12 hits when armed, whether the C
    accelerator's loop reads them or the Python one (the first pass is slow: Python); none
    disarmed, when the pass hands the C loop no hook at all (issue #16)."""
    r = run(spec, SAMPLE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].split()[0] == str(bool(spec)) and lines[1:4] == ["4", "4", "4"]
    assert r.stderr.count("failpoint metering.sample.group hit") == (12 if spec else 0)
