"""Recorded price plans: a past bill never follows a later edit of the policy's prices."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from governor.billing.cli import run_bill
from governor.billing.history import record_price_plans, with_recorded_prices
from governor.billing.report import invoice
from governor.policy.model import PriceVersion
from governor.store.models import PricePlanRow
from tests.helpers.db import db_url, engine, session  # noqa: F401
from tests.unit.test_billing_invoice import GIB, T0, T3, _meter, _policy

D = Decimal
V1 = PriceVersion(None, D("0.04"), D("0.005"), D("0.01"), D("0.02"), D("1"))
NOW = T3 + timedelta(days=1)


def _rows(session):  # noqa: F811
    # what is stored, not the session's identity map: record_price_plans writes with Core
    # statements (the daemon's path loads no ORM), which leave loaded objects as they were
    return session.execute(select(PricePlanRow).order_by(PricePlanRow.version)
                           .execution_options(populate_existing=True)).scalars().all()


def _cpu_amount(session, policy):  # noqa: F811
    inv = invoice(session=session, policy=with_recorded_prices(policy, session),
                  tenant="acme", start=T0, end=T3)
    return sum((x.amount for x in inv.lines if x.resource == "cpu"), D(0)), inv.currency


def test_recording_is_idempotent(session):  # noqa: F811
    assert record_price_plans(session=session, plans=_policy(V1).plans, now=NOW) == []
    assert record_price_plans(session=session, plans=_policy(V1).plans, now=NOW) == []
    [row] = _rows(session)
    assert (row.name, row.version, row.currency, row.effective) == ("std", 1, "EUR", None)
    assert row.cpu_core_hour == D("0.04")


def test_a_past_price_edited_in_the_policy_keeps_the_recorded_one(session):  # noqa: F811
    _meter(session)  # 3 core-hours in [T0, T3)
    record_price_plans(session=session, plans=_policy(V1).plans, now=T0)
    assert _cpu_amount(session, _policy(V1)) == (D("0.12"), "EUR")
    edited = _policy(PriceVersion(None, D("0.50"), D("0.005"), D("0.01"), D("0.02"), D("1")))
    conflicts = record_price_plans(session=session, plans=edited.plans, now=NOW)
    assert [(c.plan, c.field, c.recorded, c.policy) for c in conflicts] == [
        ("std", "cpu_core_hour", "0.04", "0.5")]
    assert "add a version with a later effective time" in str(conflicts[0])
    assert _rows(session)[0].cpu_core_hour == D("0.04")
    # the bill of the past period is unchanged, though the policy now says 0.50
    assert _cpu_amount(session, edited) == (D("0.12"), "EUR")
    # without any recorded history the policy is all there is
    assert invoice(session=session, policy=edited, tenant="acme", start=T0, end=T3
                   ).lines[0].amount == D("1.50")


def test_a_future_version_may_change_until_it_takes_effect(session):  # noqa: F811
    later = T0 + timedelta(days=30)
    v2 = PriceVersion(later, D("0.08"), D("0.005"), D("0.01"), D("0.02"), D("1"))
    record_price_plans(session=session, plans=_policy(V1, v2).plans, now=T0)
    v2b = PriceVersion(later, D("0.06"), D("0.005"), D("0.01"), D("0.02"), D("1"))
    assert record_price_plans(session=session, plans=_policy(V1, v2b).plans, now=T0) == []
    assert [r.cpu_core_hour for r in _rows(session)] == [D("0.04"), D("0.06")]
    # withdrawn before it took effect: gone
    assert record_price_plans(session=session, plans=_policy(V1).plans, now=T0) == []
    assert [r.effective for r in _rows(session)] == [None]
    # once in force it is fixed
    record_price_plans(session=session, plans=_policy(V1, v2).plans, now=T0)
    c = record_price_plans(session=session, plans=_policy(V1, v2b).plans,
                           now=later + timedelta(hours=1))
    assert [(x.field, x.recorded, x.policy) for x in c] == [("cpu_core_hour", "0.08", "0.06")]


def test_a_version_deleted_from_the_policy_still_prices_its_hours(session):  # noqa: F811
    _meter(session)
    mid = T0 + timedelta(hours=1)
    v2 = PriceVersion(mid, D("0.10"), D("0.005"), D("0.01"), D("0.02"), D("1"))
    record_price_plans(session=session, plans=_policy(V1, v2).plans, now=NOW)
    # the policy now has only a version from the beginning at 0.10: the recorded first
    # version (0.04, fixed) still prices the first hour
    only = _policy(PriceVersion(None, D("0.10"), D("0.005"), D("0.01"), D("0.02"), D("1")))
    assert _cpu_amount(session, only) == (D("0.04") + D("0.20"), "EUR")


def test_currency_change_is_refused_and_bills_keep_the_recorded_currency(session):  # noqa: F811
    _meter(session)
    record_price_plans(session=session, plans=_policy(V1).plans, now=T0)
    usd = _policy(V1, currency="USD")
    c = record_price_plans(session=session, plans=usd.plans, now=NOW)
    assert [(x.field, x.recorded, x.policy) for x in c] == [("currency", "EUR", "USD")]
    assert "make a new plan" in str(c[0])
    assert _cpu_amount(session, usd) == (D("0.12"), "EUR")


def test_bill_command_prices_from_the_recorded_history(engine, db_url, session):  # noqa: F811
    _meter(session)
    record_price_plans(session=session, plans=_policy(V1).plans, now=T0)
    session.commit()
    edited = _policy(PriceVersion(None, D("0.50"), D("0.005"), D("0.01"), D("0.02"), D("1")))
    out = io.StringIO()
    [inv] = run_bill(db_url, edited, tenant="acme", start=T0, end=T3, fmt="json", out=out)
    assert [x.amount for x in inv.lines if x.resource == "cpu"] == [D("0.12")]
    assert datetime.now(UTC) > T3


def test_an_applied_policy_records_its_price_plans(tmp_path):
    """The recorder of `governor policy apply` and of the daemon's reloads."""
    from governor.config import load_config
    from governor.enforce.record import db_recorder
    from governor.store.db import make_engine, upgrade
    from governor.store.models import AppliedPolicy

    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[database]\nurl = "{url}"\n[governor]\nnode = "n1"\n')
    recorder, why = db_recorder(load_config(cfg_file, environ={}))
    assert recorder is not None, why
    recorder("d1", "test", [], _policy(V1).plans)
    e = make_engine(url)
    with e.connect() as c:
        assert c.execute(select(AppliedPolicy.policy_hash)).scalars().all() == ["d1"]
        assert c.execute(select(PricePlanRow.name, PricePlanRow.cpu_core_hour)).all() == [
            ("std", D("0.04"))]
    e.dispose()


