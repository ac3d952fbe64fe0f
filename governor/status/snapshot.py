"""Reading a :class:`~governor.status.view.Snapshot`: every tenant and group below the
subtree, raw stats and limit files, through the fd-caching reader.

The same :class:`~governor.cgroupfs.reader.StatReader` serves both reads of a pair, so a
group removed in between answers ENODEV on its open descriptors and is left out of the
second snapshot (shown as gone), never read as zeros.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.parse import parse_cpu_max
from governor.cgroupfs.reader import StatReader
from governor.controllers.base import Host, ValueReadError
from governor.controllers.registry import generic
from governor.errors import CgroupError, GroupGone
from governor.status.view import GroupRead, Limits, Snapshot

#: the writable layers' bytes of the containers launched from images in a group, by its path
#: ("tenant" or "tenant/group"), summed; None when not measured (or it could not be read:
#: missing is not zero).  Given by the code that measures them (issue
#: #19: a project quota per container), not read from the cgroup.
WritableBytes = Callable[[str], int | None]


def read_limits(reader: StatReader, rel: str) -> Limits:
    cpu = reader.read_file(rel, "cpu.max")
    return Limits(memory_max=reader.read_limit(rel, "memory.max"),
                  memory_high=reader.read_limit(rel, "memory.high"),
                  swap_max=reader.read_limit(rel, "memory.swap.max"),
                  pids_max=reader.read_limit(rel, "pids.max"),
                  cpu_max=None if cpu is None else parse_cpu_max(cpu))


def read_generic(reader: StatReader, rel: str,
                 host: Host) -> tuple[dict[str, int], dict[str, str]]:
    """The registered generic controllers' values and read-back values of one group (a
    controller whose files cannot be taken shows nothing: ``-``).  GroupGone is raised."""
    def read(file: str) -> bytes | None:
        text = reader.read_file(rel, file)
        return None if text is None else text.encode()

    values: dict[str, int] = {}
    effective: dict[str, str] = {}
    for c in generic():
        try:
            got = c.read_values(read, host)
            back = c.read_effective(read)
        except GroupGone:
            raise
        except (CgroupError, ValueReadError, ValueError):
            continue
        values.update(got or {})
        effective.update(back)
    return values, effective


def take(fs: CgroupFS, subtree: Layout | str, reader: StatReader,
         storage: WritableBytes | None = None, host: Host | None = None) -> Snapshot:
    """Read every group once; a group gone while being read is absent from the result.
    ``storage`` measures each group's writable layers (None: not measured here);
    ``host`` is what the generic controllers read on (default: nothing known)."""
    snap = Snapshot()
    layout = as_layout(subtree)
    host = host or Host()
    for path in layout.groups(fs):
        rel = layout.path(path)
        at = time.monotonic()
        try:
            st = reader.read(rel)
            limits = read_limits(reader, rel)
            values, effective = read_generic(reader, rel, host)
        except GroupGone:
            reader.forget(rel)
            continue
        snap.groups[path] = GroupRead(st, limits, at,
                                      None if storage is None else storage(path),
                                      values=values, effective=effective)
    return snap


class Source:
    """Successive snapshots of one subtree (one reader kept across them)."""

    def __init__(self, fs: CgroupFS, subtree: Layout | str,
                 storage: WritableBytes | None = None) -> None:
        self.fs = fs
        self.storage = storage
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        self.reader = StatReader(fs)
        self._seen: set[str] = set()
        self.host = Host.probe()

    def take(self) -> Snapshot:
        snap = take(self.fs, self.layout, self.reader, self.storage, self.host)
        for path in self._seen - set(snap.groups):
            self.reader.forget(self.layout.path(path))  # removed: drop its descriptors
        self._seen = set(snap.groups)
        return snap

    def close(self) -> None:
        self.reader.close()
