"""The sampling pass: read every managed group's raw counters into :class:`GroupSample`\\ s.

The groups sampled are what exists below the governor's subtree, two levels deep (tenants
and their groups), whether or not the policy still names them: a group that left the policy
but still has processes is still billed.  Reads go through the fd-caching
:class:`~governor.cgroupfs.reader.StatReader`; a group that vanished is reported in
``gone`` (and forgotten), never sampled as zeros.  ``memory.stat`` is read on every
``slow_every``-th pass only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import GroupStats, StatReader
from governor.errors import CgroupError, GroupGone
from governor.metering.sample import IO_FIELDS, GroupSample, IoCounters

log = logging.getLogger("governor.sampler")

_STAT_FIELDS = (("anon", "memory_stat_anon"), ("file", "memory_stat_file"),
                ("kernel", "memory_stat_kernel"), ("sock", "memory_stat_sock"),
                ("shmem", "memory_stat_shmem"))


@dataclass
class SamplePass:
    samples: list[GroupSample]
    gone: list[str]
    errors: list[str]
    started: datetime
    duration: float      # seconds of wall time for the whole pass
    slow: bool           # whether memory.stat was read


def to_sample(st: GroupStats, *, node: str, path: str, wall: datetime, mono: float,
              created: datetime | None = None) -> GroupSample:
    """Map the reader's raw values onto the store's sample shape (no arithmetic)."""
    tenant, _, group = path.partition("/")
    cpu = st.cpu or {}
    ev = st.memory_events or {}
    ms = st.memory_stat or {}
    io: dict[str, IoCounters] = {}
    for dev, c in (st.io or {}).items():
        io[dev] = IoCounters(**{k: int(c.get(k, 0)) for k in IO_FIELDS})  # type: ignore[typeddict-item]
    psi: dict[str, int] = {}
    for res, p in st.psi.items():
        psi[f"{res}_some"] = p.some.total
        if p.full is not None:
            psi[f"{res}_full"] = p.full.total
    extra: dict[str, int | None] = {
        col: (ms.get(key) if st.memory_stat is not None else None) for key, col in _STAT_FIELDS}
    return GroupSample(
        node=node, tenant=tenant, group=group or None, cgroup_id=st.cgroup_id, wall=wall,
        monotonic=mono, created=created,
        cpu_usage_usec=cpu.get("usage_usec"), cpu_user_usec=cpu.get("user_usec"),
        cpu_system_usec=cpu.get("system_usec"), cpu_nr_periods=cpu.get("nr_periods"),
        cpu_nr_throttled=cpu.get("nr_throttled"),
        cpu_throttled_usec=cpu.get("throttled_usec"),
        memory_current=st.memory_current, memory_peak=st.memory_peak,
        memory_swap_current=st.swap_current,
        memory_events_low=ev.get("low") if st.memory_events is not None else None,
        memory_events_high=ev.get("high") if st.memory_events is not None else None,
        memory_events_max=ev.get("max") if st.memory_events is not None else None,
        memory_events_oom=ev.get("oom") if st.memory_events is not None else None,
        memory_events_oom_kill=ev.get("oom_kill") if st.memory_events is not None else None,
        memory_events_oom_group_kill=(ev.get("oom_group_kill")
                                      if st.memory_events is not None else None),
        pids_current=st.pids_current, io=io, psi=psi, **extra)


@dataclass
class Sampler:
    fs: CgroupFS                  # rooted at the cgroup mount
    subtree: str
    node: str
    slow_every: int = 6
    #: creation times governor knows (it made the directory): path -> (cgroup id, time)
    created: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    passes: int = 0

    def __post_init__(self) -> None:
        self.reader = StatReader(self.fs)
        self.latest: dict[str, GroupStats] = {}
        self._births: dict[str, datetime] = {}

    def close(self) -> None:
        self.reader.close()

    def note_created(self, path: str, when: datetime | None = None) -> None:
        """Record that governor created ``path`` (relative to the subtree) now."""
        try:
            cid = self.fs.inode(f"{self.subtree}/{path}")
        except CgroupError:
            return
        self.created[path] = (cid, when or datetime.now(UTC))

    def expect_birth(self, path: str, failed: bool = False) -> None:
        """Told just *before* governor makes ``path`` (``failed``: it could not).  The next
        new incarnation seen at that path was born then, so its usage counts from zero
        even if a pass reads it before anyone could note its cgroup id."""
        if failed:
            self._births.pop(path, None)
        else:
            self._births[path] = datetime.now(UTC)

    def groups(self) -> list[str]:
        """Tenants and their groups below the subtree (paths relative to it)."""
        out: list[str] = []
        try:
            tenants = self.fs.children(self.subtree)
        except CgroupError:
            return out
        for t in tenants:
            out.append(t)
            try:
                out.extend(f"{t}/{g}" for g in self.fs.children(f"{self.subtree}/{t}"))
            except CgroupError:
                continue
        return out

    def sample(self) -> SamplePass:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        slow = self.passes % self.slow_every == 0
        self.passes += 1
        samples: list[GroupSample] = []
        gone: list[str] = []
        errors: list[str] = []
        paths = self.groups()
        live = set(paths)
        for stale in [p for p in self.latest if p not in live]:
            self.reader.forget(f"{self.subtree}/{stale}")
            del self.latest[stale]
            gone.append(stale)
        for path in paths:
            rel = f"{self.subtree}/{path}"
            mono = time.monotonic()  # each group stamped when it is read, not at pass start
            try:
                st = self.reader.read(rel, slow=slow)
            except GroupGone:
                gone.append(path)
                self.latest.pop(path, None)
                continue
            except CgroupError as e:
                errors.append(str(e))
                log.error("sample failed", extra={"group": path, "error": str(e)})
                continue
            prev = self.latest.get(path)
            if prev is not None and prev.cgroup_id != st.cgroup_id:
                # re-created between passes: same fd cache entry cannot be (ENODEV first),
                # but a new reader entry after forget() can; note it for the log
                log.info("new incarnation", extra={"group": path, "cgroup_id": st.cgroup_id})
            self.latest[path] = st
            birth = self._births.get(path)
            if birth is not None and (prev is None or prev.cgroup_id != st.cgroup_id) and \
                    self.created.get(path, (None,))[0] != st.cgroup_id:
                self.created[path] = (st.cgroup_id, birth)
                del self._births[path]
            known = self.created.get(path)
            created = known[1] if known is not None and known[0] == st.cgroup_id else None
            samples.append(to_sample(st, node=self.node, path=path,
                                     wall=started + timedelta(seconds=mono - t0), mono=mono,
                                     created=created))
        return SamplePass(samples, gone, errors, started, time.monotonic() - t0, slow)


def by_path(samples: list[GroupSample]) -> Mapping[str, GroupSample]:
    return {s.path: s for s in samples}
