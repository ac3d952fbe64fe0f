"""What governor manages in a cgroup tree, named once for every layer that needs it (the
tree's writer, the mount check, the planner, the drivers and doctor)."""

from __future__ import annotations

#: the controllers governor manages (cgroup-v2.rst "Controllers")
MANAGED_CONTROLLERS = ("cpu", "io", "memory", "pids")

#: the extended attribute systemd (>= 251) puts on the cgroup of a unit with Delegate=yes
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
