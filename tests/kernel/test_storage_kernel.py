"""The writable layer of containers from images, metered and limited on a real kernel
(issue #19): one project quota per group on a loop-mounted ext4 with project quotas
(governor.image.writable), read each pass into the groups' samples
(governor.metering.storage), ``storage.max`` as the project's hard limit.

The containers run as root in the image (the limit must hold for root: overlayfs writes the
upper layer with its mounter's credentials, without CAP_SYS_RESOURCE) and write with
busybox's ``dd``; the bytes are read back from the filesystem's own quota accounting.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.enforce.keeper import Enforcer
from governor.image.limits import ImportLimits
from governor.image.source import read_source
from governor.image.store import ImageStore
from governor.image.writable import Pool
from governor.metering.sample import GroupSample
from governor.metering.sampler import Sampler
from governor.metering.storage import StorageMeter
from tests.kernel.test_image_kernel import World, governor, popen, read_ready

pytestmark = pytest.mark.kernel

MIB = 1 << 20
POLICY = """[tenants.t.groups.box]
storage.max = "4M"
[tenants.t.groups.big]
"""


def pool_of(world: World) -> Pool:
    return Pool(str(world.state), 256 << 20)


def apply(world: World, policy: str) -> None:
    pol = world.cfg.parent / "policy.toml"
    pol.write_text(policy)
    with CgroupFS(Path("/sys/fs/cgroup")) as fs:
        assert Enforcer(fs, world.scratch.name, str(pol)).reload(trigger="test")


def measure(world: World, meter: StorageMeter) -> dict[str, GroupSample]:
    """One sampling pass over the scratch subtree, with the writable layers filled in."""
    with CgroupFS(Path("/sys/fs/cgroup")) as fs:
        sampler = Sampler(fs, world.scratch.name, "node")
        try:
            samples = sampler.sample().samples
        finally:
            sampler.close()
    meter.fill(samples)
    return {s.path: s for s in samples}


def say(p: subprocess.Popen[str], line: str) -> str:
    """Send ``line`` to the container and read its answer line."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


WRITER = ("busybox dd if=/dev/zero of=/data/a bs=1M count=2 2>/dev/null; echo ready; "
          "while read n; do err=$(busybox dd if=/dev/zero of=/data/$n bs=1M count=$n 2>&1 "
          ">/dev/null); rc=$?; echo \"rc=$rc\" $err; done")


def test_storage_metered_limited_raised_and_gone(world: World,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    apply(world, POLICY)
    limits: dict[str, int | None] = {"t/box": 4 * MIB, "t/big": None}
    meter = StorageMeter(pool_of(world), lambda: limits)
    p = popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--", WRITER,
              cfg=world.cfg)
    try:
        read_ready(p)
        got = measure(world, meter)
        # 2 MiB of data, plus the upper layer's few directories and the dd's blocks
        box = got["t/box"].storage_bytes
        assert box is not None and 2 * MIB <= box < 2 * MIB + 256 * 1024, box
        assert got["t/big"].storage_bytes == 0      # no container there: nothing, known
        assert got["t"].storage_bytes is None       # a tenant's own sample carries none
        # 8 MiB more do not fit in storage.max = 4M: the container's write fails, as root
        with caplog.at_level(logging.INFO, logger="governor.storage"):
            answer = say(p, "8")
            assert answer.startswith("rc=1") and "Disk quota exceeded" in answer, answer
            box = measure(world, meter)["t/box"].storage_bytes
            assert box is not None and 4 * MIB - 64 * 1024 <= box <= 4 * MIB, box
            assert meter.full_counts["t/box"] == 1
            assert "storage.max reached" in caplog.text
            # a policy that raises it reaches the running container at the next pass
            limits["t/box"] = 16 * MIB
            measure(world, meter)
            assert "storage.max set" in caplog.text
            [u] = pool_of(world).usage({"t/box": pool_of(world).projects()["t/box"]}).values()
            assert u.limit == 16 * MIB
            answer = say(p, "6")
            assert answer.startswith("rc=0"), answer
            box = measure(world, meter)["t/box"].storage_bytes
            assert box is not None and 9 * MIB <= box <= 16 * MIB, box
            assert "storage.max no longer reached" in caplog.text
        p.stdin.close()  # type: ignore[union-attr]
        assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # the container's directory went with it, and so did its bytes
    assert measure(world, meter)["t/box"].storage_bytes == 0


