"""``governor launcher`` and ``governor-launch`` on a real kernel (issue #19): a container
of an image launched through the warm launcher is the same container ``governor launch``
makes (its group from the first instruction, pid 1, the merged view, the exit code, its
layer removed after), a plain launch too, the client's signals reach the container, and
a launcher killed and started again leaves a running container and its client alone.

The images and the state directory are test_image_kernel's ``world``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.placement.launcher import client_path
from tests.kernel.test_image_kernel import REPO, SCRIPT, World, containers_dir, mountinfo

pytestmark = pytest.mark.kernel

CLIENT = client_path()


def start_launcher(cfg: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "governor", "launcher", "--config", str(cfg)],
                         stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "governor launcher: serving" in line:
            return p
    raise AssertionError(f"the launcher did not start: {''.join(seen)}")


@pytest.fixture
def launcher(world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    assert CLIENT.is_file(), f"{CLIENT} not built (setup.py build_ext --inplace)"
    sock = tmp_path / "launch.sock"
    with world.cfg.open("a") as f:
        f.write(f'[launcher]\nsocket = "{sock}"\n')
    p = start_launcher(world.cfg)
    yield world, sock
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0


def client(sock: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "GOVERNOR_LAUNCH_SOCKET": str(sock), "LANG": "C.UTF-8"}
    return subprocess.Popen([str(CLIENT), *args], env=env, text=True,  # type: ignore[call-overload]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def procs_of(world: World, group: str) -> list[int]:
    text = (Path("/sys/fs/cgroup") / world.scratch.name / group / "cgroup.procs").read_text()
    return [int(x) for x in text.split()]


def test_image_container_through_the_launcher(launcher: tuple[World, Path]) -> None:
    world, sock = launcher
    c = client(sock, "--tenant", "t", "--group", "box", "--image", "box:v1", "--env",
               "GREETING=cli", "--env", "EXTRA=x", "--", SCRIPT)
    out_text, err = c.communicate(timeout=300)
    assert c.returncode == 3, err
    out = dict(line.split("=", 1) for line in out_text.splitlines() if "=" in line)
    assert out["cg"] == f"0::/{world.scratch.name}/t/box"
    assert out["pid"] == "1"
    assert re.fullmatch(r"[0-9a-f]{12}", out["host"])
    assert out["pwd"] == "/srv/app"
    assert out["env"] == "cli,x,/bin,/root"
    assert out["etc"].split() == ["added", "group", "passwd"]
    assert out["data"].split() == ["new"]
    assert out["sys"].split() == ["lo"]
    assert out["after"].split() == ["group", "mine", "passwd", "written"]
    assert containers_dir(world) == []
    assert world.store.containers() == []
    assert mountinfo() == world.mounts


def test_plain_launch_and_errors_through_the_launcher(launcher: tuple[World, Path]) -> None:
    world, sock = launcher
    c = client(sock, "--tenant", "t", "--group", "box", "--unshare", "pid,mount", "--",
               "/bin/sh", "-c", "cat /proc/self/cgroup; echo pid=$$; exit 4")
    out, err = c.communicate(timeout=120)
    assert c.returncode == 4, err
    assert f"0::/{world.scratch.name}/t/box" in out and "pid=1" in out
    c = client(sock, "--tenant", "t", "--group", "box", "--", "/no/such/program")
    _, err = c.communicate(timeout=120)
    assert c.returncode == 127, err
    c = client(sock, "--tenant", "t", "--group", "box", "--image", "absent:v9", "--", "true")
    _, err = c.communicate(timeout=120)
    assert c.returncode == 125 and "absent" in err


def test_signal_reaches_the_container(launcher: tuple[World, Path]) -> None:
    _, sock = launcher
    c = client(sock, "--tenant", "t", "--group", "box", "--image", "box:v1", "--",
               "trap 'echo term; exit 7' TERM; echo up; while :; do sleep 0.1; done")
    assert c.stdout is not None
    assert c.stdout.readline() == "up\n"
    c.send_signal(signal.SIGTERM)
    out, err = c.communicate(timeout=120)
    assert c.returncode == 7, err
    assert out == "term\n"


def test_launcher_killed_and_restarted_leaves_the_container(
        launcher: tuple[World, Path]) -> None:
    world, sock = launcher
    c = client(sock, "--tenant", "t", "--group", "box", "--image", "box:v1", "--",
               "echo up; read -r line; echo got $line; exit 5", stdin=subprocess.PIPE)
    assert c.stdout is not None and c.stdin is not None
    assert c.stdout.readline() == "up\n"
    before = procs_of(world, "t/box")
    assert before
    # the launcher dies hard (its unit's KillMode=process would stop only it as well)
    pids = _launcher_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.5)
    assert procs_of(world, "t/box") == before  # the container runs on, in its group
    again = start_launcher(world.cfg)  # replaces the socket the dead one left
    try:
        c.stdin.write("hello\n")
        c.stdin.flush()
        out, err = c.communicate(timeout=120)
        assert c.returncode == 5, err
        assert out == "got hello\n"
        # and the new launcher serves
        d = client(sock, "--tenant", "t", "--group", "box", "--image", "box:v1", "--",
                   "exit 9")
        d.communicate(timeout=120)
        assert d.returncode == 9
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0
    assert containers_dir(world) == []


def _launcher_pids() -> list[int]:
    """The processes of `governor launcher` (not its shims, which are its forks too: a
    shim is in a session of its own)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, sid = int(d.name), int(stat[3])
        if b"launcher" in cmd and b"governor" in cmd and sid != pid:
            out.append(pid)
    return out
