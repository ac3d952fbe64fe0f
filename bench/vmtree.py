"""The groups of the benchmarks that read a real tree in the VM as ``daemon_cost`` has it
(store_floor, read_env): N groups in tenants of 100 under a scratch subtree of the VM's
cgroup2 root, the managed controllers enabled, one sleeping process per tenant."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.tree import create, move, remove


@contextmanager
def tenants_of_100(fs: CgroupFS, groups: int, *, prefix: str) -> Iterator[str]:
    """Make the groups (``PREFIX-xxxxxxxx/t00/g000`` ...) and yield the scratch subtree's
    name; afterwards the sleepers are killed and the subtree removed, whatever happened."""
    scratch = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(groups):
            t, g = divmod(i, 100)
            rel = f"{scratch}/t{t:02d}/g{g:03d}"
            create(fs, rel, MANAGED_CONTROLLERS)
            if g == 0:
                proc = subprocess.Popen(["sleep", "3600"])
                sleepers.append(proc)
                move(fs, rel, proc.pid)
        yield scratch
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
        remove(fs, scratch)
