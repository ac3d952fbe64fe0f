"""Keeping the kernel true to the policy on a live system.

* :meth:`Enforcer.reload` (SIGHUP, or a change seen by :class:`PolicyWatcher`): a new
  version is validated completely before anything is written; if it fails, every problem is
  logged, the failure is counted, and the policy in force stays exactly as it was.
* :meth:`Enforcer.reconcile` (at an interval): plans against the kernel again; with an
  unchanged policy any write it has to make is drift (a file edited by hand, a group
  removed behind governor's back) and is restored and counted.  With a
  :class:`~governor.enforce.drift.DriftWatch` (the daemon's) a reconcile plans only the
  groups inotify saw written or removed, and a ``FULL_EVERY``-th of all of them in turn
  (each group once every ``FULL_EVERY`` reconciles).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Inotify,
)
from governor.cgroupfs.layout import Layout, as_layout
from governor.enforce.apply import Executor, Outcome, apply_plan
from governor.enforce.desired import DesiredState, desired_state
from governor.enforce.drift import DriftWatch
from governor.enforce.plan import Action, Plan, make_plan
from governor.errors import GovernorError
from governor.policy import Policy, PolicyInvalid, load_policy
from governor.policy.model import PricePlan

log = logging.getLogger("governor.enforce")

#: called with (policy digest, trigger, outcomes) after each apply
#: ``(policy digest, trigger, outcomes, price plans)``: records an applied policy
Recorder = Callable[[str, str, list[Outcome], Mapping[str, PricePlan]], None]


class Enforcer:
    def __init__(self, fs: CgroupFS, subtree: Layout | str, policy_path: str, *,
                 iocost_devices: tuple[str, ...] = (), recorder: Recorder | None = None,
                 sys_block: str = "/sys/block",
                 on_created: Callable[[str, bool], None] | None = None,
                 executor: Callable[[Plan], Executor | None] | None = None,
                 drift_watch: DriftWatch | None = None) -> None:
        self.fs = fs
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        #: the executor of each plan (None: cgroupfs writes; the systemd driver's calls)
        self.executor = executor
        self.policy_path = policy_path
        self.iocost_devices = iocost_devices
        self.recorder = recorder
        self.sys_block = sys_block
        #: told ``(path relative to the subtree, done)`` just before this enforcer creates a
        #: group (done=False) and once it failed (done=True: the birth did not happen), so
        #: metering knows a new incarnation's birth and counts its usage from zero
        self.on_created = on_created
        self.policy: Policy | None = None
        self.applied: DesiredState | None = None
        self.reloads: Counter[str] = Counter()         # result -> count
        self.drift: Counter[str] = Counter()           # interface file (or "group") -> count
        self.write_errors = 0
        #: failed writes of the last apply or reconcile: 0 once the kernel matches the
        #: policy again (a degraded governor until then: /healthz, sd_notify STATUS=)
        self.last_failed = 0
        #: which groups a reconcile needs to plan (None: every group, every time)
        self.drift_watch = drift_watch
        #: groups planned by the reconciles so far (the drift watch keeps it small)
        self.reconciled_groups = 0
        #: the desired state of the policy in force, made once per policy (a reconcile
        #: that plans 50 groups must not rebuild 10,000: issue #16)
        self._desired: tuple[Policy, DesiredState] | None = None
        #: the desired state whose groups the drift watch watches
        self._watched: DesiredState | None = None
        self._lock = threading.Lock()

    # -- policy versions -----------------------------------------------------------------
    def reload(self, trigger: str = "reload") -> bool:
        """Load and validate the policy; apply it if valid.  Returns whether it was taken."""
        from governor.security import UnsafeFile, check_strict_modes

        try:
            check_strict_modes(self.policy_path)
        except UnsafeFile as e:
            self.reloads["invalid"] += 1
            log.error("policy rejected; the policy in force is unchanged", extra={
                "problem": str(e), "trigger": trigger,
                "in_force": self.policy.digest[:12] if self.policy else "none"})
            return False
        try:
            new = load_policy([self.policy_path])
        except PolicyInvalid as e:
            self.reloads["invalid"] += 1
            for p in e.problems:
                log.error("policy rejected", extra={"problem": str(p), "trigger": trigger})
            log.error("policy rejected; the policy in force is unchanged", extra={
                "errors": len(e.problems), "trigger": trigger,
                "in_force": self.policy.digest[:12] if self.policy else "none"})
            return False
        for w in new.warnings:
            log.warning("policy warning", extra={"problem": str(w)})
        with self._lock:
            changed = self.policy is None or new.digest != self.policy.digest
            self.policy = new
            self.reloads["ok" if changed else "unchanged"] += 1
            self._apply(trigger, drift=False)
        return True

    def desired(self) -> DesiredState:
        """The desired state of the policy in force (made once per policy version)."""
        assert self.policy is not None
        if self._desired is None or self._desired[0] is not self.policy:
            self._desired = (self.policy, desired_state(self.policy))
        return self._desired[1]

    def _watch(self, desired: DesiredState, outcomes: list[Outcome], *,
               planned_all: bool, among: set[str] | None = None) -> None:
        """Watch every group of ``desired`` (those made just now too), or only those
        ``among`` (a reconcile of the same desired state: the others' watches stand); a
        group whose write failed is planned again at the next reconcile."""
        assert self.drift_watch is not None
        groups: dict[str, tuple[str, tuple[str, ...]]] = {}
        for rel, g in (desired.groups.items() if among is None else
                       ((r, desired.groups[r]) for r in among if r in desired.groups)):
            try:
                path = self.layout.path(rel)
            except GovernorError:
                continue   # a name the driver cannot spell: noted by the plan
            files = tuple(f for f, _ in g.files)
            groups[rel] = (path, (*files, "cgroup.subtree_control") if g.enable else files)
        self.drift_watch.watch(groups, planned_all=planned_all, partial=among is not None)
        by_path = {path: rel for rel, (path, _) in groups.items()}
        self.drift_watch.mark(by_path[o.action.path] for o in outcomes
                              if not o.ok and o.action.path in by_path)

    def plan(self) -> Plan:
        assert self.policy is not None
        return make_plan(self.fs, self.layout, self.desired(),
                         previous=self.applied, iocost_devices=self.iocost_devices,
                         sys_block=self.sys_block)

    def _apply(self, trigger: str, *, drift: bool, only: set[str] | None = None,
               sweep: bool = True) -> list[Outcome]:
        assert self.policy is not None
        desired = self.desired()
        plan = make_plan(self.fs, self.layout, desired, previous=self.applied,
                         iocost_devices=self.iocost_devices, sys_block=self.sys_block,
                         only=only, sweep=sweep)
        self.reconciled_groups += len(desired.groups) if only is None else len(only)
        notify = self.on_created
        group_of = self.layout.group_of

        def before(a: Action) -> None:
            if notify is not None and a.kind == "create" and \
                    (rel := group_of("/" + a.path)) is not None:
                notify(rel, False)

        outcomes = apply_plan(self.fs, plan, before=before, execute=(
            self.executor(plan) if self.executor is not None else None))
        for o in outcomes:
            if not o.ok and o.action.kind == "create" and notify is not None and \
                    (rel := group_of("/" + o.action.path)) is not None:
                notify(rel, True)
            if not o.ok:
                self.write_errors += 1
                log.error("write failed", extra={"path": o.action.path, "file": o.action.file,
                                                 "value": o.action.new, "error": o.error})
            elif drift:
                self.drift[o.action.file or "group"] += 1
                log.warning("drift corrected", extra={
                    "path": o.action.path, "file": o.action.file, "was": o.action.old,
                    "now": o.action.new, "kind": o.action.kind})
        self.applied = desired
        if self.drift_watch is not None:
            if only is not None and desired is self._watched:
                self._watch(desired, outcomes, planned_all=False, among=only)
            else:
                self._watch(desired, outcomes, planned_all=only is None)
                self._watched = desired
        failed = sum(not o.ok for o in outcomes)
        self.last_failed = failed
        if outcomes or not drift:
            what = {"digest": plan.digest[:12], "trigger": trigger, "writes": len(outcomes),
                    "failed": failed}
            if failed:
                # never "applied" at info level: the kernel does not match the policy
                log.error("policy applied with failed writes: the kernel does not match it "
                          "(retried at each reconcile; see the \"write failed\" lines)",
                          extra=what)
            else:
                log.info("policy applied", extra=what)
            if self.recorder is not None and not drift:
                self.recorder(plan.digest, trigger, outcomes, self.policy.plans)
        return outcomes

    def reconcile(self) -> list[Outcome]:
        """Restore anything that drifted from the policy in force (no reload)."""
        if self.policy is None:
            return []
        with self._lock:
            only, sweep = (self.drift_watch.take() if self.drift_watch is not None
                           else (None, True))
            if only is not None and not only and not sweep:
                return []   # nothing written since, no group's turn: nothing to read
            return self._apply("reconcile", drift=True, only=only, sweep=sweep)


#: what in the policy's directory (or the policy file's) may change the policy: a file
#: written and closed, made, removed, renamed in or out, its mode or times changed, or the
#: directory itself gone.  Not IN_MODIFY: a file being written is looked at once closed
#: (a write that truncates first must never load as an empty policy)
POLICY_EVENTS = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE
                 | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)


class PolicyWatcher:
    """Notices a change to the policy file or drop-in directory by a cheap signature
    (name, inode, size, mtime of every ``*.toml``): it works for editors that save by
    rename and for files replaced by configuration management.

    With ``watch=True`` the directory (the file's, or the drop-in directory) is watched
    with inotify: :meth:`fileno` is then readable when the signature may have changed, so
    the daemon waits on it instead of polling every second (issue #16); it still compares
    every few seconds, for what inotify cannot see (a symlink's target elsewhere).
    :meth:`fileno` is None while no watch is set (the directory is missing): poll."""

    def __init__(self, path: str, *, watch: bool = False) -> None:
        self.path = Path(path)
        self._sig = self.signature()
        self._ino: Inotify | None = None
        self._wd: int | None = None
        self._where = self.path
        if watch:
            try:
                self._ino = Inotify()
            except OSError as e:
                log.warning("inotify unavailable: policy files polled every second",
                            extra={"error": e.strerror})
            self._arm()

    def _arm(self) -> None:
        """Watch the drop-in directory, or the directory the file is in (a drop-in
        directory not made yet: its parent, until it is made)."""
        if self._ino is None:
            return
        where = self.path if self.path.is_dir() else self.path.parent
        if self._wd is not None:
            if where == self._where:
                return
            self._ino.remove(self._wd)
            self._wd = None
        try:
            self._wd = self._ino.add(str(where), POLICY_EVENTS)
            self._where = where
        except OSError:
            self._wd = None   # missing for now: polled, and armed again at each check

    def fileno(self) -> int | None:
        """The descriptor to wait on (readable: look again), None: poll instead."""
        return self._ino.fd if self._ino is not None and self._wd is not None else None

    def drain(self) -> None:
        """Consume the queued events (the watch is set again if its directory went)."""
        if self._ino is None:
            return
        for wd, mask in self._ino.read():
            if wd == self._wd and mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                if not mask & IN_IGNORED:
                    self._ino.remove(wd)
                self._wd = None

    def signature(self) -> tuple[tuple[str, int, int, int], ...]:
        files = sorted(self.path.glob("*.toml")) if self.path.is_dir() else [self.path]
        out = []
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            out.append((f.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def changed(self) -> bool:
        self._arm()
        sig = self.signature()
        if sig != self._sig:
            self._sig = sig
            return True
        return False

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None
            self._wd = None


def now() -> datetime:
    return datetime.now(UTC)
