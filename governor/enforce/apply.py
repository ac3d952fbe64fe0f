"""Carry a plan out through the cgroupfs choke point, reporting every write's outcome.

A failing write is reported and the rest of the plan goes on (one bad device line must not
leave every other tenant unenforced); the writes of a group that could not be created are
skipped and reported as such.  Validation happened before the plan was made, so nothing is
half-applied because of a bad *file*; what can still fail here is the kernel refusing a
value, which the outcome names with path, file, value and errno.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.ownership import mark_managed
from governor.cgroupfs.tree import create, enable_controllers, remove
from governor.enforce.plan import Action, Plan, enabled_by
from governor.errors import CgroupError, GovernorError
from governor.failpoint import failpoint


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    error: str | None = None
    errno: int | None = None
    skipped: bool = False

    def as_dict(self) -> dict[str, object]:
        return {**self.action.as_dict(), "ok": self.ok, "error": self.error,
                "errno": self.errno, "skipped": self.skipped}

    def __str__(self) -> str:
        if self.skipped:
            return f"SKIP {self.action}: {self.error}"
        return f"{'OK  ' if self.ok else 'FAIL'} {self.action}" + (
            f": {self.error}" if self.error else "")


def _do(fs: CgroupFS, a: Action, owner: str | None) -> None:
    """One write; ``owner`` (the plan's) marks what is made and bounds what is removed."""
    if a.kind == "create":
        # an inner node enables what its action names (the managed controllers, and a
        # generic one such as cpuset that a group below writes), top-down from the root
        inner = enabled_by(a)
        create(fs, a.path, MANAGED_CONTROLLERS if inner is None else inner,
               enable_for_children=inner is not None, owner=owner)
    elif a.kind == "enable":
        assert a.new is not None
        enable_controllers(fs, a.path, [c.lstrip("+") for c in a.new.split()])
    elif a.kind == "set":
        assert a.file is not None and a.new is not None
        fs.write(a.path, a.file, a.new)
    elif a.kind == "mark":
        assert a.new is not None
        mark_managed(fs, a.path, a.new)
    elif a.kind == "remove":
        remove(fs, a.path, owner=owner)


#: carries out one write action (the cgroupfs writes below, or the systemd driver's calls)
Executor = Callable[[Action], None]


def apply_plan(fs: CgroupFS, plan: Plan, *,
               on_outcome: Callable[[Outcome], None] | None = None,
               before: Callable[[Action], None] | None = None,
               execute: Executor | None = None) -> list[Outcome]:
    """Execute the writes of ``plan`` in order; returns one outcome per write action.

    ``before`` is called with each write action just before it is made (metering notes a
    group's birth before the directory exists, so no sample can see it first).
    ``execute`` carries out each action (default: the cgroupfs writes); it raises a
    :class:`GovernorError` for a refusal."""
    run: Executor = execute if execute is not None else (lambda a: _do(fs, a, plan.owner))
    outcomes: list[Outcome] = []
    failed_groups: set[str] = set()
    for a in plan.actions:
        if not a.is_write:
            continue
        blocked = next((g for g in failed_groups
                        if a.path == g or a.path.startswith(g + "/")), None)
        if blocked is not None:
            o = Outcome(a, False, f"group {blocked} could not be created", skipped=True)
        else:
            try:
                if before is not None:
                    before(a)
                failpoint("enforce.apply.write")  # crash tests: die mid-apply
                run(a)
                o = Outcome(a, True)
            except CgroupError as e:
                o = Outcome(a, False, str(e), e.errno)
                if a.kind == "create":
                    failed_groups.add(a.path)
            except GovernorError as e:
                o = Outcome(a, False, str(e))
                if a.kind == "create":
                    failed_groups.add(a.path)
        outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)
    return outcomes
