"""Putting processes where the policy says: on process-connector events and on rescans.

Decisions (docs/placement.md has the user's version):

* A process outside the governor's subtree is classified by the first matching rule in
  policy order (:mod:`governor.placement.rules`) and moved into that group.
* **Sticky**: a process inside the subtree (placed earlier, launched there, or a child of
  such a process: the kernel puts a child in its parent's cgroup at fork) stays where it is.
  Only a rule with ``on_exec = true`` moves it, and only when it calls exec.
* **Containers**: a process in a pid namespace other than the governor's is placed with its
  whole namespace.  The namespace is classified once, by its init (the process whose last
  NSpid is 1): the init's group when it is already inside the subtree, else the first rule
  the init matches.  Every member of the namespace then goes to that group.
* **Never moved**: kernel threads (PF_KTHREAD, or kthreadd's pid 2 and its children), the
  governor itself, and processes whose cgroup matches an exclusion glob (unless the rule
  that matches them names a ``cgroup``).
* **Moves kept fast**: for ``keep_warm`` seconds after a move, the listener
  (:mod:`governor.placement.listener`) repeats a no-op migration every
  ``keep_warm_interval`` (:class:`governor.cgroupfs.keepwarm.MigrationWarmer`), so the next
  move does not wait for an RCU grace period; ``favordynmods`` makes that wait go for good.
  The window opens only while at least ``keep_warm_min_rate`` moves were made within the
  last second (:class:`governor.placement.warm.KeepWarmGate`): below that rate its writes
  would cost more per move than the move itself.
* **Races**: a process is held by a pidfd before anything about it is read, and the write
  happens only while that pidfd says it has not exited (so its pid cannot have been
  reused; without pidfds the start time is read again and compared); ESRCH on the write
  means the process exited (counted as ``gone``); EINVAL for a task still being created
  is retried by :func:`tree.move`; children a process forks while it is being moved are
  followed: its children still in its old cgroup are moved after it, and fork events of
  a recently moved parent are checked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Final

from governor.cgroupfs import tree
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.config import DEFAULT_EXCLUDE, KEEP_WARM_MIN_RATE
from governor.errors import CgroupError
from governor.placement import netlink
from governor.placement.counters import Counters
from governor.placement.listener import IDLE_TIMEOUT, Listener
from governor.placement.procfs import KTHREADD_PID, Proc, ProcessGone, host_pidns, pids
from governor.placement.rules import CompiledRule, ContainerView, Exclusions, RuleSet
from governor.policy.model import Policy

#: with IDLE_TIMEOUT, which moved to .listener and a test imports from here
__all__ = ["FOLLOW_WINDOW", "IDLE_TIMEOUT", "Placer"]

log = logging.getLogger("governor.placement")

#: systemd's own units, left alone unless a rule's ``cgroup`` names them
#: how long after a move a fork of the moved process is checked (children followed)
FOLLOW_WINDOW: Final = 2.0


class Placer(Listener):
    """Classifies and moves processes.  ``policy`` is a callable returning the policy in
    force (the daemon passes ``lambda: enforcer.policy``), re-read on every event so a
    reload takes effect at once; the rules are recompiled when it changes."""

    def __init__(self, fs: CgroupFS, subtree: Layout | str,
                 policy: Callable[[], Policy | None], *,
                 exclude: tuple[str, ...] = DEFAULT_EXCLUDE, proc_root: str = "/proc",
                 self_pid: int | None = None,
                 rules_factory: Callable[[Policy | None], RuleSet] = RuleSet.from_policy,
                 nice: int | None = None, keep_warm: float = 0.0,
                 keep_warm_interval: float = 0.004,
                 keep_warm_min_rate: int = KEEP_WARM_MIN_RATE,
                 start_scope: Callable[[str, int], None] | None = None) -> None:
        super().__init__(fs, Counters(), proc_root=proc_root, nice=nice, keep_warm=keep_warm,
                         keep_warm_interval=keep_warm_interval,
                         keep_warm_min_rate=keep_warm_min_rate)
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        #: the systemd driver: ``(tenant/group, pid)`` starts the group's scope (gone or
        #: never made) with that process in it; moves write to the scope's cgroup.procs
        self.start_scope = start_scope
        self.policy_fn = policy
        self.proc_root = proc_root
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self.exclusions = Exclusions(exclude)
        self._rules_factory = rules_factory
        self._policy: Policy | None = None
        self.rules = RuleSet()
        self._rules_ready = False
        self.host_ns = host_pidns(proc_root)
        self.cv = ContainerView(self.host_ns, self._init_comm)
        self._ns_target: dict[int, str] = {}       # pid namespace -> "tenant/group"
        self._ns_init: dict[int, tuple[int, int]] = {}  # ns -> (init pid, starttime)
        self._recent: dict[int, tuple[str, float]] = {}  # moved pid -> (target, when)
        self._lock = threading.RLock()
        self._rescan_now = threading.Event()
        self._logged_errors: set[tuple[str, int]] = set()
        self.procs = tree.ProcsWriter(fs)  # cgroup.procs fds kept open per target group

    # -- policy --------------------------------------------------------------------------
    def _refresh(self) -> None:
        pol = self.policy_fn()
        if pol is self._policy and self._rules_ready:
            return
        self._policy = pol
        self.rules = self._rules_factory(pol)
        self._rules_ready = True
        self._ns_target.clear()
        self._ns_init.clear()
        self.procs.close()  # groups may have gone with the old policy
        for label, why in self.rules.unresolved:
            log.warning("placement rule can never match", extra={"rule": label, "why": why})

    def rel(self, target: str) -> str:
        """``tenant/group`` -> where its placed processes go, relative to the mount."""
        return self.layout.placement_path(target)

    def _target_of(self, cgroup_path: str) -> str | None:
        """A cgroup inside the subtree -> its group (None when outside the subtree)."""
        return self.layout.group_of(cgroup_path)

    def managed(self, cgroup_path: str) -> bool:
        return self.layout.managed(cgroup_path)

    # -- counting ------------------------------------------------------------------------
    def _count(self, result: str) -> None:
        self.counters.placements[result] += 1

    # -- containers ----------------------------------------------------------------------
    def _find_init(self, p: Proc, ns: int) -> Proc:
        """The init of ``ns``: ``p`` or its nearest ancestor whose last NSpid is 1 (orphans
        in a pid namespace are re-parented to its init); the topmost ancestor inside ``ns``
        when none says 1."""
        known = self._ns_init.get(ns)
        if known is not None:
            cand = Proc(self.proc_root, known[0])
            with contextlib.suppress(ProcessGone, OSError):
                if cand.stat().starttime == known[1] and cand.pidns() == ns:
                    return cand
        cur = p
        for _ in range(64):
            nspid = cur.status().nspid
            if nspid and nspid[-1] == 1:
                break
            parent = cur.stat().ppid
            if parent <= 0:
                break
            up = Proc(self.proc_root, parent)
            try:
                if up.pidns() != ns:
                    break
            except ProcessGone:
                break
            cur = up
        self._ns_init[ns] = (cur.pid, cur.stat().starttime)
        return cur

    def _init_comm(self, p: Proc, ns: int) -> str | None:
        try:
            return self._find_init(p, ns).comm()
        except ProcessGone:
            return None

    def _container_target(self, p: Proc, ns: int) -> str | None:
        """The group of the container ``ns`` (decided once, by its init)."""
        target = self._ns_target.get(ns)
        if target is not None:
            return target
        init = self._find_init(p, ns)
        cg = init.cgroup()
        target = self._target_of(cg)
        if target is None:
            rule = self._choose(init, cg, exec_=False)
            if rule is None:
                return None
            target = rule.target
        self._ns_target[ns] = target
        return target

    # -- classification ------------------------------------------------------------------
    def _choose(self, p: Proc, cg: str, *, exec_: bool, count_noop: bool = True,
                first: CompiledRule | None = None) -> CompiledRule | None:
        """The rule for a host process in cgroup ``cg`` (None: leave it alone).  ``first``:
        the first rule it matches, when the caller has it already."""
        if self.managed(cg):
            if not exec_:
                return None
            if first is not None and first.on_exec:
                return first
            return self.rules.first(p, self.cv, on_exec_only=True)
        rule = first if first is not None else self.rules.first(p, self.cv)
        if rule is not None and rule.cgroup is None and self.exclusions(cg):
            rule = self.rules.first(p, self.cv, cgroup_only=True)
            if rule is None and count_noop:
                self._count("excluded")
        return rule

    def classify(self, pid: int, *, exec_: bool = False, count_noop: bool = True) -> str | None:
        """Decide and place one process; returns the result counted (None: no decision)."""
        if pid in (self.self_pid, KTHREADD_PID):
            return None
        with Proc(self.proc_root, pid) as p:
            try:
                # pinned before the first read (the move checks it is still this process)
                st = p.probe()
                if st.kthread or st.ppid == KTHREADD_PID:
                    return None
                ns = p.pidns()
                if ns != self.host_ns:
                    target = self._container_target(p, ns)
                    if target is None:
                        return None
                    return self._place(p, target, st.starttime, count_noop=count_noop)
                # a process no rule matches is left alone wherever it is: its cgroup is
                # read only when a rule needs it (most exec events end here)
                first = self.rules.first(p, self.cv)
                if first is None:
                    return None
                rule = self._choose(p, p.cached_cgroup(), exec_=exec_,
                                    count_noop=count_noop, first=first)
                if rule is None:
                    return None
                return self._place(p, rule.target, st.starttime, count_noop=count_noop)
            except ProcessGone:
                return None

    def _place(self, p: Proc, target: str, starttime: int, *, count_noop: bool,
               depth: int = 0) -> str | None:
        old = p.cached_cgroup()
        if self.layout.placed(old, target):
            if count_noop:
                self._count("already")
                return "already"
            return None
        if p.pid == self.self_pid:
            return None
        result = self._move(p.pid, target, starttime, p)
        if result == "moved" and depth < 8:
            # children forked before (or while) the parent moved stay with it
            for child in p.children():
                with Proc(self.proc_root, child) as cp:
                    try:
                        cp.pin()
                        if cp.cgroup() == old and not cp.stat().kthread:
                            self._place(cp, target, cp.stat().starttime, count_noop=False,
                                        depth=depth + 1)
                    except ProcessGone:
                        continue
        return result

    def _move(self, pid: int, target: str, starttime: int, p: Proc) -> str:
        if not p.same_process(starttime):  # it exited (its pid may be reused) since we read
            self._count("gone")
            return "gone"
        try:
            try:
                self.procs.move(self.rel(target), pid)
            except CgroupError as e:
                if self.start_scope is None or e.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
                self.start_scope(target, pid)  # the group's scope, begun with this process
        except CgroupError as e:
            if e.errno == errno.ESRCH:
                self._count("gone")
                return "gone"
            self._count("error")
            key = (target, e.errno)
            if key not in self._logged_errors:  # once per group and errno, not per process
                self._logged_errors.add(key)
                hint = " (run `governor policy apply`)" if e.errno == errno.ENOENT else ""
                log.error("cannot place process" + hint,
                          extra={"pid": pid, "group": target, "error": str(e)})
            return "error"
        self._count("moved")
        now = time.monotonic()
        if self.keep_warm > 0:
            self._warm_after_move(now)
        self._recent[pid] = (target, now)
        if len(self._recent) > 4096:
            self._recent = {k: v for k, v in self._recent.items()
                            if now - v[1] < FOLLOW_WINDOW}
        return "moved"

    # -- events --------------------------------------------------------------------------
    def _on_fork(self, parent: int, child: int) -> None:
        recent = self._recent.get(parent)
        if recent is not None and time.monotonic() - recent[1] < FOLLOW_WINDOW:
            with Proc(self.proc_root, child) as p:
                try:
                    p.pin()
                    st = p.stat()
                    p.cgroup()
                    self._place(p, recent[0], st.starttime, count_noop=False)
                except ProcessGone:
                    pass
            return
        if child == self.self_pid:
            return
        try:
            ns = Proc(self.proc_root, child).pidns()
            if ns == self.host_ns:
                return  # the kernel already put the child in its parent's group
            with Proc(self.proc_root, child) as p:  # pinned, then looked at again
                p.pin()
                if p.pidns() != ns:
                    return
                target = self._container_target(p, ns)
                if target is not None:
                    p.cgroup()
                    self._place(p, target, p.stat().starttime, count_noop=True)
        except ProcessGone:
            pass

    def handle(self, ev: netlink.ProcEvent) -> None:
        """React to one connector event (thread-safe)."""
        t0 = time.perf_counter()
        what = ev.what
        with self._lock:
            self._refresh()
            c = self.counters
            name = ev.name
            c.events[name] = c.events.get(name, 0) + 1
            if what == netlink.PROC_EVENT_EXIT:
                if ev.pid == ev.tgid:
                    self._recent.pop(ev.tgid, None)
            elif not self.rules.rules:
                pass
            elif what == netlink.PROC_EVENT_FORK:
                if ev.pid == ev.tgid:  # a new process, not a new thread
                    self._on_fork(ev.ptgid, ev.tgid)
            elif what == netlink.PROC_EVENT_EXEC:
                self.classify(ev.tgid, exec_=True)
            elif what in (netlink.PROC_EVENT_UID, netlink.PROC_EVENT_GID):
                self.classify(ev.tgid, exec_=False)
            dt = time.perf_counter() - t0
            c.handle_seconds += dt
            c.handle_max_seconds = max(c.handle_max_seconds, dt)
            by = c.handle_seconds_by_event
            by[name] = by.get(name, 0.0) + dt
            mx = c.handle_max_seconds_by_event
            if dt > mx.get(name, 0.0):
                mx[name] = dt

    def rescan(self) -> dict[str, int]:
        """Classify every process in ``/proc`` (start-up, interval, after an overflow).
        Returns the placements made by this pass, by result."""
        before = dict(self.counters.placements)
        with self._lock:
            self._refresh()
            self.counters.rescans += 1
            if not self.rules.rules:
                return {}
            # a namespace decision is re-derived each pass (its init may have changed group)
            self._ns_target.clear()
        for pid in pids(self.proc_root):
            with self._lock:
                self.classify(pid, count_noop=False)
        return {k: v - before[k] for k, v in self.counters.placements.items()
                if v != before[k]}

    def stop(self) -> None:
        super().stop()
        self.procs.close()

    def jobs(self, interval: float) -> list[tuple[str, float, Callable[[], object]]]:
        """The daemon's periodic job: a full rescan every ``interval`` seconds."""
        return [("placement-rescan", interval, self.rescan)]
