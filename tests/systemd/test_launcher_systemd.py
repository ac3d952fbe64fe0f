"""``governor launcher`` as the shipped unit (deploy/systemd/governor-launcher.service)
under systemd as PID 1, with the systemd driver: a container of an image launched through
``governor-launch`` runs in its launch's own scope below its group's slice from its first
instruction; ``systemctl restart`` and ``systemctl stop`` of the launcher (KillMode=process)
leave the running container, its scope and its waiting client alone, and the restarted
launcher serves the next launch."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.image.limits import ImportLimits
from governor.image.source import read_source
from governor.image.store import ImageStore
from governor.placement.launcher import client_path
from tests.kernel.test_image_kernel import base_layer, upper_layer
from tests.pool import load_pool_modules
from tests.unit import oci_writer as w

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "governor-launcher.service"
NAME = "governor-launcher-test.service"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r


def show(prop: str, unit: str = NAME) -> str:
    return sh("systemctl", "show", "-P", prop, unit).stdout.strip()


def journal() -> str:
    return sh("journalctl", "-b", "--no-pager", "-n", "60", "-u", NAME, check=False).stdout


def test_launcher_unit_scopes_and_restarts(tmp_path: Path) -> None:
    assert client_path().is_file()
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.acme.groups.box]\n")
    state = tmp_path / "state"
    sock = tmp_path / "launch.sock"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\nsubtree = "gvlaunch.slice"\npolicy = "{pol}"\n'
                   f'state_dir = "{state}"\n'
                   f'[database]\nurl = "sqlite:///{tmp_path}/g.db"\n'
                   f'[images]\npool_size = "64M"\n[launcher]\nsocket = "{sock}"\n')
    for f in (pol, cfg):
        f.chmod(0o600)
    load_pool_modules()
    r = subprocess.run([sys.executable, "-m", "governor", "policy", "apply", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=300, check=False,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    layout = w.OCILayout(tmp_path / "layout")
    layout.add_image([base_layer(), upper_layer()], tag="v1", env=["PATH=/bin"],
                     entrypoint=["/bin/sh", "-c"])
    ImageStore(str(state), limits=ImportLimits(min_free_space=0)).import_image(
        read_source(str(layout.root), "v1"), "box", "v1")
    # the shipped unit, its ExecStart pointed at this checkout and this configuration
    text = UNIT.read_text()
    assert "\nKillMode=process\n" in text
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -m governor launcher "
                  f"--config {cfg}", text)
    Path(f"/etc/systemd/system/{NAME}").write_text(text)
    sh("systemctl", "daemon-reload")
    client = None
    try:
        sh("systemctl", "start", NAME)  # Type=notify: returns once READY=1
        assert show("ActiveState") == "active"
        first_main = show("MainPID")
        env = {"PATH": "/usr/bin:/bin", "GOVERNOR_LAUNCH_SOCKET": str(sock)}
        client = subprocess.Popen(
            [str(client_path()), "-t", "acme", "-g", "box", "--image", "box:v1", "--",
             'read -r cg < /proc/self/cgroup; echo "$cg"; echo "$$"; read x; echo "got $x"; '
             "exit 6"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        assert client.stdout is not None and client.stdin is not None
        cg = client.stdout.readline().strip()
        m = re.fullmatch(r"0::/gvlaunch\.slice/gvlaunch-acme\.slice/gvlaunch-acme-box\.slice/"
                         r"(gvlaunch-acme-box-launch\\x2d(\d+)\.scope)", cg)
        if m is None:
            client.kill()
            _, err = client.communicate(timeout=60)
            raise AssertionError(f"cgroup line {cg!r}; client exit {client.returncode}: "
                                 f"{err}\n{journal()}")
        scope, shim = m.group(1), int(m.group(2))
        assert client.stdout.readline().strip() == "1"
        # the shim (the scope is named after it) is in the scope with its container, as
        # `governor launch` is in its own: out of the launcher's unit
        assert Path(f"/proc/{shim}/cgroup").read_text().strip() == cg
        assert show("ActiveState", scope) == "active"
        for what in ("restart", "stop"):
            sh("systemctl", what, NAME)
            time.sleep(0.5)
            assert show("ActiveState", scope) == "active", what
            assert Path(f"/proc/{shim}").exists(), what
            assert client.poll() is None, what
        assert not sock.exists()  # a stopped launcher leaves no socket behind
        sh("systemctl", "start", NAME)
        assert show("MainPID") != first_main
        out, err = client.communicate("hello\n", timeout=300)
        assert client.returncode == 6, err
        assert out == "got hello\n"
        # the launcher started again serves the next launch, in a scope of its own
        r = subprocess.run([str(client_path()), "-t", "acme", "-g", "box", "--image",
                            "box:v1", "--", "cat /proc/self/cgroup"], capture_output=True,
                           text=True, env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        assert "/gvlaunch-acme-box.slice/gvlaunch-acme-box-launch" in r.stdout
        # reload: the policy read again, still serving
        sh("systemctl", "reload", NAME)
        assert show("ActiveState") == "active"
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        sh("systemctl", "stop", NAME, check=False)
        Path(f"/etc/systemd/system/{NAME}").unlink(missing_ok=True)
        sh("systemctl", "daemon-reload", check=False)
        subprocess.run(["umount", "-l", str(state / "containers")], check=False)
    assert ImageStore(str(state)).containers() == []
