# needs: kernel
# timeout: 2400
"""Launch-to-first-instruction of a container from an image: ``governor launch --image``
against Debian's ``runc run`` on an OCI bundle of the same image (issue #19).

Run inside the sandbox: ``bench/run image_launch [--runs 50] [--warmup 3]``.

The image (written on the fly with tests/unit/oci_writer.py, as the kernel tests do): a
base layer with the host's static busybox and its applet links, and a second layer that
deletes a file, replaces a directory opaquely and adds a file.  governor imports it into
its store (two layer directories, stacked by overlayfs at each launch); runc gets the
bundle ``umoci unpack --image LAYOUT:TAG BUNDLE`` makes of it (a flattened rootfs
directory and a config.json), with ``process.args`` set to the same command,
``terminal`` false and ``linux.cgroupsPath`` a new cgroup under the bench's scratch
subtree each run (runc creates it and removes it after; governor joins a group the policy
made: that is what each does).  Both run the namespaces pid, mount, uts, ipc, net.

What is timed: from just before the runtime's process is spawned (``governor launch ...``
or ``runc run ...``, each a new process as a user starts it) to the moment the container's
command, ``/bin/echo x`` exec'd as its pid 1, has written its first byte to its stdout,
a pipe this script reads (the container inherits it: runc without a terminal passes its
stdio through; governor passes descriptors 0-2): the byte is the first thing the
container's own program does, a few microseconds after its exec.  ``governor (API)`` also
times :func:`governor.placement.container.launch_image` called in a process that has
imported governor already (fork to the first byte): the cost of the runtime itself,
without the Python interpreter's start and the CLI's imports.  ``governor-launch`` is the
way to launch without that start: the C client (governor/placement/_launch_client.c) hands
the launch to ``governor launcher``, started before the runs as containerd is before
``ctr run`` (its start is not in any launch's time), from the client's spawn to the byte.

The runs alternate (governor, runc, API, governor-launch, governor, ...) so that a change
in the machine's load falls on all; ``--warmup`` runs of each are not counted.  p50 and p99 are
nearest-rank: over 50 runs p99 is rank ceil(0.99 * 50) = 50, the largest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from governor.cgroupfs.files import CgroupFS  # noqa: E402
from governor.enforce.keeper import Enforcer  # noqa: E402
from governor.image.limits import ImportLimits  # noqa: E402
from governor.image.source import read_source  # noqa: E402
from governor.image.store import ImageStore  # noqa: E402
from governor.image.writable import Pool  # noqa: E402
from governor.placement.container import launch_image  # noqa: E402
from governor.placement.launcher import client_path  # noqa: E402
from tests.pool import writable_pool  # noqa: E402
from tests.unit import oci_writer as w  # noqa: E402

ROOT = Path("/sys/fs/cgroup")
COMMAND = ["/bin/echo", "x"]
POOL_SIZE, POOL_SIZE_BYTES = "256M", 256 << 20
APPLETS = ("sh", "cat", "ls", "echo", "hostname", "id")


def build_layout(path: Path) -> None:
    base: list[w.Member] = [w.directory("bin"),
                            w.file("bin/busybox", Path("/bin/busybox").read_bytes(),
                                   mode=0o755)]
    base += [w.symlink(f"bin/{a}", "/bin/busybox") for a in APPLETS]
    base += [w.directory("etc"), w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
             w.file("etc/group", b"root:x:0:\n"), w.file("etc/motd", b"welcome\n"),
             w.directory("data"), w.file("data/old", b"1\n")]
    upper = [w.file("etc/.wh.motd"), w.directory("data"), w.file("data/.wh..wh..opq"),
             w.file("data/new", b"new\n"), w.file("etc/added", b"added\n")]
    w.OCILayout(path).add_image([w.layer(base), w.layer(upper)], tag="v1",
                                env=["PATH=/bin"], cmd=COMMAND)


def first_byte_after(start: Callable[[], subprocess.Popen[bytes]]) -> float:
    """Seconds from just before ``start()`` to the first byte on the process's stdout;
    then waits for it to end and checks it said ``x``."""
    t0 = time.monotonic()
    p = start()
    assert p.stdout is not None
    first = os.read(p.stdout.fileno(), 1)
    t1 = time.monotonic()
    rest, err = p.communicate(timeout=300)
    if p.returncode != 0 or first + rest != b"x\n":
        raise SystemExit(f"image_launch: {p.args!r} exited {p.returncode}, printed "
                         f"{first + rest!r}: {err.decode(errors='replace')}")
    return t1 - t0


def api_run(fs: CgroupFS, rel: str, store: ImageStore, state: str, pool: Pool) -> float:
    """launch_image in this process: fd 1 pointed at a pipe for the call's duration."""
    r, wfd = os.pipe()
    saved = os.dup(1)
    got: list[float] = []
    data: list[bytes] = []

    def reader() -> None:
        data.append(os.read(r, 1))
        got.append(time.monotonic())
        while chunk := os.read(r, 64):
            data.append(chunk)

    th = threading.Thread(target=reader)
    th.start()
    sys.stdout.flush()
    os.dup2(wfd, 1)
    os.close(wfd)
    try:
        t0 = time.monotonic()
        code = launch_image(fs, rel, store, ("img", "v1"), [], state_dir=state,
                            group="t/bench", pool=pool)
    finally:
        os.dup2(saved, 1)  # the last write end: the reader sees EOF
        os.close(saved)
    th.join(timeout=60)
    os.close(r)
    if code != 0 or b"".join(data) != b"x\n":
        raise SystemExit(f"image_launch: launch_image exited {code}, printed {data!r}")
    return got[0] - t0