def test_storage_groups_apart_and_a_kept_layer_still_counts(world: World) -> None:
    apply(world, POLICY)
    meter = StorageMeter(pool_of(world), lambda: {"t/box": 4 * MIB})
    small = popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--keep", "--",
                  "busybox dd if=/dev/zero of=/f bs=1M count=1 2>/dev/null; echo ready; "
                  "read x", cfg=world.cfg)
    big = popen("launch", "-t", "t", "-g", "big", "--image", "box:v1", "--",
                "busybox dd if=/dev/zero of=/f bs=1M count=3 2>/dev/null; echo ready; read x",
                cfg=world.cfg)
    try:
        read_ready(small)
        read_ready(big)
        got = measure(world, meter)
        b, g = got["t/box"].storage_bytes, got["t/big"].storage_bytes
        assert b is not None and MIB <= b < MIB + 256 * 1024, b
        assert g is not None and 3 * MIB <= g < 3 * MIB + 256 * 1024, g
        projects = pool_of(world).projects()
        assert projects["t/box"] != projects["t/big"]
        _, err = small.communicate("go\n", timeout=300)
        assert small.returncode == 0, err
        big.communicate("go\n", timeout=300)
        assert big.returncode == 0
    finally:
        for p in (small, big):
            if p.poll() is None:
                p.kill()
                p.wait()
    kept = [d for d in (world.state / "containers").iterdir() if (d / "upper").is_dir()]
    assert len(kept) == 1, kept
    # the kept upper layer takes the disk still: still the group's, until removed
    got = measure(world, meter)
    b = got["t/box"].storage_bytes
    assert b is not None and b >= MIB, b
    assert got["t/big"].storage_bytes == 0
    shutil.rmtree(kept[0])
    assert measure(world, meter)["t/box"].storage_bytes == 0


def test_storage_pool_mounted_again_after_a_reboot(world: World) -> None:
    apply(world, POLICY)
    r = governor("launch", "-t", "t", "-g", "big", "--image", "box:v1", "--",
                 "busybox dd if=/dev/zero of=/f bs=1M count=1 2>/dev/null", cfg=world.cfg)
    assert r.returncode == 0, r.stderr
    pool = pool_of(world)
    projects = pool.projects()
    assert set(projects) == {"t/big"}
    # as after a reboot: the pool file is there, not mounted
    subprocess.run(["umount", pool.containers], check=True)
    assert not pool.ready()
    meter = StorageMeter(pool, dict)
    assert measure(world, meter)["t/big"].storage_bytes is None  # not measured: unknown
    meter.start()  # the daemon at start: mounts the existing file, never makes one
    assert pool.ready()
    assert pool.projects() == projects
    assert measure(world, meter)["t/big"].storage_bytes == 0


def test_storage_refused_without_project_quotas(world: World, tmp_path: Path) -> None:
    """A state directory on a filesystem without project quotas and no pool_size: the
    launch refuses (an unmetered writable layer would be a lost number), saying how."""
    state = tmp_path / "plain-state"
    cfg = tmp_path / "plain.toml"
    cfg.write_text(world.cfg.read_text().replace(str(world.state), str(state))
                   .replace('[images]\npool_size = "256M"\n', ""))
    assert "pool_size" not in cfg.read_text()
    # the world's layout (its tmp_path is this test's) imported into the plain state too
    # (no free-space reserve: the sandbox's /tmp is a small tmpfs, as the world's store)
    ImageStore(str(state), limits=ImportLimits(min_free_space=0)).import_image(
        read_source(str(tmp_path / "layout"), "v1"), "box", "v1")
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--", "true",
                 cfg=cfg)
    assert r.returncode == 125, (r.returncode, r.stderr)  # launch failed (docker's 125)
    assert "[Errno" not in r.stderr
    assert "without project quotas" in r.stderr and "pool_size" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(state / "containers") == []
    # a non-empty containers/ is never mounted over
    (state / "containers" / "precious").write_text("x")
    cfg.write_text(cfg.read_text() + '[images]\npool_size = "64M"\n')
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--", "true",
                 cfg=cfg)
    assert r.returncode == 125 and "precious" in r.stderr and "hide" in r.stderr, r.stderr
    assert (state / "containers" / "precious").read_text() == "x"
    assert not (state / "containers.ext4").exists() or not Pool(str(state)).ready()


BILLED_POLICY = """[plans.std]
currency = "EUR"
cpu_core_hour = "0"
memory_gib_hour = "0"
io_read_gib = "0"
io_write_gib = "0"
storage_gib_hour = "3.6"
[tenants.t]
plan = "std"
[tenants.t.groups.box]
storage.max = "16M"
[tenants.t.groups.big]
"""


