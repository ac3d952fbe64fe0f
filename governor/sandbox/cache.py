"""The sandbox cache directory: where it is, what :func:`governor.sandbox.build.setup`
leaves in it, and whether it is ready (the stamp and what the initramfs is built from)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from importlib import resources
from pathlib import Path

__all__ = ["CACHE_FORMAT", "Cache", "default_cache_dir", "initramfs_digest"]

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
#: bump when the cache layout changes in a way the stamp cannot see
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("GOVERNOR_SANDBOX_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "governor" / "sandbox"


def init_script() -> bytes:
    return resources.files("governor.sandbox").joinpath("guest-init.sh").read_bytes()


def initramfs_digest() -> str:
    """What the initramfs is built from, besides the kernel: a change rebuilds it."""
    h = sha256(init_script())
    h.update(repr((BASE_MODULES, NET_MODULES, INIT_APPLETS, CACHE_FORMAT)).encode())
    return h.hexdigest()


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
            and stamp.get("initramfs_digest") == initramfs_digest()
            and self.initramfs.is_file()
        )
