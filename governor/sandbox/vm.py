"""The sandbox: a throw-away QEMU guest with a real, pure cgroup v2 hierarchy.

Tests that need a real cgroup v2 kernel never touch the host's ``/sys/fs/cgroup``: they run
inside a Linux guest booted by :func:`exec_`, which sees the host's root filesystem
read-only (so the host's Python, the project's venv and installed packages all work)
under a RAM overlay, and mounts its own cgroup2 hierarchy at ``/sys/fs/cgroup``.

:func:`setup` prepares the cache once (idempotent, a quick no-op afterwards):
Debian's ``linux-image-amd64`` kernel package, downloaded with ``apt-get download`` and
unpacked with ``dpkg -x`` (never installed), its uncompressed ``vmlinux``, a pruned and
depmod-indexed module tree, and a busybox initramfs with ``guest-init.sh`` as ``/init``.

The guest (see guest-init.sh):

* ``/`` is the host's ``/`` over 9p, read-only, under a tmpfs overlay: guest writes land in
  RAM and vanish at power-off; ``rwdirs`` are shared read-write at the same path;
* ``/sys/fs/cgroup`` is cgroup2 mounted ``nsdelegate,memory_recursiveprot`` with cpu, io,
  memory, pids (and cpuset, hugetlb, rdma, misc) available;
* ``/dev`` is devtmpfs (``/dev/kmsg``, ``/dev/vda``: a blank sparse scratch disk of
  ``disk_mb`` MiB, none when 0), ``/tmp``, ``/run`` and ``/dev/shm`` are tmpfs;
* the host paths under ``/tmp`` that the run names stay visible over the fresh ``/tmp``:
  the top directory below /tmp of the working directory, of each absolute argument and of
  each ``PATH`` entry (a project cloned to /tmp/x keeps /tmp/x); the rest of the host's
  /tmp is hidden (``rwdirs`` are mounted at their paths in any case);
* ``busybox modprobe NAME`` loads modules of the pruned tree (zram, loop, veth, bfq, ...);
* the command runs as root in the caller's working directory with ``GOVERNOR_SANDBOX=1``,
  ``PATH``, ``HOME``, ``LANG=C.UTF-8``, ``TERM=dumb`` and the ``env`` given, stdin
  ``/dev/null``; its stdout/stderr are relayed to ours as they come.

With ``systemd=True`` (``governor sandbox exec --systemd``) the guest boots the host's own
systemd (``/lib/systemd/systemd``, seen through the shared root) as PID 1 instead: the guest
init builds the same root, then does ``switch_root`` into it, with a pure cgroup v2 hierarchy
(``systemd.unified_cgroup_hierarchy=1``) and the boot target ``governor-sandbox.target``,
which pulls only sysinit, the journald and D-Bus sockets, ``dbus.service`` and
``governor-sandbox.service``: the command, run by a wrapper once the boot has finished
(``systemctl is-system-running --wait``), with the same environment, working directory,
streams and exit codes as above.  The unit has ``Delegate=yes`` (a test may manage its
own cgroup subtree), ``OOMPolicy=continue``, ``TasksMax=infinity``, ``IgnoreSIGPIPE=no``;
the guest powers off when it ends.  The guest's ``/etc`` (so ``/etc/systemd/system``) is
writable (in RAM).  Units that make no sense in a throw-away guest without udev, ttys or
network are masked (:data:`SYSTEMD_MASKED`), so are the host's generators but the debug
one (:data:`SYSTEMD_KEPT_GENERATORS`) and Debian's ``tmp.conf`` tmpfiles rule
(its ``D /tmp`` would empty the kept host paths under /tmp); ``/.dockerenv`` is removed
from the overlay, or systemd would believe it runs in a container and ignore the kernel
command line.  It takes about twice the bare boot (see docs/operations.md).

Exit codes of :func:`exec_`: the command's own; 124 when it timed out; 125 when the guest
never reported one (boot failure, kernel panic): the console tail is printed on stderr.

Knobs (environment variables):

``GOVERNOR_SANDBOX_DIR``
    the cache directory (default ``~/.cache/governor/sandbox``), about 150 MiB.
``GOVERNOR_SANDBOX_KERNEL_DEB``
    a ``linux-image-*.deb`` to use instead of downloading Debian's current one.
``GOVERNOR_SANDBOX_QEMU``
    the QEMU binary (default ``qemu-system-x86_64`` on ``PATH``).
``GOVERNOR_SANDBOX_APPEND``
    extra kernel command line for the guest.

Facts behind the choices: KVM is never used (on nested "kvm-pvm" hosts a stock kernel hangs
under KVM, and falling back by itself would hide that), so QEMU runs TCG, where Python is
about 14x slower than on the host: boot once per test suite, not once per test.  Booting
the uncompressed vmlinux (PVH) is about twice as fast as the bzImage.  ``io.weight`` only
acts once iocost is enabled on the device (``echo "254:0 enable=1" >
/sys/fs/cgroup/io.cost.qos``) or with BFQ (``busybox modprobe bfq``).

The host root is mounted with 9p ``cache=loose`` (Python imports many files: much faster),
so the guest assumes host files do not change during a run; a file being rewritten on the
host while the guest reads it can be seen torn.  ``rwdirs`` are not cached.

Port forwards (``port_forwards=[(host, guest)]``) bind ``127.0.0.1:host`` on the host only
and reach ``10.0.2.15:guest`` in the guest (QEMU user networking with ``restrict=on``: the
guest reaches nothing outside); a guest server must listen on ``0.0.0.0`` or ``10.0.2.15``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from importlib import resources
from pathlib import Path
from typing import IO

from governor.errors import GovernorError
from governor.sandbox.initramfs import (
    CpioEntry,
    SandboxBuildError,
    cpio_newc,
    elf_is_static,
    extract_vmlinux,
    load_order,
    parse_modules_dep,
)

__all__ = [
    "APT_PACKAGES",
    "SYSTEMD_APT_PACKAGES",
    "SYSTEMD_MASKED",
    "BootSpec",
    "SandboxError",
    "SandboxNotReady",
    "default_cache_dir",
    "exec_",
    "qemu_argv",
    "setup",
    "systemd_service_script",
    "systemd_units",
    "write_systemd_files",
]

#: Debian packages the sandbox needs on the host
APT_PACKAGES = ("qemu-system-x86", "busybox-static")
#: modules the guest init loads at boot, then those for eth0 (only with port forwards)
BASE_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_console", "9pnet_virtio", "9p", "overlay",
)
NET_MODULES = ("virtio_net",)
#: busybox applets the guest init uses (cp, rm, ln, switch_root: the systemd mode)
INIT_APPLETS = (
    "sh", "mount", "mkdir", "insmod", "chroot", "poweroff", "hostname", "ip", "cat", "cut",
    "sync", "echo", "mv", "sleep", "cp", "rm", "ln", "switch_root",
)
#: Debian packages ``exec_(systemd=True)`` needs on the host (the guest runs the host's own)
SYSTEMD_APT_PACKAGES = ("systemd", "dbus")
SYSTEMD_BIN = "/lib/systemd/systemd"
#: the boot target and the unit that runs the command, in systemd mode
SYSTEMD_TARGET = "governor-sandbox.target"
SYSTEMD_SERVICE = "governor-sandbox.service"
#: kernel command line of the systemd mode (systemd reads its own options there)
SYSTEMD_CMDLINE = (
    f"systemd.unified_cgroup_hierarchy=1 systemd.unit={SYSTEMD_TARGET} systemd.firstboot=off"
)
#: units masked in the systemd guest: what a throw-away guest without udev, ttys, network
#: or persistent state cannot or need not run, then sysinit pieces no cgroup test needs
#: (a faster boot); a test that needs one can unmask it (/etc/systemd/system is writable)
SYSTEMD_MASKED = (
    "systemd-firstboot.service", "systemd-repart.service", "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service", "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service", "systemd-random-seed.service", "systemd-update-utmp.service",
    "systemd-journal-flush.service", "systemd-machine-id-commit.service", "getty.target",
    "systemd-timesyncd.service", "systemd-pstore.service",
    # lean: no module autoloading (no depmod index of the host's modules in the guest),
    # no debug/tracing/hugepages/fuse mounts, no users to create, root is an overlay already
    "modprobe@.service", "dev-hugepages.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "systemd-sysusers.service",
    "systemd-modules-load.service", "systemd-remount-fs.service",
    "systemd-tmpfiles-setup-dev.service", "kmod-static-nodes.service",
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
    "systemd-journald-audit.socket", "systemd-initctl.socket",
)
#: tmpfiles.d rules masked in the guest's /etc: Debian's ``D /tmp`` would empty /tmp
SYSTEMD_MASKED_TMPFILES = ("tmp.conf",)
#: where the host's systemd keeps its generators; all are masked in the guest but these:
#: the fstab one would mount the host's disks (and wait for .device units: no udev), the
#: sysv one reads /etc/init.d, postgresql's would start the host's clusters, and each
#: costs boot time under TCG.  The debug one reads systemd.mask=/systemd.wants= from the
#: kernel command line (GOVERNOR_SANDBOX_APPEND).
SYSTEMD_GENERATORS_DIR = Path("/lib/systemd/system-generators")
SYSTEMD_KEPT_GENERATORS = ("systemd-debug-generator",)
#: seconds the wrapper waits for the boot to finish before running the command anyway
SYSTEMD_BOOT_WAIT = 120
#: module subtrees kept (relative to lib/modules/KVER/kernel); the rest is pruned
KEEP_DRIVERS = ("block", "char", "md", "net", "virtio")
PRUNE = (
    "sound", "drivers/net/wireless", "drivers/net/ethernet", "drivers/net/can",
    "drivers/net/usb", "drivers/net/wwan", "net/bluetooth", "net/mac80211", "net/wireless",
)
#: bump when the cache layout changes in a way the stamp cannot see
CACHE_FORMAT = 1
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125
GUEST_ADDR = "10.0.2.15"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

Log = Callable[[str], None]


class SandboxError(GovernorError):
    """The sandbox cannot be set up or booted; the message says what to run to fix it."""


class SandboxNotReady(SandboxError):
    """The cache is missing or stale: run ``governor sandbox setup``."""


def default_cache_dir() -> Path:
    env = os.environ.get("GOVERNOR_SANDBOX_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "governor" / "sandbox"


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------- setup


def _init_script() -> bytes:
    return resources.files("governor.sandbox").joinpath("guest-init.sh").read_bytes()


def _initramfs_digest() -> str:
    """What the initramfs is built from, besides the kernel: a change rebuilds it."""
    h = sha256(_init_script())
    h.update(repr((BASE_MODULES, NET_MODULES, INIT_APPLETS, CACHE_FORMAT)).encode())
    return h.hexdigest()


def _dpkg_installed(pkg: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return r.returncode == 0 and r.stdout.strip().endswith(" installed")


def _dpkg_version(pkg: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def _run(argv: Sequence[str], what: str, *, cwd: Path | None = None) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:
        raise SandboxError(f"{what}: {argv[0]} not found ({e})") from e
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise SandboxError(f"{what} failed ({shlex.join(argv)}, exit {r.returncode}):\n{tail}")
    return r.stdout


def _ensure_packages(install: bool, log: Log) -> None:
    missing = [p for p in APT_PACKAGES if not _dpkg_installed(p)]
    # the systemd mode's packages: installed when we can, else only a warning (the bare
    # mode does not need them; `exec --systemd` then names them)
    sd_missing = [p for p in SYSTEMD_APT_PACKAGES if not _dpkg_installed(p)]
    if sd_missing and (not install or os.geteuid() != 0):
        log(
            f"missing {', '.join(sd_missing)}: `governor sandbox exec --systemd` will not "
            f"work until `apt-get install {' '.join(sd_missing)}` is run as root"
        )
        sd_missing = []
    missing += sd_missing
    if not missing:
        return
    cmd = f"apt-get update && apt-get install -y --no-install-recommends {' '.join(missing)}"
    if not install:
        raise SandboxError(f"missing Debian packages {', '.join(missing)}: run `{cmd}` as root")
    if os.geteuid() != 0:
        raise SandboxError(
            f"missing Debian packages {', '.join(missing)}: run `sudo sh -c '{cmd}'`, "
            "then `governor sandbox setup` again"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    _run(["apt-get", "update", "-qq"], "apt-get update")
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        "apt-get install",
    )


def _kernel_package_name(log: Log) -> str:
    """linux-image-amd64 is a meta package: the versioned package it depends on."""
    for attempt in range(2):
        r = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True, text=True, check=False,
        )
        m = re.search(r"Depends:\s*(linux-image-\d\S*)", r.stdout)
        if m:
            return m.group(1)
        if attempt == 0 and os.geteuid() == 0:
            log("apt has no package lists: running apt-get update")
            _run(["apt-get", "update", "-qq"], "apt-get update")
    raise SandboxError(
        "apt does not know linux-image-amd64: run `apt-get update` as root (or set "
        "GOVERNOR_SANDBOX_KERNEL_DEB to a linux-image-*.deb), then `governor sandbox setup`"
    )


def _fetch_kernel_deb(dest: Path, log: Log) -> Path:
    given = os.environ.get("GOVERNOR_SANDBOX_KERNEL_DEB")
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            raise SandboxError(f"GOVERNOR_SANDBOX_KERNEL_DEB={given}: no such file")
        return p
    pkg = _kernel_package_name(log)
    log(f"downloading {pkg} (apt-get download; it is unpacked, not installed)")
    _run(["apt-get", "download", pkg], "apt-get download", cwd=dest)
    debs = sorted(dest.glob(f"{pkg}_*.deb"))
    if not debs:
        raise SandboxError(f"apt-get download {pkg} left no .deb in {dest}")
    return debs[-1]


def _prune_modules(tree: Path) -> None:
    """Keep what a cgroup test may modprobe (block, md, net, virtio, char, fs, net stack)."""
    drivers = tree / "drivers"
    if drivers.is_dir():
        for child in drivers.iterdir():
            if child.name not in KEEP_DRIVERS:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    for rel in PRUNE:
        p = tree / rel
        if p.is_dir():
            shutil.rmtree(p)


def _depmod(root: Path, kver: str) -> None:
    kmod = shutil.which("depmod") or next(
        (p for p in ("/sbin/depmod", "/usr/sbin/depmod") if os.access(p, os.X_OK)), None
    )
    if kmod:  # kmod's depmod also writes the .bin indexes kmod's modprobe wants
        _run([kmod, "-b", str(root), kver], "depmod")
    else:
        _run(["busybox", "depmod", "-b", str(root), kver], "busybox depmod")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        raise SandboxBuildError(f"{path}: zstd-compressed modules are not supported")
    return data


def _busybox() -> Path:
    for cand in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).is_file():
            p = Path(cand).resolve()
            if elf_is_static(p.read_bytes()):
                return p
            raise SandboxError(
                f"{p} is dynamically linked and cannot run in the initramfs: run "
                "`apt-get install busybox-static` as root"
            )
    raise SandboxError("busybox not found: run `apt-get install busybox-static` as root")


def build_initramfs(kernel_root: Path, kver: str) -> bytes:
    """The gzip'd initramfs: static busybox, the boot modules in load order, /init."""
    mods_dir = kernel_root / "lib" / "modules" / kver
    deps = parse_modules_dep((mods_dir / "modules.dep").read_text())
    builtin_file = mods_dir / "modules.builtin"
    builtin = builtin_file.read_text().split() if builtin_file.is_file() else []
    entries = [CpioEntry.directory(d) for d in ("bin", "dev", "proc", "sys", "mods")]
    entries.append(CpioEntry.file("bin/busybox", _busybox().read_bytes(), 0o755))
    entries += [CpioEntry.symlink(f"bin/{a}", "busybox") for a in INIT_APPLETS]
    base = load_order(BASE_MODULES, deps, builtin)
    net = [p for p in load_order(NET_MODULES, deps, builtin) if p not in base]
    for list_name, rels in (("base.list", base), ("net.list", net)):
        names = [Path(rel).name.removesuffix(".xz") for rel in rels]
        for rel, name in zip(rels, names, strict=True):
            entries.append(CpioEntry.file(f"mods/{name}", _read_module(mods_dir / rel)))
        listing = "".join(f"{n}\n" for n in names).encode()
        entries.append(CpioEntry.file(f"mods/{list_name}", listing))
    entries.append(CpioEntry.file("init", _init_script(), 0o755))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


