"""The writable-layer bytes of each group, read once a pass (issue #19).

Each group's containers from images write into one project quota
(:mod:`governor.image.writable`).  Every pass, after the cgroup files are read, the daemon
calls :meth:`StorageMeter.fill`:

* each group's sample gets ``storage_bytes``, the project's bytes (one ``quotactl`` per group
  that has a project; a group that never had a container from an image has 0, not None:
  its writable layers hold nothing, and that is known); ``None`` when the project's read
  failed, and for every group when there is no quota-capable ``containers/`` (the host runs
  no containers from images: nothing to measure).  A tenant's own sample is left without
  (its groups carry the bytes; counting both would bill them twice);
* each project's hard limit is set to the group's ``storage.max`` of the policy now in
  force when it differs (a policy reload reaches running containers within a pass);
* a group whose bytes reach its limit (within :data:`FULL_MARGIN`) is logged once, with the
  fix, and counted in :attr:`StorageMeter.full_counts` until it is below again: its
  containers' writes fail with ``EDQUOT`` meanwhile.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from governor.image import quota
from governor.image.writable import Pool, WritableError
from governor.metering.sample import GroupSample

log = logging.getLogger("governor.storage")

#: a group counts as full when its limit has less than this left: a write that failed
#: with EDQUOT leaves the usage within a filesystem block or so of the limit
FULL_MARGIN: Final = 64 * 1024

#: the slot's member descriptor sets the frozen sample's field (as the readers set all)
_set_storage = getattr(GroupSample, "storage_bytes").__set__  # noqa: B009 (the descriptor)


class StorageMeter:
    def __init__(self, pool: Pool, limits: Callable[[], Mapping[str, int | None]]) -> None:
        self.pool = pool
        #: group path -> the storage.max of the policy in force (None: no limit)
        self.limits = limits
        #: group path -> times it was found full (exported as a counter)
        self.full_counts: Counter[str] = Counter()
        self._full: set[str] = set()
        self._projects: dict[str, int] = {}
        self._projects_key: tuple[int, int, int] | None = None
        self._failing: set[str] = set()
        self._not_ready_logged = False

    def start(self) -> None:
        """At daemon start: mount an existing pool again (after a reboot); never make one
        (that is for a launch)."""
        if self.pool.pool_size is None:
            return
        try:
            self.pool.ensure(create=False)
        except WritableError as e:
            log.error("writable-layer pool not mounted", extra={
                "path": self.pool.containers, "error": str(e),
                "fix": "the groups' writable layers are not measured until it is; see the "
                       "error, then restart governor or launch a container from an image"})

    def _read_projects(self) -> dict[str, int]:
        try:
            st = os.stat(self.pool.projects_file)
        except FileNotFoundError:
            self._projects, self._projects_key = {}, None
            return self._projects
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._projects_key:
            self._projects = self.pool.projects()
            self._projects_key = key
        return self._projects

    def fill(self, samples: Iterable[GroupSample]) -> None:
        """Set ``storage_bytes`` on the groups' samples of this pass (module doc)."""
        if not self.pool.ready():
            if not self._not_ready_logged and os.path.exists(self.pool.image_file):
                self._not_ready_logged = True
                log.warning("writable-layer pool not mounted", extra={
                    "path": self.pool.containers, "pool": self.pool.image_file})
            return
        self._not_ready_logged = False
        try:
            projects = self._read_projects()
        except WritableError as e:
            log.error("writable-layer projects unreadable", extra={
                "path": self.pool.projects_file, "error": str(e)})
            return
        groups = [s for s in samples if s.group is not None]
        wanted = {s.path: projects[s.path] for s in groups if s.path in projects}
        try:
            used = self.pool.usage(wanted) if wanted else {}
        except WritableError as e:
            log.error("writable-layer usage unreadable", extra={
                "path": self.pool.containers, "error": str(e)})
            return
        limits = self.limits() if wanted else {}
        for s in groups:
            path = s.path
            if path not in wanted:
                _set_storage(s, 0)
                continue
            u = used.get(path)
            if u is None:
                if path not in self._failing:
                    self._failing.add(path)
                    log.error("writable-layer usage unreadable", extra={
                        "group": path, "project": wanted[path],
                        "path": self.pool.containers})
                continue
            self._failing.discard(path)
            _set_storage(s, u.bytes)
            self._enforce(path, u, limits.get(path))

    def _enforce(self, path: str, u: quota.ProjectUsage, limit: int | None) -> None:
        want = None if limit is None else -(-limit // quota.QIF_DQBLKSIZE) * \
            quota.QIF_DQBLKSIZE
        if u.limit != want:
            try:
                self.pool.set_limit(u.project, limit)
            except (WritableError, quota.QuotaError) as e:
                log.error("storage.max not set", extra={
                    "group": path, "project": u.project, "limit": limit, "error": str(e)})
                return
            log.info("storage.max set", extra={"group": path, "project": u.project,
                                               "limit": limit, "was": u.limit})
        if limit is not None:
            self.full_counts.setdefault(path, 0)  # exported from 0, so increase() sees it
        if limit is not None and u.bytes >= limit - min(FULL_MARGIN, limit // 16):
            if path not in self._full:
                self._full.add(path)
                self.full_counts[path] += 1
                log.warning("storage.max reached", extra={
                    "group": path, "bytes": u.bytes, "limit": limit,
                    "fix": "the group's containers' writes to their writable layers fail "
                           "with EDQUOT (Disk quota exceeded) until they free space or "
                           "storage.max is raised in the policy"})
        elif path in self._full:
            self._full.discard(path)
            log.info("storage.max no longer reached", extra={"group": path,
                                                             "bytes": u.bytes,
                                                             "limit": limit})