def nearest_rank(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    runc = shutil.which("runc")
    umoci = shutil.which("umoci")
    if runc is None or umoci is None:
        print("image_launch: needs runc and umoci (scripts/setup.sh --test installs them)",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="image-launch-", dir="/tmp"))
    subtree = f"gbench-{secrets.token_hex(4)}"
    fs = CgroupFS(ROOT)
    try:
        return run(args, tmp, subtree, fs, runc, umoci)
    finally:
        cleanup(fs, subtree)
        shutil.rmtree(tmp, ignore_errors=True)
        fs.close()


def cleanup(fs: CgroupFS, subtree: str) -> None:
    top = ROOT / subtree
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        for _ in range(100):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def run(args: argparse.Namespace, tmp: Path, subtree: str, fs: CgroupFS, runc: str,
        umoci: str) -> int:
    controllers = set((ROOT / "cgroup.controllers").read_text().split())
    (ROOT / "cgroup.subtree_control").write_text(
        " ".join(f"+{c}" for c in ("cpu", "io", "memory", "pids") if c in controllers))
    (ROOT / subtree).mkdir()
    policy = tmp / "policy.toml"
    policy.write_text("[tenants.t.groups.bench]\n")
    state = tmp / "state"
    cfg = tmp / "config.toml"
    cfg.write_text(f'[governor]\ncgroup_root = "{ROOT}"\nsubtree = "{subtree}"\n'
                   f'policy = "{policy}"\nstate_dir = "{state}"\n'
                   f'[database]\nurl = "sqlite:///{tmp / "g.db"}"\n'
                   f'[images]\npool_size = "{POOL_SIZE}"\n')
    layout = tmp / "layout"
    build_layout(layout)
    # the sandbox VM's /tmp is a tmpfs of half its 1 GiB of memory: less is free there than
    # the default [images] min_free_space (1G) keeps, so the store here keeps none
    store = ImageStore(str(state), limits=ImportLimits(min_free_space=0))
    store.import_image(read_source(str(layout), "v1"), "img", "v1")
    bundle = tmp / "bundle"
    subprocess.run([umoci, "unpack", "--image", f"{layout}:v1", str(bundle)], check=True,
                   capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = COMMAND
    spec["process"]["terminal"] = False
    enf = Enforcer(fs, subtree, str(policy))
    if not enf.reload(trigger="bench"):
        print("image_launch: the policy did not apply", file=sys.stderr)
        return 1
    rel = f"{subtree}/t/bench"
    # the writable layers' pool (made once, here: not part of any launch's time); every
    # launch puts its container in the group's project on it
    with writable_pool(state, POOL_SIZE_BYTES) as pool:
        return measure(args, tmp, state, cfg, store, bundle, spec, fs, rel, runc, pool)


def measure(args: argparse.Namespace, tmp: Path, state: Path, cfg: Path, store: ImageStore,
            bundle: Path, spec: dict[str, Any], fs: CgroupFS, rel: str, runc: str,
            pool: Pool) -> int:
    client = client_path()
    if not client.is_file():
        print(f"image_launch: {client} is not built (setup.py build_ext --inplace)",
              file=sys.stderr)
        return 2
    sock = tmp / "launch.sock"
    launcher = start_launcher(cfg, sock)
    try:
        return measure_with(args, tmp, state, cfg, store, bundle, spec, fs, rel, runc, pool,
                            client, sock)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)


