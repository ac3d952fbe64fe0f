"""The desired state: which groups exist below the subtree and what their files hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.policy import Policy


@dataclass(frozen=True)
class DesiredGroup:
    """One group the policy wants: ``path`` relative to the governor's subtree."""

    path: str
    kind: str                                    # "tenant" (inner node) | "group" (leaf)
    files: tuple[tuple[str, str], ...]           # (interface file, kernel value), in order
    enable: tuple[str, ...] = ()                 # controllers enabled for its children


@dataclass(frozen=True)
class DesiredState:
    groups: dict[str, DesiredGroup] = field(default_factory=dict)  # path -> group, parents first
    digest: str = ""

    @property
    def tenants(self) -> list[str]:
        return [p for p, g in self.groups.items() if g.kind == "tenant"]


def desired_state(policy: Policy) -> DesiredState:
    """Tenants are inner nodes enabling every managed controller for their groups (so a
    later policy can set any limit without re-creating anything); groups are leaves."""
    groups: dict[str, DesiredGroup] = {}
    for tenant in policy.tenants.values():
        groups[tenant.name] = DesiredGroup(tenant.name, "tenant", tuple(tenant.limits.files()),
                                           MANAGED_CONTROLLERS)
        for g in tenant.groups.values():
            groups[g.path] = DesiredGroup(g.path, "group", tuple(g.limits.files()))
    return DesiredState(groups, policy.digest)
