"""Where the policy's tenants and groups live in the cgroup tree.

Every other module names a group by its *logical* path below the governor's subtree
(``tenant`` or ``tenant/group``, as in the policy, the samples and the bills).  A layout
turns that into the directory below the cgroup mount and back:

* :class:`Layout` (the ``cgroupfs`` driver): the directories are named as in the policy,
  ``<subtree>/<tenant>/<group>``; placed processes go into the group's own directory.
* ``governor.systemd.units.SliceLayout`` (the ``systemd`` driver): every tenant and group
  is a slice unit named by systemd's rules (``governor.slice/governor-acme.slice/
  governor-acme-web.slice``), and processes live in scopes below their group's slice.

The read path (sampler, OOM watch, status, ``ps``) lists groups through the layout, so a
directory that is no group of this layout (a scope, a foreign child) is never taken for
one.  A directory name the policy could not hold (``web 2``, a runtime's long scope name,
bytes that are not UTF-8) is data: it is listed under its key
(:func:`~governor.cgroupfs.names.escape_name`) and found again by it (issue #15).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from governor.cgroupfs.names import escape_name, unescape_relpath
from governor.errors import CgroupError, GroupGone

if TYPE_CHECKING:
    from governor.cgroupfs.files import CgroupFS


class Layout:
    """The ``cgroupfs`` layout: ``<subtree>/<tenant>/<group>``, named as in the policy."""

    #: the cgroup driver this layout belongs to (what ``governor doctor`` reports)
    driver = "cgroupfs"
    #: whether governor writes ``cgroup.subtree_control`` itself (systemd does it for
    #: its slices when a unit asks for accounting)
    manages_controllers = True
    #: whether governor makes the directories itself (and marks them: only a marked one is
    #: ever removed); systemd makes its slices, which governor knows by the names it built
    makes_dirs = True

    def __init__(self, subtree: str) -> None:
        self.subtree = subtree.strip("/")
        self._prefix = f"/{self.subtree}/"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.subtree!r})"

    # -- logical -> physical -----------------------------------------------------------
    def path(self, rel: str) -> str:
        """``tenant`` or ``tenant/group`` (keys) -> its directory relative to the cgroup
        mount (``""`` -> the subtree itself); InvalidName for a key no directory has."""
        return f"{self.subtree}/{unescape_relpath(rel)}" if rel else self.subtree

    def placement_path(self, rel: str) -> str:
        """Where processes placed into group ``rel`` are written (its ``cgroup.procs``)."""
        return self.path(rel)

    def sample_prefix(self, paths: list[str]) -> str | dict[str, str]:
        """What the sampler's fast loop prepends to a logical path to find its directory:
        a string prefix here; a mapping when directory names are not the logical ones
        (some key is escaped: ``\\xNN`` or cut)."""
        if any("\\" in p or "~" in p for p in paths):
            return {p: self.path(p) for p in paths}
        return f"{self.subtree}/"

    def unsettable(self, file: str) -> str | None:
        """Why the driver cannot set ``file`` on a group (None: it can)."""
        return None

    # -- physical -> logical -----------------------------------------------------------
    def is_group_dir(self, dirname: str) -> bool:
        """Whether a directory below the subtree can be a tenant or group of this layout
        (the plan removes those that left the policy, and nothing else)."""
        return True

    def tenant_of_dir(self, dirname: str) -> str | None:
        """A child directory of the subtree -> the tenant it is (None: not a tenant)."""
        return escape_name(dirname)

    def group_of_dir(self, tenant: str, dirname: str) -> str | None:
        """A child directory of a tenant's directory -> the group name (None: not one)."""
        return escape_name(dirname)

    def group_of(self, cgroup_path: str) -> str | None:
        """A process's cgroup (``/proc/PID/cgroup``, ``/``-rooted) -> the logical path
        below the subtree it is in, as keys (None when outside the subtree)."""
        if cgroup_path.startswith(self._prefix):
            rest = cgroup_path[len(self._prefix):]
            return "/".join(escape_name(p) for p in rest.split("/")) if rest else rest
        return None

    def placed(self, cgroup_path: str, target: str) -> bool:
        """Whether a process in ``cgroup_path`` is already where placement into ``target``
        (``tenant/group``) would put it."""
        return cgroup_path == f"/{self.subtree}/{target}"

    def managed(self, cgroup_path: str) -> bool:
        """Whether ``cgroup_path`` is the subtree or inside it."""
        return cgroup_path.startswith(self._prefix) or cgroup_path == self._prefix[:-1]

    # -- listing -------------------------------------------------------------------------
    def groups(self, fs: CgroupFS) -> list[str]:
        """Tenants and their groups that exist (logical paths), tenants first.  A subtree
        that is gone (or not made yet) lists as empty and other errors on it are raised;
        a tenant whose groups cannot be listed (gone meanwhile, or unreadable) is listed
        without them, so one bad tenant never hides the others from the sampler."""
        out: list[str] = []
        try:
            dirs = fs.children(self.subtree)
        except GroupGone:
            return out
        for d in dirs:
            t = self.tenant_of_dir(d)
            if t is None:
                continue
            out.append(t)
            with contextlib.suppress(CgroupError):
                out.extend(f"{t}/{g}" for g in self.groups_of_tenant(fs, t, d))
        return out

    def groups_of_tenant(self, fs: CgroupFS, tenant: str, dirname: str) -> list[str]:
        """The group names of ``tenant`` whose directory is ``dirname`` (raises
        :class:`CgroupError` when it cannot be listed)."""
        out = []
        for d in fs.children(f"{self.subtree}/{dirname}"):
            g = self.group_of_dir(tenant, d)
            if g is not None:
                out.append(g)
        return out


def as_layout(where: Layout | str) -> Layout:
    """A layout as is; a subtree name as the ``cgroupfs`` layout of that subtree."""
    return where if isinstance(where, Layout) else Layout(where)
