"""The sampling pass: read every managed group's raw counters into :class:`GroupSample`\\ s.

The groups sampled are what exists below the governor's subtree, two levels deep (tenants
and their groups), whether or not the policy still names them: a group that left the policy
but still has processes is still billed.  Reads go through the fd-caching
:class:`~governor.cgroupfs.reader.StatReader`; a group that vanished is reported in
``gone`` (and forgotten), never sampled as zeros.  ``memory.stat`` (with the rest of the
slow tier) is read of each group every ``slow_every``-th pass, a ``slow_every``-th of the
groups in each pass (governor/metering/tiers.py).

One bad group costs only its own sample (issue #15, item 2): a file that cannot be read
(EIO, EACCES...) or whose text cannot be taken (not the kernel's format, not UTF-8, too
large: :class:`~governor.cgroupfs.reader.StatFileError`) is counted by reason in
:attr:`Sampler.error_counts` (``governor_sample_errors_total``), named in the pass's
``errors``, logged once per group and reason until the group reads right again, and the
pass goes on with the other groups.

With the C accelerators built, the reads run in C (``governor.cgroupfs._fastread``, the
reader's), and so do the mapping of a group's raw values onto its :class:`GroupSample`
(:func:`to_sample`) and the per-group loop of the fast tier
(``governor.metering._fastsample``), with the same result (tests/unit/test_fastsample.py
compares the two).  The loop reads through the reader's public
:attr:`~governor.cgroupfs.reader.StatReader.fast_read` and
:attr:`~governor.cgroupfs.reader.StatReader.entries`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.listing import GroupLister
from governor.cgroupfs.reader import GroupStats, StatFileError, StatReader
from governor.controllers import registry
from governor.controllers.base import Controller, Host, ValueReadError
from governor.controllers.registry import generic
from governor.errors import CgroupError, GovernorError, GroupGone
from governor.failpoint import armed, failpoint
from governor.metering.controller_files import Enabled, enabled_by_parent
from governor.metering.controller_files import as_stat_error as _as_stat_error
from governor.metering.controller_files import read_capped as _read_capped
from governor.metering.sample import GroupSample
from governor.metering.tiers import SlowTier
from governor.metering.tosample import (
    C_TO_SAMPLE,
    FASTSAMPLE,
    SampleMaker,
    set_values,
    to_sample_at,
)

log = logging.getLogger("governor.sampler")


#: the reason of a failed group read that is not a :class:`StatFileError` (an OSError
#: other than the group being gone: EIO, EACCES, EMFILE...)
READ_ERROR = "read"
#: every reason ``governor_sample_errors_total`` can count
SAMPLE_ERROR_REASONS = (READ_ERROR, *StatFileError.REASONS)


@dataclass
class SamplePass:
    samples: list[GroupSample]
    gone: list[str]
    errors: list[str]    # one message per group whose sample failed (file, reason, text)
    started: datetime
    duration: float      # seconds of wall time for the whole pass
    #: whether every group's slow tier was read (the first pass, or ``slow_every`` 1);
    #: otherwise each group reads it on its slot's passes (governor/metering/tiers.py)
    slow: bool
    #: groups listed but not read in this pass: read for the first time in a later one,
    #: past :attr:`Sampler.first_read_budget` (neither sampled nor gone)
    deferred: list[str] = field(default_factory=list)
    #: groups read for the first time in this pass (their descriptors opened), and the
    #: seconds those reads took (what :class:`~governor.daemon.pace.OpenPace` paces by)
    opened: int = 0
    opened_s: float = 0.0


#: groups the C fast pass samples per call.  It holds the GIL while it runs: between two
#: calls the interpreter can hand the GIL to a waiting thread, the placement listener
#: above all (an exec event must not wait for a whole pass: 0.1-1 s at 1,000-10,000
#: groups).  bench/gil_wait.py measures what a waiting thread sees.
FAST_CHUNK = 16



@dataclass
class Sampler:
    fs: CgroupFS                  # rooted at the cgroup mount
    subtree: str | Layout         # the layout of the groups (a name: the cgroupfs one)
    node: str
    slow_every: int = 6
    #: creation times governor knows (it made the directory): path -> (cgroup id, time)
    created: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    passes: int = 0
    #: the C accelerator (None: whenever it is in use, see reader.ACCELERATED)
    accelerated: bool | None = None
    #: groups whose sample failed, by reason, since start (governor_sample_errors_total);
    #: every reason from 0, so the exported counter exists before the first failure and
    #: ``increase()`` sees it (an alert rule watches it)
    error_counts: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(SAMPLE_ERROR_REASONS, 0)))
    #: the host the generic controllers read on (huge page sizes...); None: probed
    host: Host | None = None
    #: seconds of first reads (a group's eleven descriptors opened: the dearest read there
    #: is) after which a pass reads no more groups for the first time; the new groups met
    #: after that are left for the next passes (:attr:`SamplePass.deferred`), so that
    #: thousands of groups found at once (a start at 10,000 groups) are read over several
    #: passes, not all in one.  Counted over the first reads only: the known groups' reads
    #: do not eat it (a pass's elapsed time did, and once the known groups' reads took that
    #: long a slow host opened one group a pass).  One new group a pass at least.  None: no
    #: bound
    first_read_budget: float | None = None
    #: the most groups a pass reads for the first time (the daemon sets it before each
    #: pass from what the last ones cost: governor/daemon/pace.py); None: no bound
    first_read_max: int | None = None

    def __post_init__(self) -> None:
        self.reader = StatReader(self.fs, accelerated=self.accelerated)
        fast = self.reader.fast_read is not None
        self._make: SampleMaker = C_TO_SAMPLE if fast and C_TO_SAMPLE else to_sample_at
        self._fast_pass: Callable[..., int] | None = None
        if fast and C_TO_SAMPLE and FASTSAMPLE is not None:
            self._fast_pass = FASTSAMPLE.sample_groups
        self.latest: dict[str, GroupStats] = {}
        self._births: dict[str, datetime] = {}
        #: group path -> the reasons already logged for it (until it reads right again)
        self._failing: dict[str, set[str]] = {}
        #: group path -> the generic controllers' read-back values (``{"cpus": "0-1"}``:
        #: cpuset.cpus.effective), read on the slow passes; a gone group is forgotten
        self.effective: dict[str, dict[str, str]] = {}
        #: the listing, kept while inotify sees no group made or removed
        self.layout = as_layout(self.subtree)
        self._lister = GroupLister(self.fs, self.layout)
        if self.host is None:
            self.host = Host.probe()
        self._generic: tuple[Controller, ...] = registry.generic()
        #: the cgroup ids (one per group incarnation) where no generic controller had
        #: files: not read again until their group's slow tier comes round
        self._generic_absent: set[int] = set()
        self._tier = SlowTier(self.slow_every)

    def events_trust(self) -> EventsTrust:
        """What the OOM watch tells of its watches on the groups' ``memory.events``, turned
        into this sampler's reads of them (``OomWatcher.events_listener``)."""
        return EventsTrust(self.reader, self.layout)

    def close(self) -> None:
        self.reader.close()
        self._lister.close()

    def note_created(self, path: str, when: datetime | None = None) -> None:
        """Record that governor created ``path`` (relative to the subtree) now."""
        try:
            cid = self.fs.inode(self.layout.path(path))
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

    def reads_slow_tier(self, path: str) -> bool:
        """Whether the next pass reads the slow tier of ``path`` (relative to the subtree):
        every group's on the first pass, then each group's on its slot's passes, every
        ``slow_every``-th (a group the last pass did not list: False, until a pass has)."""
        if self.passes == 0 or self.slow_every == 1:
            return True
        return self._tier.slot_of(path) == self.passes % self.slow_every

    def groups(self) -> list[str]:
        """Tenants and their groups below the subtree (paths relative to it)."""
        try:
            return self._lister.list()
        except CgroupError:
            return []

    def sample(self) -> SamplePass:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        phase = self.passes % self.slow_every
        whole = self.passes == 0 or self.slow_every == 1  # every group's slow tier
        self.passes += 1
        samples: list[GroupSample] = []
        gone: list[str] = []
        errors: list[str] = []
        paths = self.groups()
        live = set(paths)
        for stale in [p for p in self.latest if p not in live]:
            self.reader.forget(self.layout.path(stale))
            del self.latest[stale]
            gone.append(stale)
        failing = self._failing
        for stale in [p for p in failing if p not in live]:
            del failing[stale]
        failed: set[str] = set()
        deferred: list[str] = []
        budget = self.first_read_budget
        limit = math.inf if budget is None else budget
        most = math.inf if self.first_read_max is None else self.first_read_max
        opened = 0   # groups read for the first time in this pass
        opened_s = 0.0
        # the loop runs once per group per pass: names are looked up once, here
        read, make, monotonic = self.reader.read, self._make, time.monotonic
        latest, births, known_created = self.latest, self._births, self.created
        # the directory of each group: prefix + path, or a mapping (systemd's slice names)
        prefix, node = self.layout.sample_prefix(paths), self.node
        where = (prefix.__getitem__ if isinstance(prefix, dict)
                 else (lambda p, _pre=prefix: _pre + p))
        # the groups that read their slow tier in this pass, by position (ascending)
        n = len(paths)
        marks: Sequence[int] = self._tier.marks(paths, phase)   # (slots kept up to date)
        if whole:
            marks = range(n)
        # the C accelerator runs this loop for the groups whose descriptors are all open
        # up to the next marked group (fast tier), and hands back each group that needs
        # the Python body below
        fast_pass = self._fast_pass if not whole else None
        hook = failpoint if armed("metering.sample.group") else None
        entries, fast_read = self.reader.entries, self.reader.fast_read
        left = iter(marks)
        i, mark = 0, next(left, n)
        while i < n:
            if fast_pass is not None and i < mark:
                stop = min(mark, i + FAST_CHUNK)
                j = fast_pass(paths, i, entries, fast_read, prefix, latest, known_created,
                              births, node, started, t0, samples, hook, stop)
                if j >= n:
                    break
                if j == stop:  # a chunk done (or a marked group next): another thread
                    i = j      # may take the GIL
                    continue
                i = j
            path = paths[i]
            slow = i == mark
            if slow:
                mark = next(left, n)
            i += 1
            mono = monotonic()  # each group stamped when it is read, not at pass start
            rel = where(path)
            new = rel not in entries
            if new:
                if opened and (opened_s >= limit or opened >= most):  # one a pass at least
                    deferred.append(path)
                    continue
                opened += 1
            try:
                st = read(rel, slow=slow)
            except GroupGone:
                gone.append(path)
                latest.pop(path, None)
                failing.pop(path, None)
                continue
            except CgroupError as e:  # StatFileError too: this group's sample only
                self._failed(path, e, errors, failed)
                continue
            failpoint("metering.sample.group")  # crash tests: stall or die mid-pass
            cid = st.cgroup_id
            prev = latest.get(path)
            if prev is not None and prev.cgroup_id != cid:
                # re-created between passes: same fd cache entry cannot be (ENODEV first),
                # but a new reader entry after forget() can; note it for the log
                log.info("new incarnation", extra={"group": path, "cgroup_id": cid})
            latest[path] = st
            if births:
                birth = births.get(path)
                if birth is not None and (prev is None or prev.cgroup_id != cid) and \
                        known_created.get(path, (None,))[0] != cid:
                    known_created[path] = (cid, birth)
                    del births[path]
            known = known_created.get(path)
            created = known[1] if known is not None and known[0] == cid else None
            samples.append(make(st, node, path, started, t0, mono, created))
            if new:
                opened_s += monotonic() - mono
        # which generic controllers each marked group has, from its parent (read once per
        # parent, for both reads below)
        enabled = enabled_by_parent(self.fs)
        slotted = [paths[k] for k in marks] if not whole else paths
        if self._generic:
            samples = self._read_generic(samples, where, errors, failed, enabled=enabled,
                                         slotted=None if whole else set(slotted),
                                         prune=phase == 0)
        if deferred:   # not read: neither their generic values nor effective ones
            left_out = set(deferred)
            slotted = [p for p in slotted if p not in left_out]
            failed |= left_out
        self._read_effective(paths, where, gone, errors, failed, slotted=slotted,
                             enabled=enabled)
        # a group that failed before and was sampled now (by either loop) reads right again
        for path in [p for p in failing if p not in failed]:
            del failing[path]
            log.info("sample read again", extra={"group": path})
        return SamplePass(samples, gone, errors, started, time.monotonic() - t0, whole,
                          deferred, opened, opened_s)

    def _read_effective(self, paths: list[str], where: Callable[[str], str], gone: list[str],
                        errors: list[str], failed: set[str], *, slotted: list[str],
                        enabled: Enabled) -> None:
        """:attr:`effective` of the groups whose slow tier this pass reads (``slotted``):
        the generic controllers' :meth:`~governor.controllers.base.Controller.read_effective`
        merged (``cpuset.cpus.effective``...), each file read whole up to
        :data:`EFFECTIVE_MAX` bytes.  A file that cannot be taken counts as the group's
        sample error (the group keeps its sample; its effective values are dropped); a
        gone group (or one whose sample failed) is forgotten on every pass.  Never
        raises.  ``enabled``: the pass's :func:`enabled_by_parent`."""
        effective = self.effective
        skip = set(gone) | failed
        if effective:
            live = set(paths)
            for path in [p for p in effective if p not in live or p in skip]:
                del effective[path]
        every = generic()
        if not every:
            return
        for path in slotted:
            if path in skip:
                continue
            rel = where(path)
            controllers = enabled(rel, every)
            if not controllers:
                effective.pop(path, None)
                continue
            values: dict[str, str] = {}
            read = functools.partial(_read_capped, self.fs, rel)
            try:
                for c in controllers:
                    values.update(c.read_effective(read))
            except GroupGone:
                effective.pop(path, None)
                continue
            except (CgroupError, ValueReadError, ValueError) as e:
                effective.pop(path, None)
                self._failed(path, _as_stat_error(self.fs, rel, e), errors, failed)
                continue
            if values:
                effective[path] = values
            else:
                effective.pop(path, None)

    def _read_generic(self, samples: list[GroupSample], where: Callable[[str], str],
                      errors: list[str], failed: set[str], *, enabled: Enabled,
                      slotted: set[str] | None, prune: bool) -> list[GroupSample]:
        """Set each sample's ``values`` from the generic controllers' files (tenants' own
        samples too); the samples kept (a read that failed drops its group's, counted as
        :meth:`_failed` counts a stat file's).  A group incarnation where no generic
        controller has files is skipped until its slow tier comes round, which reads again
        (the reader's own memory of absent files is dropped for those reads).
        ``slotted``: the groups whose slow tier this pass reads (None: all); their reads
        keep to the controllers ``enabled`` (the pass's :func:`enabled_by_parent`) finds
        enabled by the parent; the other groups read every generic controller's files they
        had.  ``prune``: drop the ids of groups gone from the absent set (once a round)."""
        host = self.host
        assert host is not None  # (set in __post_init__)
        read_bytes, every = self.reader.read_bytes, self._generic
        absent = self._generic_absent
        if slotted is None:  # every group is read again (and the ids of groups gone dropped)
            absent.clear()
        elif prune and absent:
            absent.intersection_update([s.cgroup_id for s in samples])
        kept: list[GroupSample] = []
        for s in samples:
            path = s.path
            slow = slotted is None or path in slotted
            if slow:
                absent.discard(s.cgroup_id)
            elif s.cgroup_id in absent:
                kept.append(s)
                continue
            rel = where(path)
            controllers = enabled(rel, every) if slow else every
            if not controllers:   # none enabled here: no file of theirs to open
                absent.add(s.cgroup_id)
                kept.append(s)
                continue

            def read(name: str, _rel: str = rel, _slow: bool = slow) -> bytes | None:
                return read_bytes(_rel, name, recheck=_slow)

            values: dict[str, int] = {}
            try:
                for c in controllers:
                    got = c.read_values(read, host)
                    if got:
                        values.update(got)
            except GroupGone:
                kept.append(s)  # its other files were read; the next pass finds it gone
                continue
            except ValueReadError as e:
                self._failed(path, StatFileError(
                    str(self.fs.path(rel)), e.file, "parse",
                    e.value.encode("utf-8", "backslashreplace"),
                    f"not the kernel's format: {e.why}"), errors, failed)
                continue
            except CgroupError as e:  # StatFileError (too large), EIO...
                self._failed(path, e, errors, failed)
                continue
            if values:
                set_values(s, values)
            else:
                absent.add(s.cgroup_id)
            kept.append(s)
        return kept

    def _failed(self, path: str, e: CgroupError, errors: list[str], failed: set[str]) -> None:
        """Count a group's failed sample by reason; log it the first time per reason."""
        failed.add(path)
        reason = e.reason if isinstance(e, StatFileError) else READ_ERROR
        self.error_counts[reason] += 1
        errors.append(str(e))
        seen = self._failing.setdefault(path, set())
        if reason not in seen:
            seen.add(reason)
            log.error("sample failed", extra={
                "group": path, "reason": reason, "file": e.file, "error": str(e),
                "fix": "the group is left out of this pass and of the bill until it reads "
                       "right; the log says when it does"})


