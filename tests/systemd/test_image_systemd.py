"""``governor launch --image`` under the systemd driver (systemd as PID 1): the container
runs in the launch's own transient scope below its group's slice, as every launched
workload does (governor.placement.launch.where_to_launch), from its first instruction; the
scope goes when the container ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governor.image.limits import ImportLimits
from governor.image.source import read_source
from governor.image.store import ImageStore
from governor.image.writable import Pool
from tests.kernel.test_image_kernel import base_layer, upper_layer
from tests.pool import load_pool_modules
from tests.unit import oci_writer as w

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]


def test_image_container_runs_in_its_launch_scope(tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.acme.groups.box]\n")
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\nsubtree = "gvimage.slice"\npolicy = "{pol}"\n'
                   f'state_dir = "{state}"\n'
                   f'[database]\nurl = "sqlite:///{tmp_path}/g.db"\n'
                   f'[images]\npool_size = "64M"\n')
    for f in (pol, cfg):
        f.chmod(0o600)
    gov = [sys.executable, "-m", "governor"]
    load_pool_modules()  # the launch makes the pool itself (mkfs.ext4, mount -o loop)
    r = subprocess.run([*gov, "policy", "apply", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=300, check=False, cwd=REPO)
    assert r.returncode == 0, r.stderr
    layout = w.OCILayout(tmp_path / "layout")
    layout.add_image([base_layer(), upper_layer()], tag="v1", env=["PATH=/bin"],
                     entrypoint=["/bin/sh", "-c"])
    # the sandbox VM's /tmp is a tmpfs of half its 1 GiB of memory: less is free there than
    # the default [images] min_free_space (1G) keeps, so the store here keeps none
    ImageStore(str(state), limits=ImportLimits(min_free_space=0)).import_image(
        read_source(str(layout.root), "v1"), "box", "v1")
    p = subprocess.Popen([*gov, "launch", "--config", str(cfg), "-t", "acme", "-g", "box",
                          "--image", "box:v1", "--",
                          'read -r cg < /proc/self/cgroup; echo "$cg"; echo "$$"; read x'],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    try:
        assert p.stdout is not None and p.stdin is not None
        cg = p.stdout.readline().strip()
        pid1 = p.stdout.readline().strip()
        # systemd escapes the tag's '-' (launch-PID) in the unit name
        scope = f"gvimage-acme-box-launch\\x2d{p.pid}.scope"
        # its first instruction already ran in the scope of this launch, under acme/box
        assert cg == (f"0::/gvimage.slice/gvimage-acme.slice/gvimage-acme-box.slice/{scope}"
                      ), (cg, p.stderr.read() if p.poll() is not None and p.stderr else "")
        assert pid1 == "1"
        show = subprocess.run(["systemctl", "show", "-P", "ActiveState", scope],
                              capture_output=True, text=True, check=False)
        assert show.stdout.strip() == "active", show
        _out, err = p.communicate("go\n", timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    # with a user namespace (systemd boots with switch_root: no chroot to refuse it), root
    # in the container keeps uid 0 mapped to itself only and cannot rename the uts
    # namespace the host's user namespace owns; a plain launch takes user too
    r = subprocess.run([*gov, "launch", "--config", str(cfg), "-t", "acme", "-g", "box",
                        "--image", "box:v1", "--unshare", "pid,mount,uts,ipc,net,cgroup,user",
                        "--", 'tr -s " " < /proc/self/uid_map; id -u; cat /proc/self/cgroup; '
                        "hostname other 2>/dev/null && echo renamed || echo refused"],
                       capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert (r.returncode, r.stdout) == (0, " 0 0 1\n0\n0::/\nrefused\n"), r.stderr
    r = subprocess.run([*gov, "launch", "--config", str(cfg), "-t", "acme", "-g", "box",
                        "--unshare", "user", "--", "sh", "-c",
                        "tr -s ' ' < /proc/self/uid_map"],
                       capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert (r.returncode, r.stdout) == (0, " 0 0 1\n"), r.stderr
    # the pool the first launch made: an ext4 with project quotas on containers/, which
    # holds nothing of the containers now (only the project ids and ext4's lost+found)
    pool = Pool(str(state), 64 << 20)
    try:
        assert pool.ready()
        assert sorted(os.listdir(pool.containers)) == ["lost+found", "projects.json"]
        assert list(pool.projects()) == ["acme/box"]
        [usage] = pool.usage(pool.projects()).values()
        assert usage.bytes == 0 and usage.inodes == 0  # the containers' writes went with them
    finally:
        subprocess.run(["umount", "-l", pool.containers], check=False)
    assert ImageStore(str(state)).containers() == []
