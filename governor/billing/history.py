"""Price plans recorded in the database, so that a past bill never changes.

Prices live in the policy, and a policy is edited: a version's prices retyped, an old
version deleted, a plan renamed away.  A bill for a past period must not follow such an
edit.  So every applied policy's plans are *recorded* (:func:`record_price_plans`, called by
``governor run`` after each policy it applies and by ``governor policy apply``) into the
``price_plans`` table, one row per plan version keyed by (plan, effective time), and bills
read the plans through :func:`with_recorded_prices`:

* a version in force (effective time ``None`` or not after now) is **fixed**: a policy
  that later shows other prices for the same (plan, effective) does not change it.  The
  conflict is reported (a :class:`PriceConflict` per price, logged) with the right way to
  change prices: add a new version with a later ``effective`` time;
* a version whose effective time is still in the future may be edited or withdrawn
  until it takes effect: the row follows the policy (updated, or deleted when the policy drops it);
* a version deleted from the policy after it took effect stays recorded and keeps pricing
  the hours it covered; a plan removed from the policy stays billable for its tenants'
  past usage as long as the policy still names it for the tenant.

A plan's currency and memory basis are fixed by its first recording (every recorded price
is in them): a policy that changes either is a conflict, and that plan's versions are not
recorded until it is put back (or a new plan made).

The storage price (``storage_gib_hour``, issue #19) came after versions were recorded: a
version recorded before it (migration 0002) has it NULL, *not recorded yet*.  No bill
priced storage with such a version (nothing of the writable layers was metered before
0002), so it is not fixed: bills take the policy's storage price of the same version (0
when the policy no longer has it), and the next recording fills it in from the policy, in
force or not, without a conflict.  From then on it is fixed like every other price.

The registered controllers' prices (``hugetlb_gib_hour``, issue #17; recorded in
``price_plans.quantity_prices``, migration 0003) follow the storage price's rule, per key:
a version recorded before governor priced a key (NULL, or the key absent) takes the
policy's price of the same version, and the next recording fills it in.

For billing, the recorded versions of a plan win over the policy's for the same effective
time; versions only in the policy (a bill before anything was recorded, or a future
version not yet recorded) come from the policy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from governor.billing.generic import PRICE_KEYS
from governor.billing.plans import PolicyLike, PricePlanLike, PriceVersionLike, TenantLike
from governor.store.tables import price_plans as _PLANS

if TYPE_CHECKING:
    from governor.store.db import Executor

log = logging.getLogger("governor.billing")

_PRICES = ("cpu_core_hour", "memory_gib_hour", "io_read_gib", "io_write_gib", "oom_kill",
           "storage_gib_hour")


@dataclass(frozen=True)
class PriceConflict:
    """The policy shows other terms for a version that was already in force."""

    plan: str
    effective: datetime | None
    field: str
    recorded: str
    policy: str

    def __str__(self) -> str:
        when = "the first version" if self.effective is None else \
            f"the version effective {self.effective.isoformat()}"
        if self.field in ("currency", "memory_basis"):
            return (f"price plan {self.plan!r}: the policy says {self.field} = "
                    f"{self.policy}, but the plan was recorded with {self.recorded}; bills "
                    "keep the recorded one and the policy's prices are not recorded (for "
                    "another currency or memory basis, make a new plan)")
        return (f"price plan {self.plan!r}, {when}: the policy says {self.field} = "
                f"{self.policy}, but {self.recorded} was recorded while it was in force; "
                "past bills keep the recorded terms (to change prices, add a version with a "
                "later effective time)")


@dataclass(frozen=True)
class RecordedVersion:
    effective: datetime | None
    cpu_core_hour: Decimal
    memory_gib_hour: Decimal
    io_read_gib: Decimal
    io_write_gib: Decimal
    oom_kill: Decimal
    storage_gib_hour: Decimal
    quantity_prices: Mapping[str, Decimal] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class RecordedPlan:
    name: str
    currency: str
    memory_basis: str
    versions: Sequence[PriceVersionLike] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Policy:
    tenants: Mapping[str, TenantLike]
    plans: Mapping[str, PricePlanLike]


def _aware(d: datetime | None) -> datetime | None:
    if d is None or d.tzinfo is not None:
        return d
    return d.replace(tzinfo=UTC)


def _text(d: Decimal | str | int) -> str:
    return format(Decimal(d).normalize(), "f")


def _quantity_prices(v: PriceVersionLike) -> dict[str, str]:
    """The registered controllers' prices of a policy version, as recorded (text)."""
    return {k: _text(v.quantity_prices.get(k, 0)) for k in PRICE_KEYS}


def _terms(plan: PricePlanLike, v: PriceVersionLike) -> dict[str, str]:
    out = {"currency": plan.currency, "memory_basis": plan.memory_basis}
    out.update({k: format(Decimal(getattr(v, k)).normalize(), "f") for k in _PRICES})
    out.update(_quantity_prices(v))
    return out


def _row_terms(r: Any) -> dict[str, str]:
    out = {"currency": r.currency, "memory_basis": r.memory_basis}
    out.update({k: format(Decimal(getattr(r, k)).normalize(), "f") for k in _PRICES})
    out.update({k: _text(p) for k, p in (r.quantity_prices or {}).items() if k in PRICE_KEYS})
    return out


