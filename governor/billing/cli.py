"""``governor usage`` and ``governor bill``: they parse the period and print; the reading
is :mod:`governor.billing.service`'s.  :func:`run_usage` and :func:`run_bill` print a
report or invoices for parsed values, callable without click."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO, TypeVar

import click

from governor.billing.errors import InvalidPeriod
from governor.billing.focus import render_focus
from governor.billing.formats import FORMATS, render_invoices, render_usage
from governor.billing.idle import NodeCostsLike, require_node_costs
from governor.billing.idle_formats import render_focus_node_costs, render_with_node_costs
from governor.billing.plans import PolicyLike
from governor.billing.report import By, Invoice
from governor.billing.service import (
    make_invoices,
    make_sliced_invoices,
    read_node_costs,
    read_usage,
)
from governor.billing.sliced import GRANULARITIES, Granularity, SlicedInvoice
from governor.clikit import config_options
from governor.config import Config

F = TypeVar("F", bound=Callable[..., Any])


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
              by: By = "group", fmt: str = "table", out: TextIO | None = None,
              node: str | None = None) -> None:
    """Print the usage report (see :func:`governor.billing.report.usage_report`)."""
    report = read_usage(database_url, tenant=tenant, start=start, end=end, by=by, node=node)
    render_usage(report, fmt, out or sys.stdout)


def run_bill(database_url: str, policy: PolicyLike, *, tenant: str | None, start: datetime,
             end: datetime, fmt: str = "table", by: Granularity | None = None,
             out: TextIO | None = None, node: str | None = None,
             node_costs: NodeCostsLike | None = None, legacy_columns: bool = False
             ) -> list[Invoice] | list[SlicedInvoice]:
    """Print the invoices of ``tenant`` (or of every tenant of the policy and database,
    see :func:`governor.billing.service.make_invoices`) and return them.  ``fmt`` focus
    writes FinOps FOCUS rows per node and per ``by`` (hour, day or month; default month:
    :func:`governor.billing.service.make_sliced_invoices`); the other formats show one
    line per group, resource and price version, so ``by`` is for focus only.  A progress
    bar shows on stderr when stdout is a terminal.  ``node``: that node's share of each
    bill (the node bills add up to the fleet's exactly: :mod:`governor.billing.nodes`).
    ``node_costs``: the policy's node costs shared out after the invoices
    (:mod:`governor.billing.idle_formats`), warnings on stderr.  ``legacy_columns``: focus
    rows with :data:`governor.billing.focus.LEGACY_COLUMNS` too."""
    from rich.console import Console
    from rich.progress import Progress

    if by is not None and fmt != "focus":
        raise InvalidPeriod(f"--by {by} slices the rows of --format focus only (--format "
                            f"{fmt} shows one line per group, resource and price version "
                            f"for the whole period): use --format focus, or leave --by out")
    if by is not None and by not in GRANULARITIES:
        raise InvalidPeriod(f"--by {by!r}: use hour, day or month")
    if node_costs is not None:
        require_node_costs(node_costs)  # before the invoices are read
    out = out or sys.stdout
    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("billing")

    def known(n: int) -> None:
        progress.update(task, total=n)
        if out.isatty() and n > 1:
            progress.start()

    try:
        if fmt == "focus":
            sliced = make_sliced_invoices(database_url, policy, tenant=tenant, start=start,
                                          end=end, by=by or "month", tenants_known=known,
                                          invoiced=lambda _: progress.advance(task),
                                          node=node)
        else:
            invoices = make_invoices(database_url, policy, tenant=tenant, start=start,
                                     end=end, tenants_known=known,
                                     invoiced=lambda _: progress.advance(task), node=node)
    finally:
        progress.stop()
    report = None if node_costs is None else read_node_costs(
        database_url, node_costs, tenant=tenant, start=start, end=end,
        by=(by or "month") if fmt == "focus" else None)
    for warning in report.warnings if report is not None else ():
        click.echo(f"governor: warning: {warning}", err=True)
    if fmt == "focus":
        render_focus(sliced, out, legacy=legacy_columns)
        if report is not None:
            render_focus_node_costs(report, out, legacy=legacy_columns)
        return sliced
    if report is not None:
        render_with_node_costs(invoices, report, fmt, out)
    else:
        render_invoices(invoices, fmt, out)
    return invoices


def _period(func: F) -> F:
    for opt in reversed([
        click.option("--tenant", default=None, help="only this tenant (default: all)"),
        click.option("--from", "start", default=None, help="start (UTC), e.g. 2026-11-01"),
        click.option("--to", "end", default=None, help="end (UTC, exclusive); default now"),
        click.option("--period", default=None, help="a UTC calendar month, e.g. 2026-11"),
        click.option("--node", default=None, metavar="NAME",
                     help="only this node's (default: the whole fleet)"),
    ]):
        func = opt(func)
    return func


@click.command("usage")
@config_options
@_period
@click.option("--by", type=click.Choice(["hour", "day", "group", "node"]), default="group",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
def usage_command(cfg: Callable[[], Config], *, tenant: str | None, start: str | None,
                  end: str | None, period: str | None, by: By, fmt: str,
                  node: str | None) -> None:
    """Usage per hour, day, group or node, from the hourly rollups (``--node``: of one
    node)."""
    a, b = parse_period(period, start, end)
    run_usage(cfg().database_url, tenant=tenant, start=a, end=b, by=by, fmt=fmt, node=node)


@click.command("bill")
@config_options
@_period
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="table",
              show_default=True)
@click.option("--by", type=click.Choice(list(GRANULARITIES)), default=None,
              help="with --format focus: one row per node and UTC hour, day or month "
                   "(ChargePeriodStart/End)  [default: month]")
@click.option("--legacy-columns", is_flag=True, default=False,
              help="with --format focus: also the five columns focus-validator 1.0.0 "
                   "checks under their pre-1.0 IDs (Provider, Publisher, InvoiceIssuer, "
                   "ResourceID, ChargeType), repeating their FOCUS 1.0 columns")
@click.option("--node-costs", is_flag=True, default=False,
              help="also share each node's cost (policy [node_classes]/[nodes]) among the "
                   "tenants by usage, with the node's idle capacity as its own lines")
def bill_command(cfg: Callable[[], Config], *, tenant: str | None, start: str | None,
                 end: str | None, period: str | None, fmt: str,
                 by: Granularity | None, node: str | None, node_costs: bool,
                 legacy_columns: bool) -> None:
    """Invoices: per group and resource, priced by the tenant's plan (``--period 2026-11``
    or ``--from``/``--to``); ``--format focus`` writes FinOps FOCUS 1.0 rows, per node
    and per ``--by`` hour, day or month; ``--node``: one node's share of the fleet's;
    ``--node-costs`` adds the nodes' costs shared out by usage and their idle capacity
    (docs/billing.md, "Node costs and idle")."""
    from governor.policy import load_policy

    c = cfg()
    a, b = parse_period(period, start, end)
    if legacy_columns and fmt != "focus":
        raise click.UsageError("--legacy-columns adds columns to --format focus only")
    if node is not None and node_costs:
        raise click.UsageError("--node-costs shares out every node's cost (each node's "
                               "lines name their node): leave out --node, or --node-costs")
    policy = load_policy([c.policy])
    run_bill(c.database_url, policy, tenant=tenant, start=a, end=b, fmt=fmt, by=by,
             node=node, node_costs=policy.node_costs if node_costs else None,
             legacy_columns=legacy_columns)


def register(main: click.Group) -> None:
    main.add_command(usage_command)
    main.add_command(bill_command)
