"""Which driver on a systemd host, and the cgroupfs driver's refusal there (systemd as PID 1).

The delegation check reads the ``trusted.delegate`` attribute systemd puts on the cgroup of
a unit with ``Delegate=yes``: shown here on a real scope, then ``governor policy apply``
with ``cgroup_driver = "cgroupfs"`` outside any delegated unit is refused, naming the fix,
and creates nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.config import Config
from governor.driver import choose, delegated, layout_for
from governor.systemd.units import SliceLayout

pytestmark = pytest.mark.systemd

CG = Path("/sys/fs/cgroup")


def test_systemd_is_chosen_by_default() -> None:
    name, why = choose(Config())
    assert name == "systemd" and "PID 1 is systemd" in why
    assert isinstance(layout_for(Config()), SliceLayout)


def test_delegated_units_are_recognised() -> None:
    unit = f"gvtest-deleg-{os.getpid()}.scope"
    p = subprocess.Popen(["systemd-run", "--scope", "--quiet", f"--unit={unit}",
                          "-p", "Delegate=yes", "sleep", "600"])
    try:
        cg = CG / "system.slice" / unit
        deadline = time.monotonic() + 60
        while not (cg / "cgroup.procs").exists() or not (cg / "cgroup.procs").read_text():
            assert time.monotonic() < deadline, f"{unit} never started"
            time.sleep(0.2)
        assert os.getxattr(cg, "trusted.delegate") == b"1"
        with CgroupFS(CG) as fs:
            assert delegated(fs, f"system.slice/{unit}/tenants") == f"system.slice/{unit}"
            assert delegated(fs, "system.slice/systemd-journald.service") is None
            assert delegated(fs, "governor-nowhere/tenants") is None
    finally:
        p.kill()
        p.wait()


def test_cgroupfs_driver_refuses_outside_a_delegated_unit(tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text('[tenants.acme]\ncpu.weight = 50\n')
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\ncgroup_driver = "cgroupfs"\nsubtree = "gvtest-cgroupfs"\n'
                   f'self_cgroup = "gvtest-cgroupfs-daemon"\npolicy = "{pol}"\n'
                   f'[database]\nurl = "sqlite:///{tmp_path}/g.db"\n')
    for f in (pol, cfg):
        f.chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "governor", "policy", "apply", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "governor.subtree" in r.stderr and 'cgroup_driver = "systemd"' in r.stderr
    assert "Traceback" not in r.stderr
    assert not (CG / "gvtest-cgroupfs").exists()
