"""``governor sandbox setup``: fill the cache once (idempotent, a quick no-op afterwards).

Debian's ``linux-image-amd64`` kernel package, downloaded with ``apt-get download`` and
unpacked with ``dpkg -x`` (never installed), its uncompressed ``vmlinux``, a pruned and
depmod-indexed module tree, and a busybox initramfs with ``guest-init.sh`` as ``/init``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from governor.sandbox.cache import (
    BASE_MODULES,
    CACHE_FORMAT,
    INIT_APPLETS,
    NET_MODULES,
    Cache,
    default_cache_dir,
    init_script,
    initramfs_digest,
)
from governor.sandbox.errors import SandboxError
from governor.sandbox.host import Log, dpkg_version, ensure_packages, run_tool
from governor.sandbox.initramfs import (
    CpioEntry,
    SandboxBuildError,
    cpio_newc,
    elf_is_static,
    extract_vmlinux,
    load_order,
    parse_modules_dep,
)

__all__ = ["build_initramfs", "setup"]

#: module subtrees kept (relative to lib/modules/KVER/kernel); the rest is pruned
KEEP_DRIVERS = ("block", "char", "md", "net", "virtio")
PRUNE = (
    "sound", "drivers/net/wireless", "drivers/net/ethernet", "drivers/net/can",
    "drivers/net/usb", "drivers/net/wwan", "net/bluetooth", "net/mac80211", "net/wireless",
)


def _quiet(_: str) -> None:
    return None


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
            run_tool(["apt-get", "update", "-qq"], "apt-get update")
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
    run_tool(["apt-get", "download", pkg], "apt-get download", cwd=dest)
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
        run_tool([kmod, "-b", str(root), kver], "depmod")
    else:
        run_tool(["busybox", "depmod", "-b", str(root), kver], "busybox depmod")


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
    entries.append(CpioEntry.file("init", init_script(), 0o755))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


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
        ensure_packages(install_packages, say)  # dpkg-query only: cheap
        return cache.root
    ensure_packages(install_packages, say)
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
            "initramfs_digest": initramfs_digest(),
            "busybox": dpkg_version("busybox-static"),
            "qemu": dpkg_version("qemu-system-x86"),
            "systemd": dpkg_version("systemd"),
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_atomic(cache.stamp, (json.dumps(stamp, indent=2) + "\n").encode())
    return cache.root


def _setup_kernel(cache: Cache, say: Log) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=cache.root) as tmpname:
        tmp = Path(tmpname)
        deb = _fetch_kernel_deb(tmp, say)
        fields = run_tool(["dpkg-deb", "-f", str(deb), "Package", "Version"], "dpkg-deb -f")
        info = dict(
            line.split(": ", 1) for line in fields.strip().splitlines() if ": " in line
        )
        say(f"unpacking {deb.name}")
        unpacked = tmp / "kernel"
        run_tool(["dpkg-deb", "-x", str(deb), str(unpacked)], "dpkg-deb -x")
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
