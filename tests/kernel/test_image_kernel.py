"""``governor launch --image`` on a real kernel (issue #19): the overlay of an image's
layers, pivot_root, /proc, /dev, the hostname, the image config, the group from the first
instruction, exit codes, --keep, cleanup after a SIGKILL, ``image rm`` refused while a
container runs, and nothing in the host's mount table.

The images are OCI layouts written on the fly (tests/unit/oci_writer.py): a base layer with
the host's static busybox and its applet links, passwd/group files, ``etc/motd`` and
``data/old1``, ``data/old2``; a second layer that deletes ``etc/motd``, replaces ``data``
opaquely (only ``data/new``) and adds ``etc/added``.  They are imported with the store's
own code into a state directory under the test's tmp_path (a tmpfs in the sandbox, which
takes the trusted.overlay xattrs and serves as overlayfs upper).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.enforce.keeper import Enforcer
from governor.image.errors import ImageInUse
from governor.image.limits import ImportLimits
from governor.image.source import read_source
from governor.image.store import ImageStore
from tests.pool import writable_pool
from tests.unit import oci_writer as w

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
GOVERNOR = [sys.executable, "-m", "governor"]
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "echo", "hostname", "id", "sleep", "tr", "pwd", "touch",
           "grep", "rm", "wc")
POLICY = "[tenants.t.groups.box]\n"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:app\napp:x:1000:\n"


def base_layer() -> w.LayerBlob:
    members: list[w.Member] = [w.directory("bin"),
                               w.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)]
    members += [w.symlink(f"bin/{a}", "/bin/busybox") for a in APPLETS]
    members += [w.directory("etc"), w.file("etc/passwd", PASSWD), w.file("etc/group", GROUP),
                w.file("etc/motd", b"welcome\n"), w.directory("data"),
                w.file("data/old1", b"1\n"), w.file("data/old2", b"2\n"),
                w.directory("home"), w.directory("home/app", uid=1000, gid=1000)]
    return w.layer(members)


def upper_layer() -> w.LayerBlob:
    return w.layer([w.file("etc/.wh.motd"),                          # deletes a file
                    w.directory("data"), w.file("data/.wh..wh..opq"),  # replaces data/
                    w.file("data/new", b"from the image\n"),
                    w.file("etc/added", b"added\n")])                  # adds a file


@dataclass
class World:
    cfg: Path
    state: Path
    store: ImageStore
    scratch: Path
    mounts: list[str]   # the test process's mountinfo before any launch


def mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


@pytest.fixture
def world(cgroup2_mount: Path, scratch_subtree: Path, tmp_path: Path) -> Iterator[World]:
    assert BUSYBOX.is_file(), "the test images need the host's static /bin/busybox"
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\ncgroup_root = "/sys/fs/cgroup"\n'
                   f'subtree = "{scratch_subtree.name}"\npolicy = "{pol}"\n'
                   f'state_dir = "{state}"\n[database]\nurl = "sqlite:///{tmp_path / "g.db"}"\n'
                   f'[images]\npool_size = "256M"\n')
    layout = w.OCILayout(tmp_path / "layout")
    base, upper = base_layer(), upper_layer()
    layout.add_image([base, upper], tag="v1", env=["PATH=/bin", "GREETING=hello"],
                     entrypoint=["/bin/sh", "-c"], cmd=["echo default-cmd"],
                     workdir="/srv/app")
    layout.add_image([base], tag="plain", cmd=["/bin/echo", "plain-default"], user="app")
    # the sandbox VM's /tmp is a tmpfs of half its 1 GiB of memory: less is free there than
    # the default [images] min_free_space (1G) keeps, so the store here keeps none
    store = ImageStore(str(state), limits=ImportLimits(min_free_space=0))
    store.import_image(read_source(str(layout.root), "v1"), "box", "v1")
    store.import_image(read_source(str(layout.root), "plain"), "plain", "v1")
    with CgroupFS(cgroup2_mount) as fs, writable_pool(state):
        enf = Enforcer(fs, scratch_subtree.name, str(pol))
        assert enf.reload(trigger="test")
        yield World(cfg, state, store, scratch_subtree, mountinfo())


def governor(*args: str, cfg: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    n = 2 if args[0] == "image" else 1  # --config goes after the (sub)command
    return subprocess.run([*GOVERNOR, *args[:n], "--config", str(cfg), *args[n:]],
                          check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def popen(*args: str, cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*GOVERNOR, *args[:1], "--config", str(cfg), *args[1:]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def children_of(pid: int, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if kids or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def snapshot(top: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry of a tree: mode, rdev, content digest (files) or link target."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                what = os.readlink(p)
            elif p.is_file():
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = ""
            out[str(p.relative_to(top))] = (st.st_mode, st.st_rdev, what)
    return out


def overlay_of(pid: int) -> dict[str, str]:
    """The options of the overlay at / in the mount namespace of ``pid``."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == "/" and fields[sep + 1] == "overlay":
            return dict(o.split("=", 1) for o in fields[sep + 3].split(",") if "=" in o)
    raise AssertionError(f"no overlay at / of pid {pid}")