def record_price_plans(*, session: Executor, plans: Mapping[str, PricePlanLike],
                       now: datetime | None = None) -> list[PriceConflict]:
    """Record the plan versions of a policy being applied (see the module documentation);
    returns the conflicts with versions already in force (nothing of those is changed)."""
    now = now or datetime.now(UTC)
    conflicts: list[PriceConflict] = []
    for name, plan in sorted(plans.items()):
        # each recorded version as a mutable record: what changes is written at once
        rows = {_aware(r.effective): SimpleNamespace(**r._mapping) for r in session.execute(
            select(_PLANS).where(_PLANS.c.name == name))}
        top = session.execute(select(func.coalesce(func.max(_PLANS.c.version), 0))
                              .where(_PLANS.c.name == name)).scalar_one()
        base = min(rows.values(), key=lambda r: r.version) if rows else None
        if base is not None and (base.currency, base.memory_basis) != (plan.currency,
                                                                       plan.memory_basis):
            # the unit of every recorded price: fixed by the plan's first recording
            conflicts.extend(
                PriceConflict(name, _aware(base.effective), k, have, want)
                for k, have, want in (("currency", base.currency, plan.currency),
                                      ("memory_basis", base.memory_basis, plan.memory_basis))
                if have != want)
            continue
        wanted = {v.effective: v for v in plan.versions}
        for eff, v in sorted(wanted.items(), key=lambda kv: (kv[0] is not None, kv[0])):
            terms = _terms(plan, v)
            row = rows.get(eff)
            if row is not None and row.storage_gib_hour is None:
                # recorded before storage was priced: no bill has used it (see above)
                row.storage_gib_hour = Decimal(v.storage_gib_hour)
                session.execute(update(_PLANS).where(_PLANS.c.id == row.id).values(
                    storage_gib_hour=row.storage_gib_hour))
            if row is not None and not set(PRICE_KEYS) <= set(row.quantity_prices or {}):
                # a key recorded before governor priced it: filled in (see above)
                row.quantity_prices = {**_quantity_prices(v), **(row.quantity_prices or {})}
                session.execute(update(_PLANS).where(_PLANS.c.id == row.id).values(
                    quantity_prices=row.quantity_prices))
            if row is None:
                top += 1
                session.execute(_PLANS.insert().values(
                    name=name, version=top, currency=plan.currency,
                    memory_basis=plan.memory_basis, effective=eff, recorded_at=now,
                    quantity_prices=_quantity_prices(v),
                    **{k: Decimal(getattr(v, k)) for k in _PRICES}))
                continue
            have = _row_terms(row)
            if have == terms:
                continue
            if eff is None or eff <= now:  # in force: fixed
                conflicts.extend(PriceConflict(name, eff, k, have[k], terms[k])
                                 for k in terms if have[k] != terms[k])
                continue
            # a future version: it may still change
            row.currency, row.memory_basis, row.recorded_at = (plan.currency,
                                                               plan.memory_basis, now)
            for k in _PRICES:
                setattr(row, k, Decimal(getattr(v, k)))
            row.quantity_prices = _quantity_prices(v)
            session.execute(update(_PLANS).where(_PLANS.c.id == row.id).values(
                currency=row.currency, memory_basis=row.memory_basis,
                recorded_at=row.recorded_at, quantity_prices=row.quantity_prices,
                **{k: getattr(row, k) for k in _PRICES}))
        for eff, row in rows.items():  # withdrawn before they took effect
            if eff not in wanted and eff is not None and eff > now:
                session.execute(delete(_PLANS).where(_PLANS.c.id == row.id))
    for c in conflicts:
        log.error("price change refused for a version already in force", extra={
            "problem": str(c)})
    return conflicts


def with_recorded_prices(policy: PolicyLike, session: Executor) -> PolicyLike:
    """``policy`` with each plan's versions taken from the recorded history where there
    is one (see the module documentation)."""
    rows = session.execute(select(_PLANS).order_by(_PLANS.c.name, _PLANS.c.version)).all()
    if not rows:
        return policy
    by_plan: dict[str, list[Any]] = {}
    for r in rows:
        by_plan.setdefault(r.name, []).append(r)
    plans: dict[str, PricePlanLike] = dict(policy.plans)
    for name, recorded in by_plan.items():
        current = policy.plans.get(name)
        base = recorded[0]  # the first recording fixed the plan's currency and basis
        # the policy's versions count only in the recorded currency and basis
        in_policy: dict[datetime | None, PriceVersionLike] = {}
        if current is not None and (current.currency, current.memory_basis) == (
                base.currency, base.memory_basis):
            in_policy = {v.effective: v for v in current.versions}
        versions = dict(in_policy)
        for r in recorded:
            eff = _aware(r.effective)
            storage = r.storage_gib_hour
            if storage is None:  # not recorded yet (see the module documentation)
                same = in_policy.get(eff)
                storage = Decimal(0) if same is None else same.storage_gib_hour
            prices = {k: Decimal(getattr(r, k)) for k in _PRICES if k != "storage_gib_hour"}
            same = in_policy.get(eff)
            recorded_q = r.quantity_prices or {}
            quantity = {k: Decimal(recorded_q[k]) if k in recorded_q else
                        Decimal(0) if same is None else Decimal(same.quantity_prices.get(k, 0))
                        for k in PRICE_KEYS}
            versions[eff] = RecordedVersion(eff, storage_gib_hour=Decimal(storage),
                                            quantity_prices=quantity, **prices)
        ordered = sorted(versions.values(),
                         key=lambda v: (v.effective is not None, v.effective))
        plans[name] = RecordedPlan(name=name, currency=base.currency,
                                   memory_basis=base.memory_basis, versions=tuple(ordered))
    return _Policy(tenants=policy.tenants, plans=plans)
