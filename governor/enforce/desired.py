"""The desired state: which groups exist below the subtree and what their files hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

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

    def controllers(self) -> tuple[str, ...]:
        """The controllers the subtree enables for its tenants: the managed ones, then
        those of the generic controllers' files anywhere in the policy (cpuset...)."""
        return self._controllers

    @cached_property
    def _controllers(self) -> tuple[str, ...]:
        # once per state: every plan asks (a reconcile of 50 groups among 10,000 too)
        return (*MANAGED_CONTROLLERS, *extra_controllers(
            f for g in self.groups.values() for f, _ in g.files))


def extra_controllers(files: Iterable[str]) -> tuple[str, ...]:
    """The controllers of ``files`` beyond the managed four, sorted: enabled top-down only
    where the policy writes one of their files (a host without cpuset governs as before
    until a policy names a cpuset key)."""
    return tuple(sorted({f.split(".", 1)[0] for f in files} - set(MANAGED_CONTROLLERS)))


def desired_state(policy: Policy) -> DesiredState:
    """Tenants are inner nodes enabling every managed controller for their groups (so a
    later policy can set any limit without re-creating anything), and a generic
    controller (cpuset) when one of their groups writes its files; groups are leaves."""
    groups: dict[str, DesiredGroup] = {}
    for tenant in policy.tenants.values():
        extra = extra_controllers(f for g in tenant.groups.values()
                                  for f, _ in g.limits.files())
        groups[tenant.name] = DesiredGroup(tenant.name, "tenant", tuple(tenant.limits.files()),
                                           (*MANAGED_CONTROLLERS, *extra))
        for g in tenant.groups.values():
            groups[g.path] = DesiredGroup(g.path, "group", tuple(g.limits.files()))
    return DesiredState(groups, policy.digest)
