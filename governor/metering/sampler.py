"""The sampling pass: read every managed group's raw counters into :class:`GroupSample`\\ s.

The groups sampled are what exists below the governor's subtree, two levels deep (tenants
and their groups), whether or not the policy still names them: a group that left the policy
but still has processes is still billed.  Reads go through the fd-caching
:class:`~governor.cgroupfs.reader.StatReader`; a group that vanished is reported in
``gone`` (and forgotten), never sampled as zeros.  ``memory.stat`` is read on every
``slow_every``-th pass only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import GroupStats, StatReader
from governor.cgroupfs.tree import managed_groups
from governor.errors import CgroupError, GroupGone
from governor.failpoint import failpoint
from governor.metering.sample import IO_FIELDS, GroupSample, IoCounters

log = logging.getLogger("governor.sampler")


@dataclass
class SamplePass:
    samples: list[GroupSample]
    gone: list[str]
    errors: list[str]
    started: datetime
    duration: float      # seconds of wall time for the whole pass
    slow: bool           # whether memory.stat was read


_EMPTY: Mapping[str, int] = {}
_PSI_NAMES = {res: (f"{res}_some", f"{res}_full") for res in ("cpu", "memory", "io")}

#: GroupSample's fields in the order of its dataclass fields, as to_sample lists them
_SAMPLE_FIELDS = (
    "node", "tenant", "group", "cgroup_id", "wall", "monotonic",
    "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
    "cpu_nr_throttled", "cpu_throttled_usec",
    "memory_current", "memory_peak", "memory_swap_current",
    "memory_events_low", "memory_events_high", "memory_events_max", "memory_events_oom",
    "memory_events_oom_kill", "memory_events_oom_group_kill",
    "memory_stat_anon", "memory_stat_file", "memory_stat_kernel", "memory_stat_sock",
    "memory_stat_shmem", "pids_current", "io", "psi", "created")
if tuple(f.name for f in dataclasses.fields(GroupSample)) != _SAMPLE_FIELDS:
    raise ImportError("governor.metering.sampler: _SAMPLE_FIELDS is not GroupSample's "
                      "fields in order")
#: a setter for each field (its slot's member descriptor: GroupSample has __slots__)
_SAMPLE_SETTERS = tuple(getattr(GroupSample, name).__set__ for name in _SAMPLE_FIELDS)
_new = object.__new__


def _make_sample(values: Sequence[object]) -> GroupSample:
    """``GroupSample(*values)`` (values of all the fields, in order) at a fifth of the cost:
    the frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for each of its
    30 fields, here each slot is set directly; ``__post_init__`` still checks the values.
    (tests/unit/test_sampler.py compares the two.)"""
    if len(values) != len(_SAMPLE_SETTERS):
        raise TypeError(f"GroupSample takes {len(_SAMPLE_SETTERS)} values, not {len(values)}")
    sample: GroupSample = _new(GroupSample)
    for set_slot, value in zip(_SAMPLE_SETTERS, values):  # noqa: B905 (lengths checked)
        set_slot(sample, value)
    sample.__post_init__()
    return sample


def to_sample(st: GroupStats, *, node: str, path: str, wall: datetime, mono: float,
              created: datetime | None = None) -> GroupSample:
    """Map the reader's raw values onto the store's sample shape (no arithmetic)."""
    tenant, _, group = path.partition("/")
    cpu = (st.cpu or _EMPTY).get
    ev = (st.memory_events or _EMPTY).get   # None (absent) and {} both give None values
    ms = (st.memory_stat or _EMPTY).get
    io: dict[str, IoCounters] = {}
    if st.io:
        for dev, c in st.io.items():
            io[dev] = IoCounters(**{k: int(c.get(k, 0)) for k in IO_FIELDS})  # type: ignore[typeddict-item]
    psi: dict[str, int] = {}
    for res, p in st.psi.items():
        names = _PSI_NAMES.get(res) or (f"{res}_some", f"{res}_full")
        psi[names[0]] = p.some.total
        if p.full is not None:
            psi[names[1]] = p.full.total
    return _make_sample((
        node, tenant, group or None, st.cgroup_id, wall, mono,
        cpu("usage_usec"), cpu("user_usec"), cpu("system_usec"), cpu("nr_periods"),
        cpu("nr_throttled"), cpu("throttled_usec"),
        st.memory_current, st.memory_peak, st.swap_current,
        ev("low"), ev("high"), ev("max"), ev("oom"), ev("oom_kill"), ev("oom_group_kill"),
        ms("anon"), ms("file"), ms("kernel"), ms("sock"), ms("shmem"),
        st.pids_current, io, psi, created))


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
        try:
            return managed_groups(self.fs, self.subtree)
        except CgroupError:
            return []

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
            failpoint("metering.sample.group")  # crash tests: stall or die mid-pass
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
