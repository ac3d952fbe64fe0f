"""Usage reports and invoices read from a database URL: what ``governor usage`` and
``governor bill`` print (the commands in :mod:`governor.billing.cli` only parse and
render).  Each call connects, checks the schema, reads and disposes of the engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select

from governor.billing.history import with_recorded_prices
from governor.billing.plans import PolicyLike
from governor.billing.report import By, Invoice, UsageReport, invoice, usage_report
from governor.store.db import check_schema, connect, database_errors, session_factory
from governor.store.models import Tenant


def read_usage(database_url: str, *, tenant: str | None, start: datetime, end: datetime,
               by: By = "group") -> UsageReport:
    """The usage report (see :func:`governor.billing.report.usage_report`)."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            check_schema(engine)
            with session_factory(engine)() as session:
                return usage_report(session=session, tenant=tenant, start=start, end=end,
                                    by=by)
    finally:
        engine.dispose()


def make_invoices(database_url: str, policy: PolicyLike, *, tenant: str | None,
                  start: datetime, end: datetime,
                  tenants_known: Callable[[int], None] | None = None,
                  invoiced: Callable[[Invoice], None] | None = None) -> list[Invoice]:
    """The invoices of ``tenant`` (or of every tenant of the policy and database).  Prices
    come from the recorded price plans where the database has them
    (:mod:`governor.billing.history`: a past bill never follows a later edit of the
    policy), else from ``policy``.  ``tenants_known(n)`` is called once the tenants to
    bill are known, ``invoiced(invoice)`` after each (a progress bar)."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"), session_factory(engine)() as session:
            check_schema(engine)
            policy = with_recorded_prices(policy, session)
            if tenant is not None:
                tenants: Sequence[str] = [tenant]
            else:
                metered = set(session.execute(select(Tenant.name)).scalars())
                tenants = sorted(set(policy.tenants) | metered)
            if tenants_known is not None:
                tenants_known(len(tenants))
            invoices: list[Invoice] = []
            for t in tenants:
                invoices.append(invoice(session=session, policy=policy, tenant=t,
                                        start=start, end=end))
                if invoiced is not None:
                    invoiced(invoices[-1])
        return invoices
    finally:
        engine.dispose()