def start_launcher(cfg: Path, sock: Path) -> subprocess.Popen[bytes]:
    """``governor launcher`` on ``sock``, started and ready (not part of any launch's
    time: like containerd for ctr, it runs before)."""
    p = subprocess.Popen([sys.executable, "-m", "governor", "launcher", "--config", str(cfg),
                          "--socket", str(sock)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    assert p.stderr is not None
    for line in p.stderr:
        if b"governor launcher: serving" in line:
            threading.Thread(target=p.stderr.read, daemon=True).start()  # drain its log
            return p
    raise SystemExit(f"image_launch: the launcher did not start (exit {p.wait()})")


def measure_with(args: argparse.Namespace, tmp: Path, state: Path, cfg: Path,
                 store: ImageStore, bundle: Path, spec: dict[str, Any], fs: CgroupFS, rel: str,
                 runc: str, pool: Pool, client: Path, sock: Path) -> int:
    subtree = rel.split("/", maxsplit=1)[0]
    counter = [0]

    def runc_start() -> subprocess.Popen[bytes]:
        counter[0] += 1
        spec["linux"]["cgroupsPath"] = f"/{subtree}/runc-{counter[0]}"
        (bundle / "config.json").write_text(json.dumps(spec))
        return subprocess.Popen([runc, "--root", str(tmp / "runc-root"), "run", "--bundle",
                                 str(bundle), f"bench-{counter[0]}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def governor_start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "governor", "launch", "--config",
                                 str(cfg), "-t", "t", "-g", "bench", "--image", "img:v1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=REPO)

    def client_start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(client), "-t", "t", "-g", "bench", "--image", "img:v1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env={**os.environ, "GOVERNOR_LAUNCH_SOCKET": str(sock)})

    variants: dict[str, Callable[[], float]] = {
        "governor launch --image": lambda: first_byte_after(governor_start),
        "runc run": lambda: first_byte_after(runc_start),
        "governor (API)": lambda: api_run(fs, rel, store, str(state), pool),
        "governor-launch": lambda: first_byte_after(client_start),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    ver = subprocess.run([runc, "--version"], check=True, capture_output=True,
                         text=True).stdout
    print(f"image_launch: {os.cpu_count()} vCPUs, kernel {os.uname().release}, "
          f"{ver.splitlines()[0]}; {args.runs} runs each after {args.warmup} warm-up, "
          "alternating", flush=True)
    for i in range(args.warmup + args.runs):
        for name, fn in variants.items():
            t = fn()
            if i >= args.warmup:
                times[name].append(t)
    print()
    print("launch to the container's first instruction (its first byte on stdout), ms; "
          f"p99 nearest-rank over {args.runs} runs")
    head = f"{'runtime':<26} {'p50':>8} {'p99':>8} {'min':>8} {'max':>8} {'mean':>8}"
    print(head)
    print("-" * len(head))
    for name, xs in times.items():
        print(f"{name:<26} {nearest_rank(xs, 0.5) * 1e3:>8.1f} "
              f"{nearest_rank(xs, 0.99) * 1e3:>8.1f} {min(xs) * 1e3:>8.1f} "
              f"{max(xs) * 1e3:>8.1f} {sum(xs) / len(xs) * 1e3:>8.1f}")
    rc = times["runc run"]
    for name in ("governor-launch", "governor launch --image", "governor (API)"):
        xs = times[name]
        print(f"ratio {name} / runc run: p50 "
              f"{nearest_rank(xs, 0.5) / nearest_rank(rc, 0.5):.2f}, p99 "
              f"{nearest_rank(xs, 0.99) / nearest_rank(rc, 0.99):.2f}")
    left = store.containers()
    if left or set(os.listdir(state / "containers")) - {"lost+found", "projects.json"}:
        print(f"image_launch: containers left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