@dataclass(frozen=True)
class Cache:
    """The files :func:`setup` leaves in the cache directory."""

    root: Path

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.root / "initramfs.img"

    @property
    def kernel_root(self) -> Path:
        return self.root / "kernel"

    @property
    def stamp(self) -> Path:
        return self.root / "stamp.json"

    def read_stamp(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def modules_dir(self) -> Path:
        """Bound on the guest's /lib/modules (it holds <release>/, as `uname -r` says)."""
        return self.kernel_root / "lib" / "modules"

    def kernel_ready(self, stamp: Mapping[str, object] | None) -> bool:
        return bool(
            stamp
            and stamp.get("format") == CACHE_FORMAT
            and self.vmlinux.is_file()
            and (self.kernel_root / "lib" / "modules" / str(stamp.get("kernel_release"))).is_dir()
        )

    def ready(self) -> bool:
        stamp = self.read_stamp()
        return bool(
            self.kernel_ready(stamp)
            and stamp
            and stamp.get("initramfs_digest") == _initramfs_digest()
            and self.initramfs.is_file()
        )


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def setup(
    cache_dir: Path | None = None,
    *,
    install_packages: bool = True,
    log: Log | None = None,
) -> Path:
    """Prepare the sandbox cache; return its directory.  Idempotent, quick when done.

    Installs the Debian packages in :data:`APT_PACKAGES` when missing (as root only,
    unless ``install_packages`` is false), downloads and unpacks the kernel package,
    extracts vmlinux, prunes and indexes the modules, builds the initramfs and writes
    ``stamp.json`` with the versions.  A changed guest-init.sh only rebuilds the initramfs.
    """
    say = log or _quiet
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    if cache.ready():
        _ensure_packages(install_packages, say)  # dpkg-query only: cheap
        return cache.root
    _ensure_packages(install_packages, say)
    with _locked(cache.root):
        stamp = cache.read_stamp()
        if cache.ready():
            return cache.root
        if not cache.kernel_ready(stamp):
            stamp = _setup_kernel(cache, say)
        assert stamp is not None
        kver = str(stamp["kernel_release"])
        say("building the initramfs")
        _write_atomic(cache.initramfs, build_initramfs(cache.kernel_root, kver))
        stamp = {
            **stamp,
            "initramfs_digest": _initramfs_digest(),
            "busybox": _dpkg_version("busybox-static"),
            "qemu": _dpkg_version("qemu-system-x86"),
            "systemd": _dpkg_version("systemd"),
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_atomic(cache.stamp, (json.dumps(stamp, indent=2) + "\n").encode())
    return cache.root


def _setup_kernel(cache: Cache, say: Log) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=cache.root) as tmpname:
        tmp = Path(tmpname)
        deb = _fetch_kernel_deb(tmp, say)
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], "dpkg-deb -f")
        info = dict(
            line.split(": ", 1) for line in fields.strip().splitlines() if ": " in line
        )
        say(f"unpacking {deb.name}")
        unpacked = tmp / "kernel"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], "dpkg-deb -x")
        releases = sorted(p.name for p in (unpacked / "lib" / "modules").iterdir())
        if len(releases) != 1:
            raise SandboxError(f"{deb.name}: expected one lib/modules/<release>, got {releases}")
        kver = releases[0]
        images = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not images:
            raise SandboxError(f"{deb.name}: no boot/vmlinuz-*")
        say("extracting the uncompressed vmlinux")
        _write_atomic(tmp / "vmlinux", extract_vmlinux(images[0].read_bytes()))
        shutil.rmtree(unpacked / "boot")
        _prune_modules(unpacked / "lib" / "modules" / kver / "kernel")
        say("indexing the modules (depmod)")
        _depmod(unpacked, kver)
        # swap in the new kernel tree and vmlinux, then forget the old stamp
        cache.stamp.unlink(missing_ok=True)
        if cache.kernel_root.exists():
            shutil.rmtree(cache.kernel_root)
        unpacked.rename(cache.kernel_root)
        (tmp / "vmlinux").replace(cache.vmlinux)
    return {
        "format": CACHE_FORMAT,
        "kernel_package": info.get("Package", "unknown"),
        "kernel_version": info.get("Version", "unknown"),
        "kernel_release": kver,
    }


