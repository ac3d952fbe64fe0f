"""A throw-away QEMU guest with a real cgroup v2 kernel, for the tests that need one.

``governor sandbox setup`` prepares it once; ``governor sandbox exec -- CMD`` boots it and
runs CMD inside (see :mod:`governor.sandbox.vm` for what the guest looks like and its knobs).
The host's own ``/sys/fs/cgroup`` is never touched.
"""

from governor.sandbox.detect import in_sandbox, is_cgroup2_mount
from governor.sandbox.vm import (
    SandboxError,
    SandboxNotReady,
    default_cache_dir,
    exec_,
    setup,
)

__all__ = [
    "SandboxError",
    "SandboxNotReady",
    "default_cache_dir",
    "exec_",
    "in_sandbox",
    "is_cgroup2_mount",
    "setup",
]
