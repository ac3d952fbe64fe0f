"""Am I inside the sandbox guest?  Used by the test suite before touching /sys/fs/cgroup.

Both must hold: the guest init exported ``GOVERNOR_SANDBOX=1`` to the command, and
``/sys/fs/cgroup`` is a cgroup2 mount (statfs ``f_type`` == ``CGROUP2_SUPER_MAGIC``).  A
host with a cgroup v1 or hybrid tree fails the second test, a pure-v2 host the first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_ROOT = Path("/sys/fs/cgroup")


def statfs_type(path: str | os.PathLike[str]) -> int:
    """The ``f_type`` of the filesystem holding ``path`` (``OSError`` when statfs fails)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # struct statfs is 120 bytes on x86-64 and begins with f_type (a long): a buffer of
    # longs large enough for any architecture's layout, read at index 0
    buf = (ctypes.c_long * 32)()
    if libc.statfs(os.fsencode(os.fspath(path)), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(path))
    return int(buf[0]) & 0xFFFFFFFF


def is_cgroup2_mount(path: str | os.PathLike[str] = CGROUP_ROOT) -> bool:
    """True when ``path`` is on a cgroup2 filesystem; False when not, or when it is absent."""
    try:
        return statfs_type(path) == CGROUP2_SUPER_MAGIC
    except OSError:
        return False


def sandbox_env() -> bool:
    """True when the guest init marked the environment (``GOVERNOR_SANDBOX=1``)."""
    return os.environ.get("GOVERNOR_SANDBOX") == "1"


def in_sandbox() -> bool:
    """True only inside the sandbox guest with its pure cgroup2 hierarchy mounted."""
    return sandbox_env() and is_cgroup2_mount(CGROUP_ROOT)