# --------------------------------------------------------------------------- exec


@dataclass(frozen=True)
class BootSpec:
    """Everything that decides the QEMU command line (pure data, see :func:`qemu_argv`)."""

    qemu: str
    vmlinux: Path
    initramfs: Path
    workdir: Path
    mem_mb: int = 1024
    cpus: int = 2
    disk: Path | None = None
    rwdirs: tuple[Path, ...] = ()
    port_forwards: tuple[tuple[int, int], ...] = ()
    verbose: bool = False
    systemd: bool = False
    append: str = ""
    extra: tuple[str, ...] = field(default=())


KERNEL_CMDLINE = (
    "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable no_timer_check "
    "i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests rdinit=/init"
)


def qemu_argv(spec: BootSpec) -> list[str]:
    """The QEMU command line for ``spec`` (TCG only: KVM is never tried)."""
    append = KERNEL_CMDLINE + ("" if spec.verbose else " quiet loglevel=3")
    if spec.systemd:
        # `quiet` keeps systemd's status lines off the console too; --verbose shows them
        append += " " + SYSTEMD_CMDLINE + (" systemd.show_status=1" if spec.verbose else "")
    if spec.append:
        append += " " + spec.append
    w = spec.workdir
    argv = [
        spec.qemu,
        "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", str(spec.mem_mb), "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(spec.vmlinux), "-initrd", str(spec.initramfs),
        "-append", append,
        "-serial", f"file:{w / 'console.log'}",
        "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev", f"local,id=fsrun,path={_qemu_opt(w)},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=gout,path={_qemu_opt(w / 'out')},append=on",
        "-device", "virtserialport,chardev=gout,name=vm.out",
        "-chardev", f"file,id=gerr,path={_qemu_opt(w / 'err')},append=on",
        "-device", "virtserialport,chardev=gerr,name=vm.err",
    ]
    for i, d in enumerate(spec.rwdirs):
        argv += [
            "-fsdev", f"local,id=fsrw{i},path={_qemu_opt(d)},security_model=none,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=fsrw{i},mount_tag=rw{i}",
        ]
    if spec.disk is not None:
        argv += [
            "-drive", f"if=none,id=d0,file={_qemu_opt(spec.disk)},format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0",
        ]
    if spec.port_forwards:
        fwd = "".join(
            f",hostfwd=tcp:127.0.0.1:{h}-{GUEST_ADDR}:{g}" for h, g in spec.port_forwards
        )
        argv += [
            "-netdev", f"user,id=n0,restrict=on{fwd}",
            "-device", "virtio-net-pci,netdev=n0",
        ]
    return argv + list(spec.extra)


