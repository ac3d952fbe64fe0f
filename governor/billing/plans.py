"""What billing needs from the policy, as Protocols.

:mod:`governor.policy.model` (``Policy``, ``Tenant``, ``PricePlan``, ``PriceVersion``) fits
these; billing depends only on the attributes listed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from governor.billing.errors import NoPricePlan, UnknownTenant


class PriceVersionLike(Protocol):
    @property
    def effective(self) -> datetime | None: ...
    @property
    def cpu_core_hour(self) -> Decimal: ...
    @property
    def memory_gib_hour(self) -> Decimal: ...
    @property
    def io_read_gib(self) -> Decimal: ...
    @property
    def io_write_gib(self) -> Decimal: ...
    @property
    def oom_kill(self) -> Decimal: ...
    @property
    def storage_gib_hour(self) -> Decimal: ...
    @property
    def quantity_prices(self) -> Mapping[str, Decimal]: ...


class PricePlanLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def versions(self) -> Sequence[PriceVersionLike]: ...
    @property
    def memory_basis(self) -> str: ...


class TenantLike(Protocol):
    @property
    def plan(self) -> str | None: ...


class PolicyLike(Protocol):
    @property
    def tenants(self) -> Mapping[str, TenantLike]: ...
    @property
    def plans(self) -> Mapping[str, PricePlanLike]: ...


def plan_for(policy: PolicyLike, tenant: str, *, known_tenants: set[str]) -> PricePlanLike:
    """The price plan of ``tenant``; :class:`UnknownTenant` / :class:`NoPricePlan` otherwise."""
    entry = policy.tenants.get(tenant)
    if entry is None:
        if tenant in known_tenants:
            raise NoPricePlan(f"tenant {tenant!r} is no longer in the policy, so it has no "
                              f"price plan: add it back with a plan to bill its past usage")
        raise UnknownTenant(tenant, known=sorted(set(policy.tenants) | known_tenants))
    if entry.plan is None:
        raise NoPricePlan(f"tenant {tenant!r} has no price plan: set tenants.{tenant}.plan")
    plan = policy.plans.get(entry.plan)
    if plan is None:
        raise NoPricePlan(f"tenant {tenant!r} names plan {entry.plan!r}, which is not defined")
    return plan


def version_segments(plan: PricePlanLike, start: datetime, end: datetime
                     ) -> list[tuple[datetime, datetime, int, PriceVersionLike]]:
    """``(from, to, version index, version)`` covering ``[start, end)`` in order.

    A version applies from its effective time (``None``: from the beginning) until the next
    one's.  :class:`NoPricePlan` when part of the period is before the first version.
    """
    versions = sorted(enumerate(plan.versions),
                      key=lambda iv: (iv[1].effective is not None, iv[1].effective))
    out: list[tuple[datetime, datetime, int, PriceVersionLike]] = []
    for pos, (idx, v) in enumerate(versions):
        v_from = v.effective
        v_to = versions[pos + 1][1].effective if pos + 1 < len(versions) else None
        a = start if v_from is None else max(start, v_from)
        b = end if v_to is None else min(end, v_to)
        if a < b:
            out.append((a, b, idx, v))
    if not out or out[0][0] > start:
        first = out[0][0] if out else end
        raise NoPricePlan(f"plan {plan.name!r} has no price for {start.isoformat()} to "
                          f"{first.isoformat()} (its first version starts later)")
    return out
