"""``governor usage`` and ``governor bill``.

The lead's ``governor/cli.py`` owns ``--config``/``--database`` and loads the configuration;
these commands read ``ctx.obj.database_url`` (str) and ``ctx.obj.policy`` (a loaded
:class:`governor.policy.model.Policy`, only touched by ``bill``).  The work itself is in
:func:`run_usage` and :func:`run_bill`, callable without click.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import select

from governor.billing.errors import InvalidPeriod
from governor.billing.formats import FORMATS, render_invoices, render_usage
from governor.billing.history import with_recorded_prices
from governor.billing.plans import PolicyLike
from governor.billing.report import By, Invoice, invoice, usage_report
from governor.store.db import check_schema, connect, database_errors, session_factory
from governor.store.models import Tenant


def _parse_time(value: str, what: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidPeriod(f"{what} {value!r} is not a date or time (use 2026-11-01 or "
                            f"2026-11-01T12:00Z)") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_period(period: str | None, start: str | None, end: str | None,
                 *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``--period YYYY-MM`` (a UTC calendar month) or ``--from``/``--to`` (``--to`` defaults
    to now); dates without a time are midnight UTC."""
    if period is not None:
        if start is not None or end is not None:
            raise InvalidPeriod("give either --period or --from/--to, not both")
        try:
            first = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
        except ValueError as exc:
            raise InvalidPeriod(f"--period {period!r} is not a month like 2026-11") from exc
        nxt = (first + timedelta(days=32)).replace(day=1)
        return first, nxt
    if start is None:
        raise InvalidPeriod("give --period YYYY-MM or --from (and optionally --to)")
    a = _parse_time(start, "--from")
    b = _parse_time(end, "--to") if end is not None else (now or datetime.now(UTC))
    if a >= b:
        raise InvalidPeriod(f"empty or inverted period: --from {a.isoformat()} is not before "
                            f"--to {b.isoformat()}")
    return a, b


def run_usage(database_url: str, *, tenant: str | None, start: datetime, end: datetime,
              by: By = "group", fmt: str = "table", out: TextIO | None = None) -> None:
    """Print the usage report (see :func:`governor.billing.report.usage_report`)."""
    out = out or sys.stdout
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            check_schema(engine)
            with session_factory(engine)() as session:
                report = usage_report(session=session, tenant=tenant, start=start, end=end,
                                      by=by)
        render_usage(report, fmt, out)
    finally:
        engine.dispose()


def run_bill(database_url: str, policy: PolicyLike, *, tenant: str | None, start: datetime,
             end: datetime, fmt: str = "table", out: TextIO | None = None) -> list[Invoice]:
    """Print the invoices of ``tenant`` (or of every tenant of the policy and database) and
    return them.  Prices come from the recorded price plans where the database has them
    (:mod:`governor.billing.history`: a past bill never follows a later edit of the
    policy), else from ``policy``.  A progress bar shows on stderr when stdout is a
    terminal."""
    out = out or sys.stdout
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
            invoices: list[Invoice] = []
            show = out.isatty() and len(tenants) > 1
            with Progress(console=Console(stderr=True), transient=True,
                          disable=not show) as progress:
                task = progress.add_task("billing", total=len(tenants))
                for t in tenants:
                    invoices.append(invoice(session=session, policy=policy, tenant=t,
                                            start=start, end=end))
                    progress.advance(task)
        render_invoices(invoices, fmt, out)
        return invoices
    finally:
        engine.dispose()


_period_options = [
    click.option("--tenant", default=None, help="Only this tenant (default: all)."),
    click.option("--from", "start", default=None, help="Start (UTC), e.g. 2026-11-01."),
    click.option("--to", "end", default=None, help="End (UTC, exclusive); default now."),
    click.option("--period", default=None, help="A UTC calendar month, e.g. 2026-11."),
]


def _with_period(f: Any) -> Any:
    for option in reversed(_period_options):
        f = option(f)
    return f


@click.command("usage")
@_with_period
@click.option("--by", type=click.Choice(["hour", "day", "group", "node"]), default="group",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.pass_obj
def usage_command(obj: Any, *, tenant: str | None, start: str | None, end: str | None,
                  period: str | None, by: By, fmt: str) -> None:
    """Usage per hour, day, group or node, from the hourly rollups."""
    a, b = parse_period(period, start, end)
    run_usage(obj.database_url, tenant=tenant, start=a, end=b, by=by, fmt=fmt)


@click.command("bill")
@_with_period
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table",
              show_default=True)
@click.pass_obj
def bill_command(obj: Any, *, tenant: str | None, start: str | None, end: str | None,
                 period: str | None, fmt: str) -> None:
    """Invoices: per group and resource, priced by the tenant's plan."""
    a, b = parse_period(period, start, end)
    run_bill(obj.database_url, obj.policy, tenant=tenant, start=a, end=b, fmt=fmt)
