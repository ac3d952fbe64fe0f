"""The systemd cgroup driver: the plan's actions as unit calls, processes into scopes.

As runc's and kubelet's systemd drivers do, governor never writes a cgroup that systemd
owns.  The subtree, each tenant and each group is a transient slice made with
``StartTransientUnit`` and changed with ``SetUnitProperties``; every limit is a unit
property (see :mod:`governor.systemd.units`).  Processes live in scopes below their
group's slice, delegated to governor (``Delegate=yes``): the first process placed into a
group starts its ``<group>-placed.scope``, later ones are written to that scope's
``cgroup.procs`` (inside a unit delegated to governor), and each ``governor launch`` runs
in a scope of its own, like ``systemd-run --scope``.

Nothing here belongs to the daemon's unit: stopping, restarting or killing
``governor.service`` leaves every slice and scope, with its limits and processes, where it
is; a new governor adopts them (the plan finds the cgroups as they are).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from governor.cgroupfs.tree import populated
from governor.errors import CgroupError, GovernorError
from governor.systemd.units import ACCOUNTING, Property, SliceLayout, unit_properties

if TYPE_CHECKING:
    from governor.cgroupfs.files import CgroupFS
    from governor.enforce.apply import Executor
    from governor.enforce.plan import Action, Plan
    from governor.systemd.bus import Systemd

log = logging.getLogger("governor.systemd")


class SystemdDriver:
    """Carries out plans and placements through systemd for one :class:`SliceLayout`."""

    name = "systemd"

    def __init__(self, layout: SliceLayout, bus: Systemd, fs: CgroupFS, *,
                 proc_root: str = "/proc") -> None:
        self.layout = layout
        self.bus = bus
        self.fs = fs
        #: procfs, to tell a pid that is gone from a failed start (tests: a fake)
        self.proc_root = proc_root
        self._version: int | None = None

    @property
    def version(self) -> int:
        if self._version is None:
            self._version = self.bus.version()
        return self._version

    def close(self) -> None:
        self.bus.close()

    # -- the plan ------------------------------------------------------------------------
    def _description(self, rel: str) -> str:
        if not rel:
            return "governor: tenants"
        kind = "group" if "/" in rel else "tenant"
        return f"governor {kind} {rel}"

    def _unit_of(self, a: Action) -> tuple[str, str]:
        unit = a.path.rsplit("/", 1)[-1]
        rel = self.layout.rel_of_unit(unit)
        if rel is None or self.layout.path(rel) != a.path:
            raise GovernorError(f"/{a.path} is no slice of governor's subtree "
                                f"{self.layout.slice}: the systemd driver only acts on its "
                                "own slices")
        return unit, rel

    def properties(self, file: str, value: str) -> list[Property]:
        return unit_properties(file, value, version=self.version)

    def executor(self, plan: Plan) -> Executor:
        """``apply_plan``'s executor for ``plan``: a slice is started with every property
        the plan sets on it (one call, no drop-ins); those sets are then done."""
        born: dict[str, list[Property]] = {}
        for a in plan.actions:
            if a.kind == "create":
                born[a.path] = []
            elif a.kind == "set" and a.path in born and a.file is not None \
                    and a.new is not None:
                try:
                    born[a.path].extend(self.properties(a.file, a.new))
                except GovernorError:  # reported by its own set, after a plain start
                    del born[a.path]
        started: set[str] = set()

        def run(a: Action) -> None:
            if a.kind == "create" and a.path in born:
                self.execute(a, extra=born[a.path])
                started.add(a.path)
            elif a.kind == "set" and a.path in started:
                return  # set with the start
            else:
                self.execute(a)

        return run

    def execute(self, a: Action, *, extra: Sequence[Property] = ()) -> None:
        """One write action of a plan, as systemd calls.  ``extra``: more properties for
        a slice being started."""
        from governor.systemd.bus import UnitExists

        if a.path == "" and a.kind == "set" and a.file == "io.cost.qos":
            # enforce.iocost_devices: the root's io.cost.qos, which systemd leaves alone
            assert a.new is not None
            self.fs.write("", a.file, a.new)
            return
        unit, rel = self._unit_of(a)
        if a.kind == "create":
            props: list[Property] = [("Description", ("s", self._description(rel))),
                                     *ACCOUNTING, *extra]
            try:
                self.bus.start_transient_unit(unit, props)
            except UnitExists:
                # made by systemd on demand (a scope named it as its Slice=) or left by a
                # stopped governor: take it as it is, with the properties wanted
                self.bus.set_unit_properties(unit, props[1:])
        elif a.kind == "set":
            assert a.file is not None and a.new is not None
            self.bus.set_unit_properties(unit, self.properties(a.file, a.new))
        elif a.kind == "remove":
            # the plan removes only empty groups; a process placed since then keeps it
            # (stopping a slice stops every unit in it: never with a tenant's process)
            if populated(self.fs, a.path):
                raise GovernorError(f"/{a.path} has processes again: {unit} is kept")
            self.bus.stop_unit(unit)
        else:
            raise GovernorError(f"{a.kind} {a.path}: systemd manages the controllers of "
                                f"{unit}; governor does not write {a.file}")

    # -- processes -----------------------------------------------------------------------
    def _scope_props(self, rel: str, pids: Sequence[int], what: str) -> list[Property]:
        return [("Description", ("s", f"governor {what} of {rel}")),
                ("Slice", ("s", self.layout.unit(rel))),
                ("PIDs", ("au", [int(p) for p in pids])),
                ("Delegate", ("b", True)),
                ("CollectMode", ("s", "inactive-or-failed"))]

    def _cgroup_error(self, op: str, path: str, pid: int, e: GovernorError) -> CgroupError:
        gone = not os.path.exists(os.path.join(self.proc_root, str(pid)))
        return CgroupError(op, str(self.fs.path(path)), None,
                           errno.ESRCH if gone else errno.EIO, value=str(pid),
                           hint=str(e))

    def start_scope(self, rel: str, pid: int) -> None:
        """Placement into group ``rel`` found no scope: start ``<group>-placed.scope``
        with ``pid`` in it (or, when it exists after all, attach ``pid`` to it).  Raises
        :class:`CgroupError` as a failed ``cgroup.procs`` write would (ESRCH: gone)."""
        from governor.systemd.bus import UnitExists

        scope = self.layout.scope(rel)
        try:
            try:
                self.bus.start_transient_unit(scope, self._scope_props(rel, [pid], "placed"))
            except UnitExists:
                self.bus.attach_processes(scope, [pid])
        except GovernorError as e:
            raise self._cgroup_error("start scope", self.layout.placement_path(rel), pid,
                                     e) from e
        log.info("scope started", extra={"scope": scope, "group": rel, "pid": pid})

    def launch_scope(self, rel: str, pid: int | None = None) -> str:
        """``governor launch``: a scope of its own in group ``rel`` holding ``pid`` (this
        process by default), like ``systemd-run --scope``; returns its cgroup path
        relative to the mount (children forked from then on start inside it)."""
        pid = os.getpid() if pid is None else pid
        scope = self.layout.scope(rel, f"launch-{pid}")
        try:
            self.bus.start_transient_unit(scope, self._scope_props(rel, [pid], "launch"))
        except GovernorError as e:
            raise self._cgroup_error("start scope", f"{self.layout.path(rel)}/{scope}", pid,
                                     e) from e
        return f"{self.layout.path(rel)}/{scope}"