def read_ready(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line == "ready", (line, p.stderr.read() if p.poll() is not None and p.stderr
                             else "")
    return line


def containers_dir(world: World) -> list[str]:
    """The containers' directories (not the pool's own lost+found and project ids)."""
    d = world.state / "containers"
    skip = {"lost+found", "projects.json"}
    return sorted(n for n in os.listdir(d) if n not in skip) if d.exists() else []


SCRIPT = r"""read -r cg < /proc/self/cgroup; echo "cg=$cg"
echo "pid=$$"; echo "host=$(hostname)"; echo "pwd=$(pwd)"
echo "env=$GREETING,$EXTRA,$PATH,$HOME"
echo "etc=$(ls /etc | tr '\n' ' ')"; echo "data=$(ls /data | tr '\n' ' ')"
echo "added=$(cat /etc/added)"; echo "init=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "procs=$(ls /proc | grep -c '^[0-9]')"; echo "dev=$(ls /dev | tr '\n' ' ')"
echo "sys=$(ls /sys/class/net | tr '\n' ' ')"; touch /sys/x 2>/dev/null || echo "sys-ro"
echo written > /data/new; echo mine > /etc/mine; rm /etc/added
echo "after=$(ls /etc | tr '\n' ' ') $(cat /data/new)"
exit 3"""


def test_image_merged_view_pid1_hostname_config_and_group(world: World) -> None:
    layers_before = snapshot(Path(world.store.layers_dir))
    r = governor("launch", "--tenant", "t", "--group", "box", "--image", "box:v1",
                 "--env", "GREETING=cli", "--env", "EXTRA=x", "--", SCRIPT, cfg=world.cfg)
    assert r.returncode == 3, r.stderr
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    # in the group from its first instruction (the shell's own read of its cgroup)
    assert out["cg"] == f"0::/{world.scratch.name}/t/box"
    assert out["pid"] == "1"
    assert re.fullmatch(r"[0-9a-f]{12}", out["host"]) and out["host"] != os.uname().nodename
    assert out["pwd"] == "/srv/app"  # WorkingDir, created: the image lacks it
    # image Env, then --env over it; HOME from the image's passwd (root)
    assert out["env"] == "cli,x,/bin,/root"
    # the merged view: motd deleted, data/ replaced opaquely, etc/added added
    assert out["etc"].split() == ["added", "group", "passwd"]
    assert out["data"].split() == ["new"]
    assert out["added"] == "added"
    # the command is pid 1 (its cmdline's first line: the script has several)
    assert out["init"] == f"/bin/sh -c {SCRIPT.splitlines()[0]}"
    assert int(out["procs"]) <= 4                    # sh, the $( ) subshell, ls, grep
    assert out["dev"].split() == sorted(["fd", "full", "null", "ptmx", "pts", "random", "shm",
                                         "stderr", "stdin", "stdout", "tty", "urandom",
                                         "zero"])
    assert out["sys"].split() == ["lo"]               # its own net namespace
    assert "sys-ro" in r.stdout
    assert out["after"].split() == ["group", "mine", "passwd", "written"]
    # the lower layers are untouched by the writes; the container's directory is gone
    assert snapshot(Path(world.store.layers_dir)) == layers_before
    assert containers_dir(world) == []
    assert world.store.containers() == []
    assert mountinfo() == world.mounts


def test_image_two_containers_share_lowers_own_writes_keep(world: World) -> None:
    layers_before = snapshot(Path(world.store.layers_dir))
    script = ('echo "$NAME" > /data/new; touch "/etc/only-$NAME"; echo ready; read x; '
              'echo "etc=$(ls /etc | tr \'\\n\' \' \')"; echo "data=$(cat /data/new)"')
    procs = [popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--keep", "--env",
                   f"NAME={n}", "--", script, cfg=world.cfg) for n in ("a", "b")]
    try:
        for p in procs:
            read_ready(p)
        # both run now: each an overlay of the same store layer directories, top first,
        # with its own upper
        inits = [children_of(children_of(p.pid)[0])[0] for p in procs]
        opts = [overlay_of(pid) for pid in inits]
        img = world.store.get("box", "v1")
        want = ":".join(world.store.layer_path(d) for d in reversed(img.layers))
        assert opts[0]["lowerdir"] == opts[1]["lowerdir"] == want
        assert opts[0]["upperdir"] != opts[1]["upperdir"]
        # image rm refuses while they run
        rm = governor("image", "rm", "box:v1", cfg=world.cfg)
        assert rm.returncode == 1, rm.stderr
        assert "image box:v1 is used by running container(s)" in rm.stderr
        assert len(world.store.containers()) == 2
        # nothing of theirs in the host's mount table
        assert mountinfo() == world.mounts
        outs = [p.communicate("go\n", timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (stdout, stderr), p, n, other in zip(outs, procs, "ab", "ba", strict=True):
        assert p.returncode == 0, stderr
        lines = dict(x.split("=", 1) for x in stdout.splitlines() if "=" in x)
        assert lines["etc"].split() == ["added", "group", f"only-{n}", "passwd"], other
        assert lines["data"] == n
        kept = re.search(r"upper layer kept in (\S+)", stderr)
        assert kept, stderr
        upper = Path(kept.group(1))
        assert (upper / "etc" / f"only-{n}").exists()
        assert not (upper / "etc" / f"only-{other}").exists()
        assert (upper / "data" / "new").read_text() == f"{n}\n"
        assert sorted(os.listdir(upper.parent)) == ["upper"]  # work and rootfs removed
    assert snapshot(Path(world.store.layers_dir)) == layers_before
    assert world.store.containers() == []
    assert mountinfo() == world.mounts


def test_image_sigkill_of_the_launchers_child_cleans_up(world: World) -> None:
    procs_file = world.scratch / "t" / "box" / "cgroup.procs"
    p = popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--",
              "echo ready; sleep 300", cfg=world.cfg)
    try:
        read_ready(p)
        (cid,) = containers_dir(world)
        assert (world.state / "containers" / cid / "upper").is_dir()
        child = children_of(p.pid)[0]
        init = children_of(child)[0]
        members = {int(x) for x in procs_file.read_text().split()}
        assert {child, init} <= members   # the container runs in the group
        with pytest.raises(ImageInUse):
            world.store.remove("box", "v1")
        os.kill(child, signal.SIGKILL)
        _, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 137, stderr
    # the container's pid 1 died with its parent: the group empties
    deadline = time.monotonic() + 30
    while procs_file.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_file.read_text().split() == []
    assert containers_dir(world) == []
    assert world.store.containers() == []
    assert mountinfo() == world.mounts
    # the launch itself SIGKILLed: its container dies with it (PR_SET_PDEATHSIG), its
    # directory stays (nothing ran the cleanup) until the next launch sweeps it
    p = popen("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--",
              "echo ready; sleep 300", cfg=world.cfg)
    try:
        read_ready(p)
        (cid,) = containers_dir(world)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 30
    while procs_file.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_file.read_text().split() == []
    assert containers_dir(world) == [cid]
    assert world.store.containers() == []  # its record's pid is gone: stale
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--", "true",
                 cfg=world.cfg)
    assert r.returncode == 0, r.stderr
    assert containers_dir(world) == []
    world.store.remove("box", "v1")  # nothing uses it now


