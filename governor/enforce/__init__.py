"""Policy -> desired state -> plan (a diff against what the kernel has) -> apply.

* :mod:`.desired` turns a validated :class:`~governor.policy.Policy` into the groups and
  file values the kernel should have;
* :mod:`.plan` reads the kernel's current values and diffs them into ordered actions;
* :mod:`.apply` carries the actions out through the cgroupfs choke point and reports
  each one's outcome;
* :mod:`.keeper` keeps it true: reload on change (the old policy stays on a bad one) and
  a reconcile pass that restores drift.
"""

from governor.enforce.apply import Outcome, apply_plan
from governor.enforce.desired import DesiredGroup, DesiredState, desired_state
from governor.enforce.plan import Action, Plan, make_plan

__all__ = ["Action", "DesiredGroup", "DesiredState", "Outcome", "Plan", "apply_plan",
           "desired_state", "make_plan"]