def _qemu_opt(p: Path) -> str:
    """A path inside a QEMU -opt=value list: commas are escaped by doubling."""
    return str(p).replace(",", ",,")


def _check_guest_path(p: Path, what: str) -> None:
    s = str(p)
    if "\n" in s or s != s.strip() or not p.is_absolute():
        raise SandboxError(
            f"{what} {s!r}: must be an absolute path without newlines or edge spaces"
        )


def tmp_keep(candidates: Sequence[str]) -> tuple[list[str], bool]:
    """Which host paths under /tmp stay visible over the guest's fresh /tmp tmpfs.

    ``candidates`` are the paths the run depends on (the working directory, absolute
    command arguments, PATH entries): for each under /tmp, its first component below /tmp
    (``/tmp/clone/.venv/bin`` -> ``/tmp/clone``) when that exists on the host.  Returns
    those and whether /tmp gets a tmpfs at all (not when a candidate is /tmp itself).
    """
    keep: list[str] = []
    tmpfs = True
    for c in candidates:
        if not c.startswith("/"):
            continue
        p = os.path.normpath(c)
        if p == "/tmp":
            tmpfs = False
        elif p.startswith("/tmp/"):
            top = "/tmp/" + p.split("/")[2]
            if top not in keep and os.path.lexists(top) and "\n" not in top:
                keep.append(top)
    return keep, tmpfs


