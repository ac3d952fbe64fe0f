"""``governor recommend`` on a history the daemon recorded on a real kernel: one group far
too big (memory.max 512M, a process using about 20 MiB) and one starved (memory.max 40M
with a process touching 60 MiB, OOM-killed and restarted, and cpu.max 10% with a busy
loop, throttled).  After about 75 s of sampling every 2 s, ``recommend --window 1h`` must
tell them apart: the first over-provisioned with a lower memory.max, the second starved
with its reasons; the toml drop-in must load and ``policy plan`` show its writes.

Nothing here depends on tight timing: the history is as long as it is, and what is
asserted holds for any number of samples above two (the OOM kill reason is asserted
when, and only when, the kernel counted one after the group's first sample).
Budget on the slow TCG VM: about 3 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from governor.cgroupfs import parse
from governor.store.db import upgrade
from governor.store.tables import groups, samples
from tests.kernel.test_daemon_kernel import Gov, free_port, in_group, wait

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
#: how long the daemon samples the two groups (its interval: 2 s)
HISTORY_SECONDS = 75

POLICY = """
[tenants.rec]
[tenants.rec.groups.roomy]
memory.max = "512M"
[tenants.rec.groups.tight]
memory.max = "40M"
cpu.max = "10000 100000"
"""

#: holds 20 MiB, touched, then sleeps
ROOMY = ("import time\nb = bytearray(20 << 20)\nfor i in range(0, len(b), 4096):\n"
         "    b[i] = 1\nprint('ready', flush=True)\nwhile True:\n    time.sleep(1)\n")
#: joins the group given (after the interpreter started outside it, so its start is not
#: throttled), then touches 60 MiB page by page, again and again, until OOM-killed
TOUCHER = ("import os, sys\nwith open(sys.argv[1], 'w') as f:\n    f.write(str(os.getpid()))\n"
           "b = bytearray(60 << 20)\nwhile True:\n    for i in range(0, len(b), 4096):\n"
           "        b[i] = (b[i] + 1) & 255\n")


def governor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "governor", *args], cwd=REPO, text=True,
                          capture_output=True, check=False, timeout=300)


@pytest.fixture
def gov(scratch_subtree: Path, tmp_path: Path) -> Iterator[Gov]:
    pol = tmp_path / "policy.d"
    pol.mkdir()
    (pol / "10-rec.toml").write_text(POLICY)
    db = f"sqlite:///{tmp_path}/g.db"
    upgrade(db)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{scratch_subtree.name}"\n'
        f'policy = "{pol}"\nstate_dir = "{tmp_path}/state"\nnode = "vm"\n'
        f'[database]\nurl = "{db}"\n[exporter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = Gov(scratch_subtree, cfg, tmp_path / "daemon.log", db)
    g.log.write_text("")
    try:
        yield g
    finally:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()


class Toucher:
    """Restarts :data:`TOUCHER` in the group each time the kernel kills it."""

    def __init__(self, procs: Path) -> None:
        self.procs = procs
        self.stop = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.proc = subprocess.Popen([sys.executable, "-c", TOUCHER, str(self.procs)])
            self.started += 1
            self.proc.wait()
            self.stop.wait(0.5)

    def __enter__(self) -> Toucher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(timeout=30)


def limit(sub: Path, rel: str, file: str) -> str | None:
    """The file's value, None while the daemon has not made the group (or enabled the
    controller) yet."""
    try:
        return (sub / rel / file).read_text().strip()
    except FileNotFoundError:
        return None


def sampled(g: Gov, path: str) -> int:
    e = create_engine(g.url)
    try:
        with e.connect() as c:
            return int(c.execute(select(func.count()).select_from(samples).join(
                groups, groups.c.id == samples.c.group_id)
                .where(groups.c.path == path)).scalar_one())
    finally:
        e.dispose()


def test_recommend_tells_over_provisioned_from_starved(gov: Gov, tmp_path: Path) -> None:
    sub = gov.sub
    gov.start(interval="2s")
    assert wait(lambda: limit(sub, "rec/tight", "cpu.max") == "10000 100000"
                and limit(sub, "rec/roomy", "memory.max") == str(512 * MIB), 120), gov.tail()
    assert wait(lambda: sampled(gov, "rec/tight") >= 1 and sampled(gov, "rec/roomy") >= 1,
                120), gov.tail()
    oom_before = parse.parse_flat_keyed((sub / "rec/tight/memory.events").read_text())
    roomy = in_group(sub, "rec/roomy", [sys.executable, "-c", ROOMY],
                     stdout=subprocess.PIPE)
    busy = in_group(sub, "rec/tight", ["sh", "-c", "while :; do :; done"])
    try:
        assert roomy.stdout is not None and roomy.stdout.readline() == b"ready\n"
        with Toucher(sub / "rec/tight/cgroup.procs") as toucher:
            time.sleep(HISTORY_SECONDS)
        kills = parse.parse_flat_keyed((sub / "rec/tight/memory.events").read_text())[
            "oom_kill"] - oom_before["oom_kill"]
        n = sampled(gov, "rec/tight")               # two samples after the last kill
        assert wait(lambda: sampled(gov, "rec/tight") >= n + 2, 120), gov.tail()
        assert gov.stop() == 0, gov.tail()
    finally:
        for p in (roomy, busy):
            p.kill()
            p.wait()
    print(f"\ntoucher started {toucher.started} times; the kernel counted {kills} OOM "
          f"kills in rec/tight; samples: roomy {sampled(gov, 'rec/roomy')}, tight "
          f"{sampled(gov, 'rec/tight')}")

    table = governor("recommend", "--config", str(gov.cfg), "--window", "1h")
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    res = governor("recommend", "--config", str(gov.cfg), "--window", "1h",
                   "--format", "json", "--tenant", "rec")
    assert res.returncode == 0, res.stderr
    by = {g["group"]: g for g in json.loads(res.stdout)["groups"]}
    roomy_rec, tight_rec = by["roomy"], by["tight"]

    assert "over-provisioned" in roomy_rec["flags"], roomy_rec
    assert "starved" not in roomy_rec["flags"], roomy_rec
    assert roomy_rec["current"]["memory.max"] == str(512 * MIB)
    assert int(roomy_rec["suggest"]["memory.max"]) < 256 * MIB, roomy_rec
    assert int(roomy_rec["suggest"]["memory.max"]) >= roomy_rec["figures"][
        "working_set_peak"], roomy_rec
    assert any(r.startswith("memory.max 512M is ") for r in roomy_rec["reasons"]), roomy_rec

    assert "starved" in tight_rec["flags"], tight_rec
    assert any(r.startswith("cpu throttled in ") for r in tight_rec["reasons"]), tight_rec
    assert tight_rec["figures"]["throttled_ratio"] > 0.5, tight_rec
    assert int(tight_rec["suggest"]["cpu.max"].split()[0]) > 10000, tight_rec
    if kills:
        assert any("OOM kill" in r for r in tight_rec["reasons"]), (kills, tight_rec)
        assert int(tight_rec["suggest"]["memory.max"]) >= 48 * MIB, tight_rec

    # the operator's flow: the drop-in replaces the tenant's file, policy plan shows it
    toml = governor("recommend", "--config", str(gov.cfg), "--window", "1h",
                    "--format", "toml")
    assert toml.returncode == 0, toml.stdout + toml.stderr
    new = tmp_path / "new.d"
    new.mkdir()
    (new / "50-recommend.toml").write_text(toml.stdout)
    plan = governor("policy", "plan", "--config", str(gov.cfg), "--policy", str(new))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    print(plan.stdout)
    suggested = roomy_rec["suggest"]["memory.max"]
    assert f"/rec/roomy memory.max: {512 * MIB} -> {suggested}" in plan.stdout, plan.stdout
    assert "/rec/tight cpu.max: 10000 100000 -> " in plan.stdout, plan.stdout