# --- the storage price (issue #19): a version recorded before it has it NULL -------------

def _storage_amount(session, policy):  # noqa: F811
    inv = invoice(session=session, policy=with_recorded_prices(policy, session),
                  tenant="acme", start=T0, end=T3)
    return sum((x.amount for x in inv.lines if x.resource == "storage"), D(0))


def _with_storage(price, *, cpu="0.04"):
    return _policy(PriceVersion(None, D(cpu), D("0.005"), D("0.01"), D("0.02"), D("1"),
                                storage_gib_hour=D(price)))


def test_a_storage_price_is_recorded_and_then_fixed(session):  # noqa: F811
    _meter(session, storage=10 * GIB)   # 30 GiB-hours in [T0, T3)
    assert record_price_plans(session=session, plans=_with_storage("0.01").plans,
                              now=T0) == []
    assert _rows(session)[0].storage_gib_hour == D("0.01")
    c = record_price_plans(session=session, plans=_with_storage("0.02").plans, now=NOW)
    assert [(x.field, x.recorded, x.policy) for x in c] == [
        ("storage_gib_hour", "0.01", "0.02")]
    assert _storage_amount(session, _with_storage("0.02")) == D("0.30")


def test_a_version_recorded_before_storage_was_priced_takes_the_policys_price(session):  # noqa: F811
    """A price_plans row from before migration 0002 has storage_gib_hour NULL: bills take
    the policy's storage price for that version (0 if the policy has no such version),
    and the next recording fills it in, in force or not, without calling it a conflict
    (no bill priced storage with it); from then on it is fixed."""
    _meter(session, storage=10 * GIB)
    record_price_plans(session=session, plans=_policy(V1).plans, now=T0)
    [row] = _rows(session)
    row.storage_gib_hour = None   # as migration 0002 leaves a row recorded by 0.1
    session.flush()
    assert _storage_amount(session, _with_storage("0.01")) == D("0.30")
    assert _cpu_amount(session, _with_storage("0.01", cpu="0.50")) == (D("0.12"), "EUR")
    # the policy no longer has the recorded version (only a later one): storage at 0
    other = _policy(PriceVersion(T3, D("0.04"), D("0.005"), D("0.01"), D("0.02"), D("1"),
                                 storage_gib_hour=D("9")))
    assert _storage_amount(session, other) == 0
    # recorded now, long after the version took effect: not a conflict
    assert record_price_plans(session=session, plans=_with_storage("0.01").plans,
                              now=NOW) == []
    assert _rows(session)[0].storage_gib_hour == D("0.01")
    assert _storage_amount(session, _with_storage("0.07")) == D("0.30")
    c = record_price_plans(session=session, plans=_with_storage("0.07").plans, now=NOW)
    assert [x.field for x in c] == ["storage_gib_hour"]
