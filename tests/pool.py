"""The writable-layer pool of a test's state directory (governor.image.writable) on the
sandbox's kernel: a loop-mounted ext4 with project quotas."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from governor.image.writable import Pool

#: the modules the writable-layer pool needs (loop device, ext4 with its crc32c and the
#: quota format of ext4's hidden quota files); the sandbox has no kmod for the kernel's own
#: request_module, so they are loaded with busybox
POOL_MODULES = ("loop", "crc32c_generic", "ext4", "quota_v2")


def load_pool_modules() -> None:
    """Load what a loop-mounted ext4 with project quotas needs (inside the sandbox)."""
    for m in POOL_MODULES:
        # built in, or already loaded: busybox modprobe says so and exits 0 or 1
        subprocess.run(["busybox", "modprobe", m], check=False, capture_output=True)
    assert "ext4" in Path("/proc/filesystems").read_text(), "ext4 did not load"
    assert Path("/dev/loop-control").exists(), "the loop driver did not load"


@contextlib.contextmanager
def writable_pool(state: Path, size: int = 256 << 20) -> Iterator[Pool]:
    """``state``'s containers' pool (governor.image.writable.Pool) made and mounted,
    unmounted after (lazily: a container's mount namespace may still hold it)."""
    load_pool_modules()
    pool = Pool(str(state), size)
    pool.ensure()
    try:
        yield pool
    finally:
        subprocess.run(["umount", "-l", pool.containers], check=False, capture_output=True)