def guest_config(
    *,
    cwd: Path,
    modules_dir: Path,
    net: bool,
    rwdirs: Sequence[Path],
    keep: Sequence[str] = (),
    tmpfs: bool = True,
    systemd: bool = False,
) -> tuple[str, str, str]:
    """The ``config`` (sourced by the guest init), ``rwdirs`` and ``keep`` files of a run."""
    _check_guest_path(cwd, "working directory")
    config = "".join(
        f"{k}={shlex.quote(v)}\n"
        for k, v in (
            ("VM_CWD", str(cwd)),
            ("VM_MODULES_DIR", str(modules_dir)),
            ("VM_NET", "1" if net else "0"),
            ("VM_HOSTNAME", "governor-sandbox"),
            ("VM_TMPFS", "1" if tmpfs else "0"),
            ("VM_SYSTEMD", "1" if systemd else "0"),
            ("VM_SYSTEMD_BIN", SYSTEMD_BIN),
        )
    )
    lines = []
    for i, d in enumerate(rwdirs):
        _check_guest_path(d, "read-write directory")
        lines.append(f"rw{i} {d}\n")
    for k in keep:
        _check_guest_path(Path(k), "path kept under /tmp")
    return config, "".join(lines), "".join(f"{k}\n" for k in keep)


def command_script(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], path: str, home: str
) -> str:
    """The bash script the guest runs: exports, ``cd``, then ``exec`` of ``argv``."""
    if not argv:
        raise SandboxError("no command given")
    exports: dict[str, str] = {"PATH": path, "HOME": home, "LANG": "C.UTF-8", "TERM": "dumb"}
    for k, v in env.items():
        if not _ENV_NAME.match(k):
            raise SandboxError(f"invalid environment variable name {k!r}")
        exports[k] = v
    exports["GOVERNOR_SANDBOX"] = "1"
    lines = ["# generated by governor.sandbox: the command, as the guest runs it"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    c = shlex.quote(str(cwd))
    lines.append(
        f"cd -- {c} 2>/dev/null || {{ echo \"governor sandbox: cannot enter \"{c}\" in the "
        f"guest, running in /\" >&2; cd /; }}"
    )
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


#: where the guest sees the run directory (the host's ``workdir``, 9p tag ``vmrun``)
GUEST_RUN_DIR = "/run/governor-sandbox"


def systemd_units(run_dir: str = GUEST_RUN_DIR) -> dict[str, str]:
    """The unit files of the systemd mode: file name in /etc/systemd/system -> text.

    ``governor-sandbox.target`` (the boot target, ``systemd.unit=`` on the kernel command
    line) pulls the service, which pulls the journald and D-Bus sockets (so sysinit) and
    ``dbus.service``; it runs the wrapper of
    :func:`systemd_service_script` with its output on the virtio-serial ports, and powers
    the guest off when it ends, whatever the outcome.  It stays off basic.target and
    multi-user.target, which would start the host's timers and services.
    """
    target = (
        "# generated by governor.sandbox: the boot target of `governor sandbox exec --systemd`\n"
        "[Unit]\n"
        "Description=governor sandbox: the command and what it needs\n"
        f"Requires={SYSTEMD_SERVICE}\n"
        f"After={SYSTEMD_SERVICE}\n"
        "AllowIsolate=yes\n"
    )
    service = (
        "# generated by governor.sandbox: runs the command of `governor sandbox exec --systemd`\n"
        "[Unit]\n"
        "Description=governor sandbox: the command\n"
        "DefaultDependencies=no\n"
        "Wants=systemd-journald.socket dbus.socket dbus.service\n"
        "After=systemd-journald.socket dbus.socket\n"
        "SuccessAction=poweroff-force\n"
        "FailureAction=poweroff-force\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart=/bin/bash {run_dir}/service.sh\n"
        "StandardInput=null\n"
        "StandardOutput=file:/dev/virtio-ports/vm.out\n"
        "StandardError=file:/dev/virtio-ports/vm.err\n"
        # as in the bare mode: SIGPIPE default, no task limit, an OOM kill in a test's
        # cgroup does not stop the run, and the command may manage its own cgroup subtree
        "IgnoreSIGPIPE=no\n"
        "TasksMax=infinity\n"
        "OOMPolicy=continue\n"
        "Delegate=yes\n"
    )
    return {SYSTEMD_TARGET: target, SYSTEMD_SERVICE: service}


def systemd_service_script(
    run_dir: str = GUEST_RUN_DIR,
    boot_wait: float = SYSTEMD_BOOT_WAIT,
    console: str = "/dev/console",
) -> str:
    """The service's main process: waits for the boot to finish, runs ``cmd.sh`` as the
    bare mode does (``env -i``, stdin /dev/null), writes its exit code to ``rc``, exits
    with it.  Its progress goes to ``console``, as the guest init's does."""
    r = shlex.quote(run_dir)
    c = shlex.quote(console)
    return (
        "#!/bin/bash\n"
        "# generated by governor.sandbox: the main process of " + SYSTEMD_SERVICE + "\n"
        "log() { echo \"sandbox-init: $(cut -d' ' -f1 /proc/uptime)s $*\" >>" + c + "; }\n"
        "log unit-started\n"
        "# the rest of the boot transaction (dbus.service, ...) finishes while bash starts\n"
        f"state=$(timeout {boot_wait:g} systemctl is-system-running --wait 2>/dev/null)\n"
        'log "cmd-start (system ${state:-still starting})"\n'
        f"/usr/bin/env -i /bin/bash {r}/cmd.sh </dev/null\n"
        "rc=$?\n"
        f'echo "$rc" > {r}/rc.tmp && mv {r}/rc.tmp {r}/rc\n'
        'log "cmd-done rc=$rc"\n'
        'exit "$rc"\n'
    )


def host_generators(directory: Path = SYSTEMD_GENERATORS_DIR) -> list[str]:
    """The generators of the host's systemd (sorted names; none when it has no such dir)."""
    try:
        return sorted(p.name for p in directory.iterdir())
    except OSError:
        return []


def write_systemd_files(work: Path, generators: Sequence[str] = ()) -> None:
    """The systemd mode's files in the run directory, copied by the guest init into the
    overlay's /etc before the switch: ``systemd/units/`` (units, masks as symlinks to
    /dev/null), ``systemd/etc/`` (masked tmpfiles.d rules and ``generators`` but
    :data:`SYSTEMD_KEPT_GENERATORS`) and ``service.sh``."""
    units = work / "systemd" / "units"
    units.mkdir(parents=True)
    for name, text in systemd_units().items():
        (units / name).write_text(text)
    for name in SYSTEMD_MASKED:
        (units / name).symlink_to("/dev/null")
    tmpfiles = work / "systemd" / "etc" / "tmpfiles.d"
    tmpfiles.mkdir(parents=True)
    for name in SYSTEMD_MASKED_TMPFILES:
        (tmpfiles / name).symlink_to("/dev/null")
    gens = work / "systemd" / "etc" / "systemd" / "system-generators"
    gens.mkdir(parents=True)
    for name in generators:
        if name not in SYSTEMD_KEPT_GENERATORS and "/" not in name:
            (gens / name).symlink_to("/dev/null")
    (work / "service.sh").write_text(systemd_service_script())


def _check_systemd_host() -> None:
    missing = [
        what for what, path in (("systemd", SYSTEMD_BIN), ("dbus", "/usr/bin/dbus-daemon"))
        if not os.access(path, os.X_OK)
    ]
    if missing:
        raise SandboxNotReady(
            f"--systemd boots the host's own systemd and D-Bus, and {', '.join(missing)} "
            f"is missing here: run `apt-get install {' '.join(missing)}` as root (or "
            "`governor sandbox setup` as root)"
        )


class _Tail(threading.Thread):
    """Follows a file QEMU appends to and copies what arrives to ``sink`` (a byte stream)."""

    def __init__(self, path: Path, sink: IO[bytes], prefix: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sink = sink
        self.prefix = prefix
        self.done = threading.Event()

    def run(self) -> None:
        with self.path.open("rb") as f:
            while True:
                finished = self.done.is_set()
                data = f.read(65536)
                if data:
                    self._emit(data)
                    continue
                if finished:
                    return
                self.done.wait(0.05)

    def _emit(self, data: bytes) -> None:
        if self.prefix:
            data = b"".join(self.prefix + ln for ln in data.splitlines(keepends=True))
        try:
            self.sink.write(data)
            self.sink.flush()
        except (OSError, ValueError):  # our own stdout went away: keep draining
            pass


def _binary(stream: IO[str] | IO[bytes]) -> IO[bytes]:
    buf = getattr(stream, "buffer", None)
    return buf if buf is not None else stream  # type: ignore[return-value]


def exec_(
    argv: Sequence[str],
    *,
    cache_dir: Path | None = None,
    rwdirs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    mem_mb: int = 1024,
    cpus: int = 2,
    disk_mb: int = 256,
    timeout: float = 600,
    verbose: bool = False,
    port_forwards: Sequence[tuple[int, int]] = (),
    cwd: Path | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    systemd: bool = False,
) -> int:
    """Run ``argv`` as root inside a fresh sandbox guest; return its exit code.

    See the module docstring for what the guest looks like; 124 = timed out after
    ``timeout`` seconds, 125 = the guest reported no exit code (console tail on stderr).
    ``systemd=True``: the guest boots systemd as PID 1 and runs ``argv`` as a service.
    """
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    if not cache.ready():
        raise SandboxNotReady(
            f"the sandbox in {cache.root} is not set up or out of date: "
            "run `governor sandbox setup`"
        )
    qemu = os.environ.get("GOVERNOR_SANDBOX_QEMU") or shutil.which("qemu-system-x86_64")
    if not qemu:
        raise SandboxError(
            "qemu-system-x86_64 not found: run `apt-get install qemu-system-x86` as root "
            "(or `governor sandbox setup`)"
        )
    if systemd:
        _check_systemd_host()
    if mem_mb < 128 or cpus < 1 or disk_mb < 0 or timeout <= 0:
        raise SandboxError(
            f"bad VM size: mem {mem_mb} MiB (>= 128), cpus {cpus} (>= 1), "
            f"disk {disk_mb} MiB (>= 0), timeout {timeout}s (> 0)"
        )
    for h, g in port_forwards:
        if not (0 < h < 65536 and 0 < g < 65536):
            raise SandboxError(f"bad port forward {h}->{g}: ports are 1..65535")
    rw = []
    for d in rwdirs:
        p = Path(d).resolve()
        if not p.is_dir():
            raise SandboxError(f"read-write directory {d} does not exist (or is not a directory)")
        rw.append(p)
    here = Path(cwd).resolve() if cwd else Path.cwd()
    out_sink = stdout or _binary(sys.stdout)
    err_sink = stderr or _binary(sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="governor-sandbox-"))
    try:
        host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        keep, tmpfs = tmp_keep([str(here), *argv, *host_path.split(":")])
        config, rwlist, keeplist = guest_config(
            cwd=here,
            modules_dir=cache.modules_dir(),
            net=bool(port_forwards),
            rwdirs=rw,
            keep=keep,
            tmpfs=tmpfs,
            systemd=systemd,
        )
        (work / "config").write_text(config)
        (work / "rwdirs").write_text(rwlist)
        (work / "keep").write_text(keeplist)
        (work / "cmd.sh").write_text(
            command_script(
                argv,
                cwd=here,
                env=env or {},
                path=host_path,
                home=os.environ.get("HOME", "/root"),
            )
        )
        if systemd:
            write_systemd_files(work, host_generators())
        for name in ("out", "err", "console.log"):
            (work / name).touch()
        disk = None
        if disk_mb:
            disk = work / "disk.img"
            with disk.open("wb") as f:
                f.truncate(disk_mb * 1024 * 1024)
        spec = BootSpec(
            qemu=qemu,
            vmlinux=cache.vmlinux,
            initramfs=cache.initramfs,
            workdir=work,
            mem_mb=mem_mb,
            cpus=cpus,
            disk=disk,
            rwdirs=tuple(rw),
            port_forwards=tuple(port_forwards),
            verbose=verbose,
            systemd=systemd,
            append=os.environ.get("GOVERNOR_SANDBOX_APPEND", ""),
        )
        return _boot(spec, timeout, out_sink, err_sink)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot(spec: BootSpec, timeout: float, out_sink: IO[bytes], err_sink: IO[bytes]) -> int:
    work = spec.workdir
    tails = [_Tail(work / "out", out_sink), _Tail(work / "err", err_sink)]
    if spec.verbose:
        tails.append(_Tail(work / "console.log", err_sink, prefix=b"[guest] "))
    for t in tails:
        t.start()
    qemu_log = (work / "qemu.log").open("wb")
    t0 = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(
            qemu_argv(spec), stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log
        )
        try:
            qrc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            qrc = proc.wait()
        except BaseException:  # Ctrl-C: never leave a QEMU behind
            proc.kill()
            proc.wait()
            raise
    finally:
        qemu_log.close()
        for t in tails:
            t.done.set()
        for t in tails:
            t.join(timeout=10)
    elapsed = time.monotonic() - t0
    rc_text = _read(work / "rc").strip()
    if rc_text.isdigit() and not timed_out:
        return int(rc_text)

    def say(msg: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            err_sink.write(msg.encode(errors="replace"))
            err_sink.flush()

    if timed_out:
        say(f"governor sandbox: timed out after {timeout:g}s; QEMU killed\n")
        return EXIT_TIMEOUT
    say(
        f"governor sandbox: the guest reported no exit code (QEMU exit {qrc} after "
        f"{elapsed:.1f}s)\n"
    )
    qlog = _read(work / "qemu.log").strip()
    if qlog:
        say("--- QEMU said:\n" + "\n".join(qlog.splitlines()[-20:]) + "\n")
    console = _read(work / "console.log").splitlines()
    say("--- guest console (last 30 lines):\n" + "\n".join(console[-30:]) + "\n")
    return EXIT_NO_STATUS


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""