def test_image_cmd_user_exit_codes_and_errors(world: World) -> None:
    # Cmd without an Entrypoint; User "app" from the image's passwd (the host has none)
    r = governor("launch", "-t", "t", "-g", "box", "--image", "plain:v1", cfg=world.cfg)
    assert (r.returncode, r.stdout) == (0, "plain-default\n"), r.stderr
    r = governor("launch", "-t", "t", "-g", "box", "--image", "plain:v1", "--", "/bin/sh",
                 "-c", 'id -u; id -G; echo "$HOME $USER"; exit 9', cfg=world.cfg)
    assert (r.returncode, r.stdout) == (9, "1000\n1000 50\n/home/app app\n"), r.stderr
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", cfg=world.cfg)
    assert (r.returncode, r.stdout) == (0, "default-cmd\n"), r.stderr  # Entrypoint + Cmd
    nf = governor("launch", "-t", "t", "-g", "box", "--image", "plain:v1", "--",
                  "no-such-cmd", cfg=world.cfg)
    assert nf.returncode == 127 and "command not found" in nf.stderr, nf.stderr
    ne = governor("launch", "-t", "t", "-g", "box", "--image", "plain:v1", "--",
                  "/etc/passwd", cfg=world.cfg)
    assert ne.returncode == 126 and "cannot execute" in ne.stderr, ne.stderr
    nu = governor("launch", "-t", "t", "-g", "box", "--image", "plain:v1", "--user", "ghost",
                  "--", "/bin/true", cfg=world.cfg)
    assert nu.returncode == 125, nu.stderr
    assert "image plain:v1: --user 'ghost': the image has no such user in its /etc/passwd" \
        in nu.stderr and "Traceback" not in nu.stderr
    ni = governor("launch", "-t", "t", "-g", "box", "--image", "nope:v9", "--", "x",
                  cfg=world.cfg)
    assert ni.returncode == 125 and "no image 'nope:v9' in the store" in ni.stderr, ni.stderr
    assert containers_dir(world) == []  # failed launches leave nothing either
    assert world.store.containers() == []
    assert mountinfo() == world.mounts


