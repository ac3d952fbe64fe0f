"""Policy files: TOML -> validated, typed :class:`Policy`; units, conversions and problems.

Read with :func:`load_policy` (files or ``policy.d`` directories); every problem is collected
into one :class:`PolicyInvalid`.  The format is documented in ``docs/policy.md``.
"""

from governor.policy.context import DeviceResolver, stat_block_device
from governor.policy.loader import check_policy, load_policy, parse_policy
from governor.policy.model import (
    ContainerMatch,
    Group,
    IoMax,
    Limits,
    MatchRule,
    OomSettings,
    Policy,
    PressureKey,
    PricePlan,
    PriceVersion,
    Tenant,
)
from governor.policy.problems import PolicyInvalid, Problem
from governor.policy.units import MAX, CpuMax, Size

__all__ = [
    "MAX",
    "ContainerMatch",
    "CpuMax",
    "DeviceResolver",
    "Group",
    "IoMax",
    "Limits",
    "MatchRule",
    "OomSettings",
    "Policy",
    "PolicyInvalid",
    "PressureKey",
    "PricePlan",
    "PriceVersion",
    "Problem",
    "Size",
    "Tenant",
    "check_policy",
    "load_policy",
    "parse_policy",
    "stat_block_device",
]
