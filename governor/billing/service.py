"""Usage reports and invoices read from a database URL: what ``governor usage`` and
``governor bill`` print (the commands in :mod:`governor.billing.cli` only parse and
render).  Each call connects, checks the schema, reads and disposes of the engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select

from governor.billing.history import with_recorded_prices
from governor.billing.idle import NodeCostReport, NodeCostsLike, node_costs
from governor.billing.plans import PolicyLike
from governor.billing.report import By, Invoice, UsageReport, invoice, usage_report
from governor.billing.sliced import Granularity, SlicedInvoice, sliced_invoice
from governor.store.db import (
    Executor,
    check_schema,
    connect,
    database_errors,
    session_factory,
)
from governor.store.models import Tenant

_Bill = TypeVar("_Bill", Invoice, SlicedInvoice)


def read_usage(database_url: str, *, tenant: str | None, start: datetime, end: datetime,
               by: By = "group", node: str | None = None) -> UsageReport:
    """The usage report (see :func:`governor.billing.report.usage_report`); ``node``: of
    that node only."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            check_schema(engine)
            with session_factory(engine)() as session:
                return usage_report(session=session, tenant=tenant, start=start, end=end,
                                    by=by, node=node)
    finally:
        engine.dispose()


def read_node_costs(database_url: str, costs: NodeCostsLike, *, tenant: str | None,
                    start: datetime, end: datetime, by: Granularity | None = None
                    ) -> NodeCostReport:
    """The node costs shared out (:func:`governor.billing.idle.node_costs`)."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            check_schema(engine)
            with session_factory(engine)() as session:
                return node_costs(session=session, costs=costs, start=start, end=end,
                                  by=by, tenant=tenant)
    finally:
        engine.dispose()


def make_invoices(database_url: str, policy: PolicyLike, *, tenant: str | None,
                  start: datetime, end: datetime,
                  tenants_known: Callable[[int], None] | None = None,
                  invoiced: Callable[[Invoice], None] | None = None,
                  node: str | None = None) -> list[Invoice]:
    """The invoices of ``tenant`` (or of every tenant of the policy and database).  Prices
    come from the recorded price plans where the database has them
    (:mod:`governor.billing.history`: a past bill never follows a later edit of the
    policy), else from ``policy``.  ``tenants_known(n)`` is called once the tenants to
    bill are known, ``invoiced(invoice)`` after each (a progress bar).  ``node``: that
    node's share of each (:mod:`governor.billing.nodes`)."""
    def bill(session: Executor, priced: PolicyLike, t: str) -> Invoice:
        return invoice(session=session, policy=priced, tenant=t, start=start, end=end,
                       node=node)

    return _bills(database_url, policy, tenant, bill=bill, tenants_known=tenants_known,
                  invoiced=invoiced)


def make_sliced_invoices(database_url: str, policy: PolicyLike, *, tenant: str | None,
                         start: datetime, end: datetime, by: Granularity,
                         tenants_known: Callable[[int], None] | None = None,
                         invoiced: Callable[[SlicedInvoice], None] | None = None,
                         node: str | None = None) -> list[SlicedInvoice]:
    """:func:`make_invoices`, each invoice split per node and per hour, day or month
    (:func:`governor.billing.sliced.sliced_invoice`): what ``--format focus`` writes."""
    def bill(session: Executor, priced: PolicyLike, t: str) -> SlicedInvoice:
        return sliced_invoice(session=session, policy=priced, tenant=t, start=start,
                              end=end, by=by, node=node)

    return _bills(database_url, policy, tenant, bill=bill, tenants_known=tenants_known,
                  invoiced=invoiced)


def _bills(database_url: str, policy: PolicyLike, tenant: str | None, *,
           bill: Callable[[Executor, PolicyLike, str], _Bill],
           tenants_known: Callable[[int], None] | None,
           invoiced: Callable[[_Bill], None] | None) -> list[_Bill]:
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
            invoices: list[_Bill] = []
            for t in tenants:
                invoices.append(bill(session, policy, t))
                if invoiced is not None:
                    invoiced(invoices[-1])
        return invoices
    finally:
        engine.dispose()