def chrooted() -> bool:
    """This process's root is not its mount namespace's: the bare sandbox runs the tests
    with ``chroot`` into the guest root (governor/sandbox/guest-init.sh), the systemd one
    with ``switch_root``."""
    return os.stat("/").st_ino != os.stat("/proc/1/root/").st_ino or \
        os.stat("/").st_dev != os.stat("/proc/1/root/").st_dev


def test_image_cgroup_namespace_and_user_namespace_refusal(world: World) -> None:
    """--unshare ... cgroup: the container sees its group as the cgroup root.  With user:
    in a chroot (the bare sandbox) the kernel refuses a user namespace (unshare(2) EPERM):
    a 125 naming why, nothing left behind; where it can, the command keeps uid 0 in a user
    namespace of its own (the systemd suite checks that: tests/systemd/test_image_systemd.py)."""
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--unshare",
                 "pid,mount,uts,ipc,net,cgroup", "--",
                 'read -r cg < /proc/self/cgroup; echo "$cg"', cfg=world.cfg)
    assert (r.returncode, r.stdout) == (0, "0::/\n"), r.stderr
    r = governor("launch", "-t", "t", "-g", "box", "--image", "box:v1", "--unshare",
                 "pid,mount,uts,ipc,net,user", "--", "tr -s ' ' < /proc/self/uid_map",
                 cfg=world.cfg)
    if chrooted():
        assert r.returncode == 125, (r.stdout, r.stderr)
        assert "(userns step): unshare user: Operation not permitted (the kernel refuses a " \
            "user namespace to a process whose root is not its mount namespace's" in r.stderr
        assert "Traceback" not in r.stderr
    else:
        assert (r.returncode, r.stdout) == (0, " 0 0 1\n"), r.stderr
    assert containers_dir(world) == []
    assert world.store.containers() == []
    assert mountinfo() == world.mounts