def test_daemon_meters_bills_and_exports_the_writable_layer(world: World) -> None:
    """``governor run`` with a container of the image writing 8 MiB and holding it: the
    pass's samples carry the bytes, the rollups integrate them (byte-seconds within the
    timing of the test's own clock), the bill prices them per GiB-hour to the cent, and
    /metrics shows them."""
    import json
    import signal
    import sys
    import time
    import urllib.request
    from datetime import UTC, datetime
    from decimal import Decimal

    from sqlalchemy import create_engine, func, select

    from governor.store.db import upgrade
    from governor.store.models import Group, HourlyRollup
    from tests.kernel.test_daemon_kernel import free_port, wait

    pol = world.cfg.parent / "policy.toml"
    pol.write_text(BILLED_POLICY)
    db = f"sqlite:///{world.cfg.parent / 'run.db'}"
    upgrade(db)
    port = free_port()
    cfg = world.cfg.parent / "run.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{world.scratch.name}"\n'
        f'policy = "{pol}"\nstate_dir = "{world.state}"\nnode = "vm"\n'
        f'[database]\nurl = "{db}"\n[sampling]\ninterval = "1s"\n'
        f'[exporter]\nlisten = "127.0.0.1:{port}"\n[images]\npool_size = "256M"\n')
    log = (world.cfg.parent / "run.log").open("w")
    t_start = datetime.now(UTC).replace(microsecond=0)
    d = subprocess.Popen([sys.executable, "-m", "governor", "run", "--config", str(cfg)],
                         stderr=log, cwd=Path(__file__).resolve().parents[2])
    try:
        text = (world.cfg.parent / "run.log")
        assert wait(lambda: "governor running" in text.read_text() or d.poll() is not None,
                    180), text.read_text()[-3000:]
        p = popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--",
                  "busybox dd if=/dev/zero of=/f bs=1M count=8 2>/dev/null; echo ready; "
                  "read x", cfg=cfg)
        read_ready(p)
        held_from = time.monotonic()

        def exported() -> int | None:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=30).read().decode()
            for line in body.splitlines():
                if line.startswith("governor_storage_bytes{") and 'group="box"' in line:
                    return int(float(line.rsplit(" ", 1)[1]))
            return None

        assert wait(lambda: (exported() or 0) >= 8 * MIB, 60)
        got = exported()
        assert got is not None and 8 * MIB <= got < 8 * MIB + 256 * 1024, got
        time.sleep(20)
        p.communicate("go\n", timeout=300)
        held = time.monotonic() - held_from
        assert p.returncode == 0
        time.sleep(3)  # passes that see it gone
    finally:
        d.send_signal(signal.SIGTERM)
        assert d.wait(timeout=120) == 0, (world.cfg.parent / "run.log").read_text()[-3000:]
    e = create_engine(db)
    with e.connect() as c:
        byte_s = c.execute(select(func.sum(HourlyRollup.storage_byte_seconds))
                           .join(Group, Group.id == HourlyRollup.group_id)
                           .where(Group.path == "t/box")).scalar_one()
        big = c.execute(select(func.sum(HourlyRollup.storage_byte_seconds))
                        .join(Group, Group.id == HourlyRollup.group_id)
                        .where(Group.path == "t/big")).scalar_one()
    e.dispose()
    want = 8 * MIB * held
    # the 8 MiB held for `held` seconds, the container's start and end each within a pass
    assert 0.9 * want <= byte_s <= 1.1 * want + 8 * MIB * 4, (byte_s, want)
    assert big == 0
    # whole hours (a window that ends inside an hour is prorated by time share: issue #18)
    r = governor("bill", "--tenant", "t", "--period", t_start.strftime("%Y-%m"),
                 "--format", "json", cfg=cfg)
    assert r.returncode == 0, r.stderr
    [inv] = json.loads(r.stdout)
    lines = [x for x in inv["lines"] if x["resource"] == "storage"]
    assert lines, inv
    [line] = [x for x in lines if x["group"] == "box"]
    assert line["unit"] == "GiB-hour"
    qty = Decimal(line["quantity"])
    exact = Decimal(byte_s) / (1 << 30) / 3600   # GiB-hours
    assert abs(qty - exact) <= Decimal("0.000001"), (qty, byte_s)
    assert abs(Decimal(line["amount"]) - exact * Decimal("3.6")) <= Decimal("0.01"), line
