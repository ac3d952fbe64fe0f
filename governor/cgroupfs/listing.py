"""Listing the tenants and groups of a subtree: once (:func:`managed_groups`), or at every
pass with the listing kept until inotify reports a change (:class:`GroupLister`, the
sampler's)."""

from __future__ import annotations

import contextlib
import os

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.inotify import DIR_CHANGES, Inotify
from governor.cgroupfs.layout import Layout, as_layout
from governor.errors import CgroupError


def managed_groups(fs: CgroupFS, subtree: Layout | str) -> list[str]:
    """Tenants and their groups below ``subtree`` (a layout, or the subtree of the
    ``cgroupfs`` layout), as logical paths (``tenant``, ``tenant/group``), tenants first;
    see :meth:`Layout.groups`."""
    return as_layout(subtree).groups(fs)


class GroupLister:
    """:func:`managed_groups` for a caller that lists at every pass (the sampler): the
    listing is kept while inotify reports nothing made, removed or renamed in the subtree
    or a tenant, so an unchanged tree costs one read(2) a pass instead of listing every
    directory (on cgroup2 a listing also walks each group's interface files).

    The watches are armed *before* each listing, so a change made while listing is seen
    at the next call; a full event queue (IN_Q_OVERFLOW), a removed or renamed directory
    and any other event make the next call list again.  Without inotify (no instances
    left, a kernel without it) every call lists.  A watch is added through
    ``/proc/self/fd`` of a directory opened beneath the cgroup root, like every other
    access.  Not thread-safe: one caller.
    """

    def __init__(self, fs: CgroupFS, subtree: Layout | str) -> None:
        self.fs = fs
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        self.relists = 0
        self._cache: list[str] | None = None
        self._ino: Inotify | None
        try:
            self._ino = Inotify()
        except OSError:
            self._ino = None

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    def _watch(self, rel: str) -> bool:
        assert self._ino is not None
        try:
            fd = self.fs.open(rel, None, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            self._ino.add(f"/proc/self/fd/{fd}", DIR_CHANGES)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def list(self) -> list[str]:
        if self._ino is None:
            return self.layout.groups(self.fs)
        if self._cache is not None and not self._ino.read():
            return list(self._cache)
        self._ino.read()  # what is queued is about to be looked at
        self.relists += 1
        if not self._watch(self.subtree):
            self._cache = None  # no subtree (yet): nothing to watch, list each time
            return self.layout.groups(self.fs)
        out: list[str] = []
        complete = True
        for d in self.fs.children(self.subtree):
            t = self.layout.tenant_of_dir(d)
            if t is None:
                continue
            complete &= self._watch(f"{self.subtree}/{d}")
            out.append(t)
            with contextlib.suppress(CgroupError):
                out.extend(f"{t}/{g}" for g in self.layout.groups_of_tenant(self.fs, t, d))
        self._cache = out if complete else None
        return list(out)