def by_path(samples: list[GroupSample]) -> Mapping[str, GroupSample]:
    return {s.path: s for s in samples}


class EventsTrust:
    """The OOM watch's ``EventsListener`` (governor/oom/watched.py) for a sampler's
    reader: while a group's ``memory.events`` is watched and no event came since the
    sampler read it, the pass hands out that value instead of reading the file again
    (:meth:`StatReader.events_watched`; issue #16: one pread of the ten a group a pass).
    The watcher's paths are the sampler's; a path the layout cannot spell is left read
    every pass."""

    def __init__(self, reader: StatReader, layout: Layout) -> None:
        self.reader = reader
        self.layout = layout

    def _rel(self, path: str) -> str | None:
        try:
            return self.layout.path(path)
        except GovernorError:   # a name no directory has (InvalidName)
            return None

    def watched(self, path: str) -> None:
        rel = self._rel(path)
        if rel is not None:
            self.reader.events_watched(rel)

    def changed(self, path: str) -> None:
        rel = self._rel(path)
        if rel is not None:
            self.reader.events_changed(rel)

    def unwatched(self, path: str | None) -> None:
        if path is None:
            self.reader.events_unwatched(None)
            return
        rel = self._rel(path)
        if rel is not None:
            self.reader.events_unwatched(rel)
