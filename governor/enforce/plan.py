"""Diff the desired state against what the kernel has: an ordered plan of writes.

Ordering rules (each a kernel constraint or a safety choice):

* a group is created (controllers enabled top-down through every ancestor's
  ``cgroup.subtree_control``) before any of its files is written, parents before children;
* memory: protections (``memory.min``, ``memory.low``) first; when the hard limit goes
  *down*, ``memory.high`` is written before ``memory.max`` so the group is throttled and
  reclaimed before it can be OOM-killed at the new ceiling; when it goes *up*,
  ``memory.max`` is raised first;
* ``cpu.max`` before ``cpu.max.burst`` (the kernel refuses a burst above the quota), except
  when the quota goes below the current burst: then the burst is lowered first;
* groups that left the policy are removed deepest first, and only when empty: a populated
  one is kept with its limits as they are (governor never kills a tenant's processes
  because a file changed);
* only what governor made is ever removed (issue #15): with the cgroupfs driver a
  directory carrying its mark (``trusted.governor.managed`` = the subtree, set at mkdir),
  with nothing unmarked or delegated below it; anything else (a runtime's scope, a second
  instance's subtree, what an operator made) is left and the plan says so in a note.
  Tenants and groups are looked for two levels down; below a group nothing is governor's.
  A directory an earlier governor made carries no mark: one the policy names is adopted
  (marked), one it does not name is never removed.

Values are compared as the kernel reads them back: memory sizes are rounded down to the
page size (the kernel stores pages), ``io.max`` lines compared field by field.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from governor.cgroupfs import parse
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.names import display_path
from governor.cgroupfs.ownership import delegated_here, managed_by, not_ours
from governor.cgroupfs.tree import ancestors, populated
from governor.controllers import memory, registry
from governor.enforce.desired import DesiredGroup, DesiredState
from governor.errors import CgroupError, GovernorError, GroupGone

PAGE = os.sysconf("SC_PAGE_SIZE")

#: what the kernel has in a new group, used when a key leaves the policy
#: (each controller module's ``defaults``, governor/controllers/)
KERNEL_DEFAULTS = registry.kernel_defaults()
#: the memory sizes, rounded down to the page size by the kernel (memory.SIZES: the key
#: names are the files)
_MEMORY_SIZES = tuple(k.name for k in memory.SIZES)


@dataclass(frozen=True)
class Action:
    """One step of a plan.  ``kind``: create | enable | set | mark | remove | keep | note
    (``mark``: an existing directory the policy names is marked as governor's)."""

    kind: str
    path: str                    # relative to the cgroup mount ("" = the mount root)
    file: str | None = None
    old: str | None = None       # None: the file or group does not exist yet
    new: str | None = None
    reason: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind in ("create", "enable", "set", "mark", "remove")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def __str__(self) -> str:
        sym = {"create": "+", "enable": "+", "set": "~", "mark": "*", "remove": "-",
               "keep": "=", "note": "!"}[self.kind]
        where = "/" + self.path + (f" {self.file}" if self.file else "")
        if self.kind == "set":
            old = "(absent)" if self.old is None else self.old
            text = f"{sym} set     {where}: {old} -> {self.new}"
        elif self.kind == "note":
            return f"{sym} note    {self.reason}"
        else:
            text = f"{sym} {self.kind:<7} {where}"
            if self.new:
                text += f" {self.new}"
        return text + (f"  ({self.reason})" if self.reason else "")


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    digest: str = ""
    #: the mark of the directories this plan creates and may remove (the cgroupfs driver:
    #: its subtree); None where governor makes no directories (systemd makes the slices)
    owner: str | None = None

    @property
    def writes(self) -> list[Action]:
        return [a for a in self.actions if a.is_write]

    def summary(self) -> dict[str, int]:
        out = dict.fromkeys(("create", "enable", "set", "mark", "remove", "keep", "note"), 0)
        for a in self.actions:
            out[a.kind] += 1
        return out

    def summary_line(self) -> str:
        s = self.summary()
        if not self.writes:
            return ("No changes: the kernel matches the policy"
                    + (f" ({s['keep']} kept, {s['note']} notes)" if s["keep"] or s["note"]
                       else "") + ".")
        return (f"Plan: {s['create']} to create, {s['set']} to change, {s['enable']} "
                f"controller enables, {s['remove']} to remove, {s['keep']} kept, "
                f"{s['note']} notes" + (f", {s['mark']} to mark as governor's"
                                        if s["mark"] else "") + ".")


# -- comparing values as the kernel reads them ---------------------------------------------
def _norm_size(text: str) -> parse.Limit:
    v = parse.parse_limit(text)
    return v if v == parse.MAX else (int(v) // PAGE) * PAGE


def same(file: str, current: str, desired: str) -> bool:
    """Whether the kernel's ``current`` text already holds ``desired``."""
    try:
        if file in _MEMORY_SIZES:
            return _norm_size(current) == _norm_size(desired)
        if file == "pids.max":
            return parse.parse_limit(current) == parse.parse_limit(desired)
        if file == "cpu.max":
            return parse.parse_cpu_max(current) == parse.parse_cpu_max(desired)
        if file == "io.weight":
            return parse.parse_io_weight(current).default == parse.parse_io_weight(
                desired).default
        if file == "io.max":
            want = parse.parse_nested_keyed(desired)
            have = parse.parse_nested_keyed(current)
            for dev, fields in want.items():
                cur = have.get(dev, {})
                for k, v in fields.items():
                    if cur.get(k, parse.MAX) != v:
                        return False
            return True
        return current.split() == desired.split()
    except parse.ParseError:
        return False


def _io_max_line(current: str, dev: str) -> str | None:
    for line in current.splitlines():
        if line.split(" ", 1)[0] == dev:
            return line.strip()
    return None


def _order_group_sets(sets: list[Action], current: dict[str, str]) -> list[Action]:
    """Apply the memory.high/memory.max and cpu.max/cpu.max.burst ordering rules."""
    by_file = {a.file: a for a in sets if a.file not in ("io.max",)}
    order = [a.file for a in sets]

    def before(first: str, second: str) -> None:
        if first in by_file and second in by_file:
            i, j = order.index(first), order.index(second)
            if i > j:
                order.insert(j, order.pop(i))

    mx = by_file.get("memory.max")
    if mx is not None and mx.new is not None:
        cur = current.get("memory.max")
        lowering = cur is not None and _lower(mx.new, cur)
        if lowering:
            before("memory.high", "memory.max")
        else:
            before("memory.max", "memory.high")
    cm = by_file.get("cpu.max")
    burst = current.get("cpu.max.burst")
    if cm is not None and cm.new is not None and burst is not None:
        quota = parse.parse_cpu_max(cm.new).quota
        if quota != parse.MAX and int(quota) < int(burst.strip() or 0):
            before("cpu.max.burst", "cpu.max")
        else:
            before("cpu.max", "cpu.max.burst")
    else:
        before("cpu.max", "cpu.max.burst")
    # stable re-assembly (io.max lines keep their place)
    ranked: list[Action] = []
    io = [a for a in sets if a.file == "io.max"]
    for f in order:
        if f == "io.max":
            if io:
                ranked.extend(io)
                io = []
        else:
            ranked.append(by_file[f])
    return ranked


def _lower(new: str, cur: str) -> bool:
    n, c = _norm_size(new), _norm_size(cur.strip())
    if n == parse.MAX:
        return False
    return c == parse.MAX or int(n) < int(c)


# -- the diff -----------------------------------------------------------------------------
def _group_actions(fs: CgroupFS, path: str, want: DesiredGroup,
                   previous: DesiredGroup | None) -> list[Action]:
    out: list[Action] = []
    files = list(want.files)
    # keys that were in the previously applied policy and are gone now: back to the
    # kernel's default (a removed limit must not linger)
    if previous is not None:
        wanted_files = {f for f, _ in files}
        wanted_dev = {v.split(" ", 1)[0] for f, v in files if f == "io.max"}
        for f, v in previous.files:
            if f == "io.max":
                dev = v.split(" ", 1)[0]
                if dev not in wanted_dev:
                    files.append((f, f"{dev} rbps=max wbps=max riops=max wiops=max"))
            elif f not in wanted_files:
                default = KERNEL_DEFAULTS.get(f)
                if default is None:   # a generic controller's file (cpuset.cpus: "")
                    default = registry.kernel_default(f)
                if default is not None:
                    files.append((f, default))
    if not fs.exists(path):
        out.append(Action("create", path, new=enable_text(want.enable) if want.enable
                          else None, reason=want.kind))
        new_sets = [Action("set", path, f, None, v) for f, v in files]
        return out + _order_group_sets(new_sets, {})
    if want.enable:
        try:
            have = set(parse.parse_list(fs.read(path, "cgroup.subtree_control")))
        except CgroupError:
            have = set()
        missing = [c for c in want.enable if c not in have]
        if missing:
            out.append(Action("enable", path, "cgroup.subtree_control",
                              " ".join(sorted(have)) or None,
                              " ".join("+" + c for c in missing)))
    current: dict[str, str] = {}
    sets: list[Action] = []
    for f, v in files:
        if f not in current:
            try:
                current[f] = fs.read(path, f)
            except GroupGone:
                raise
            except CgroupError:
                current[f] = ""  # absent (controller not enabled yet): must be written
        cur = current[f]
        if cur and same(f, cur, v):
            continue
        old = _io_max_line(cur, v.split(" ", 1)[0]) if f == "io.max" else cur.strip() or None
        sets.append(Action("set", path, f, old, v))
    return out + _order_group_sets(sets, {k: v for k, v in current.items() if v})


def _removals(fs: CgroupFS, layout: Layout, desired: DesiredState,
              owner: str | None) -> list[Action]:
    out: list[Action] = []
    wanted = set()
    for p in desired.groups:
        with contextlib.suppress(GovernorError):  # unspellable: noted by make_plan
            wanted.add(layout.path(p))

    def visit(path: str, depth: int) -> None:
        for child in fs.children(path):
            if not layout.is_group_dir(child):
                continue  # a scope (systemd collects it), or no group of this layout
            cpath = f"{path}/{child}"
            if cpath in wanted:
                # tenants hold groups; below a group (a runtime's scopes) and below a
                # delegated directory nothing is governor's
                if depth < 2 and not (owner is not None and delegated_here(fs, cpath)):
                    visit(cpath, depth + 1)
                continue
            try:
                why = not_ours(fs, cpath, owner) if owner is not None else None
                busy = populated(fs, cpath)
            except CgroupError:
                continue
            shown = display_path(cpath)
            if why is not None:
                out.append(Action("note", shown, reason=f"/{shown} not in the policy, left "
                                  f"as it is: {why}"))
            elif busy:
                out.append(Action("keep", cpath, reason="left the policy but has processes: "
                                  "its limits stay as they are until it is empty"))
            else:
                out.append(Action("remove", cpath, reason="left the policy, empty"))

    if fs.exists(layout.subtree):
        visit(layout.subtree, 1)
    return out


def _adoptions(fs: CgroupFS, path: str, owner: str) -> list[Action]:
    """A directory the policy names that carries no mark (an earlier governor made it, or
    an operator did for it): marked now, so it can be removed once the policy drops it.
    One marked by another governor (another subtree) is never taken: a note."""
    mark = managed_by(fs, path)
    if mark == owner:
        return []
    if mark is None:
        return [Action("mark", path, new=owner, reason="named by the policy, made before "
                       "governor marked its directories: adopted")]
    return [Action("note", path, reason=f"/{path} is named by the policy but was made by the "
                   f"governor of {mark}: it will never be removed by this one")]


def _block_devices(sys_block: Path) -> dict[str, str]:
    """MAJ:MIN -> name of real block devices (those with a queue scheduler)."""
    out: dict[str, str] = {}
    try:
        entries = sorted(sys_block.iterdir())
    except OSError:
        return out
    for d in entries:
        if d.name.startswith(("loop", "ram", "zram", "nbd", "sr")):
            continue
        try:
            dev = (d / "dev").read_text().strip()
            (d / "queue" / "scheduler").stat()
        except OSError:
            continue
        out[dev] = d.name
    return out


def _iocost_actions(fs: CgroupFS, desired: DesiredState, iocost_devices: Iterable[str],
                    sys_block: Path) -> list[Action]:
    uses_weight = any(f == "io.weight" for g in desired.groups.values() for f, _ in g.files)
    devices = _block_devices(sys_block)
    try:
        qos = parse.parse_nested_keyed(fs.read("", "io.cost.qos"))
    except (CgroupError, parse.ParseError):
        qos = {}
    out: list[Action] = []
    enable: set[str] = set()
    for d in iocost_devices:
        dev = d
        if d.startswith("/"):
            try:
                st = os.stat(d)
                dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            except OSError:
                out.append(Action("note", "", reason=f"enforce.iocost_devices: {d} does not "
                                  "exist; iocost not enabled on it"))
                continue
        enable.add(dev)
        if qos.get(dev, {}).get("enable") != 1:
            out.append(Action("set", "", "io.cost.qos", None, f"{dev} enable=1",
                              reason="iocost so that io.weight takes effect "
                                     "(enforce.iocost_devices)"))
    if uses_weight:
        for dev, name in devices.items():
            if dev in enable or qos.get(dev, {}).get("enable") == 1:
                continue
            try:
                sched = (sys_block / name / "queue" / "scheduler").read_text()
            except OSError:
                sched = ""
            if "[bfq]" in sched:
                continue
            out.append(Action("note", "", reason=(
                f"io.weight has no effect on {dev} ({name}): neither iocost nor BFQ is "
                f"active there; set enforce.iocost_devices = [\"/dev/{name}\"] to have "
                "governor enable iocost")))
    return out


def make_plan(fs: CgroupFS, subtree: Layout | str, desired: DesiredState, *,
              previous: DesiredState | None = None, iocost_devices: Iterable[str] = (),
              sys_block: str | Path = "/sys/block",
              only: Collection[str] | None = None, sweep: bool = False) -> Plan:
    """Read the kernel's current state below the subtree and diff it with ``desired``.

    ``fs`` is rooted at the cgroup mount; every path in the plan is below the subtree, as
    ``subtree`` (a layout, or the subtree of the ``cgroupfs`` layout) places each group.
    ``previous`` is the desired state last applied (keys it had that ``desired`` lacks are
    reset to the kernel's defaults).  Where systemd makes the groups, controllers are its
    business (no ``enable`` actions) and a file it cannot express is a note, not a write.
    Reads only: nothing is written.

    ``only`` (a reconcile told by :class:`~governor.enforce.drift.DriftWatch` which groups
    changed, and whose turn it is in its rolling sweep) plans those groups alone; with
    ``sweep`` (the round's first reconcile) also the IO cost model and the removals, which
    a whole plan (``only`` None) always has.
    """
    layout = as_layout(subtree)
    owner = layout.subtree if layout.makes_dirs else None
    plan = Plan(digest=desired.digest, owner=owner)
    if only is None or sweep:
        plan.actions.extend(_iocost_actions(fs, desired, iocost_devices, Path(sys_block)))
    root = layout.subtree
    wanted = desired.controllers()
    if not fs.exists(root):
        plan.actions.append(Action("create", root, new=(
            enable_text(wanted) if layout.manages_controllers else None),
            reason="the governor's subtree"))
    elif layout.manages_controllers:
        plan.actions.extend(_enables(fs, root, wanted))
    prev = previous.groups if previous is not None else {}
    for rel, group in desired.groups.items():
        if only is not None and rel not in only:
            continue
        try:
            path = layout.path(rel)
        except GovernorError as e:  # a name the driver cannot spell: the others go on
            plan.actions.append(Action("note", "", reason=f"{rel} not governed: {e}"))
            continue
        want, before = group, prev.get(rel)
        if not layout.manages_controllers:
            want, before, notes = _expressible(layout, path, want, before)
            plan.actions.extend(notes)
        actions = _group_actions(fs, path, want, before)
        if owner is not None and (not actions or actions[0].kind != "create"):
            actions[:0] = _adoptions(fs, path, owner)
        plan.actions.extend(actions)
    if only is not None and not sweep:
        return plan
    removals = _removals(fs, layout, desired, owner)
    # deepest first
    removals.sort(key=lambda a: -a.path.count("/"))
    plan.actions.extend(removals)
    return plan


def enable_text(controllers: Iterable[str]) -> str:
    """A create action's ``new``: the controllers it enables for the group's children
    (:func:`enabled_by` reads them back)."""
    return "enable " + " ".join(controllers) + " for children"


def enabled_by(a: Action) -> list[str] | None:
    """The controllers a create action enables for its children (None: a leaf)."""
    if a.new is None or not a.new.startswith("enable "):
        return None
    return a.new.split()[1:-2]


def _enables(fs: CgroupFS, root: str, wanted: tuple[str, ...]) -> list[Action]:
    """Enable actions for the subtree: every controller ``wanted`` in its own
    ``cgroup.subtree_control``; a generic controller (beyond the managed four) also
    top-down through its ancestors, whose own are the host's business."""
    from governor.cgroupfs.managed import MANAGED_CONTROLLERS

    extra = [c for c in wanted if c not in MANAGED_CONTROLLERS]
    out: list[Action] = []
    for path in [*ancestors(root), root] if extra else [root]:
        want = wanted if path == root else extra
        have = set(parse.parse_list(fs.read(path, "cgroup.subtree_control")))
        missing = [c for c in want if c not in have]
        if missing:
            out.append(Action("enable", path, "cgroup.subtree_control",
                              " ".join(sorted(have)) or None,
                              " ".join("+" + c for c in missing)))
    return out


def _expressible(layout: Layout, path: str, want: DesiredGroup,
                 previous: DesiredGroup | None
                 ) -> tuple[DesiredGroup, DesiredGroup | None, list[Action]]:
    """``want`` (and ``previous``) without the files ``layout``'s manager cannot set, and
    a note for each one left out; no controllers enabled by governor."""
    notes = [Action("note", path, f, reason=f"/{path} {f} not set: {why}")
             for f, _ in want.files if (why := layout.unsettable(f)) is not None]
    keep = tuple((f, v) for f, v in want.files if layout.unsettable(f) is None)
    want = replace(want, files=keep, enable=())
    if previous is not None:
        previous = replace(previous, files=tuple(
            (f, v) for f, v in previous.files if layout.unsettable(f) is None), enable=())
    return want, previous, notes
