"""Rendering node costs (``governor bill --node-costs``, :mod:`governor.billing.idle`) after
the invoices: a table section, CSV lines, a JSON member and FOCUS rows.

* ``table``: the invoices, then one "node costs" table (a line per node, tenant and kind);
* ``csv``: the invoice lines, then the node-cost lines, in the invoice columns plus a last
  ``node`` column (empty on invoice lines): ``resource`` is ``node_share`` or
  ``node_idle``, ``quantity`` the line's node-hours at ``unit_price`` = the node's
  ``cost_per_hour``, ``tenant`` ``__idle__`` for idle nobody is charged;
* ``json``: ``{"invoices": [...as without the flag...], "node_costs": {...}}``;
* ``focus``: one more row per node, slice, tenant and kind (see :func:`node_cost_cells`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from governor.billing.focus import FOCUS_COLUMNS, PROVIDER, TAG_PREFIX, _dec, _iso, with_legacy
from governor.billing.formats import _LINE_FIELDS, _plain, invoice_rows, render_invoices
from governor.billing.idle import IDLE, NodeCostLine, NodeCostReport
from governor.billing.report import Invoice

CSV_FIELDS = (*_LINE_FIELDS, "node")


def _line_row(line: NodeCostLine) -> dict[str, Any]:
    return {"tenant": line.tenant, "group": "", "resource": f"node_{line.kind}",
            "quantity": line.node_hours, "unit": "node-hour",
            "unit_price": line.cost_per_hour, "amount": line.amount,
            "currency": line.currency, "charge_start": line.charge_start,
            "charge_end": line.charge_end, "node": line.node}


def report_json(report: NodeCostReport) -> dict[str, Any]:
    return {"start": _iso(report.start), "end": _iso(report.end), "idle": report.idle,
            "totals": {c: str(v) for c, v in sorted(report.totals.items())},
            "warnings": list(report.warnings),
            "lines": [{"node": ln.node, "node_class": ln.node_class, "tenant": ln.tenant,
                       "kind": ln.kind, "charge_start": _iso(ln.charge_start),
                       "charge_end": _iso(ln.charge_end), "node_hours": str(ln.node_hours),
                       "cpu_core_hours": str(ln.cpu_core_hours),
                       "memory_gib_hours": str(ln.memory_gib_hours),
                       "cost_per_hour": str(ln.cost_per_hour), "amount": str(ln.amount),
                       "currency": ln.currency} for ln in report.lines]}


def render_with_node_costs(invoices: Sequence[Invoice], report: NodeCostReport, fmt: str,
                           out: TextIO) -> None:
    """The invoices as :func:`~governor.billing.formats.render_invoices` writes them, and
    the node costs (the module's docstring)."""
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(CSV_FIELDS), lineterminator="\n")
        w.writeheader()
        for inv in invoices:
            for r in invoice_rows(inv):
                w.writerow({**{k: _plain(v) for k, v in r.items()}, "node": ""})
        for line in report.lines:
            w.writerow({k: _plain(v) for k, v in _line_row(line).items()})
    elif fmt == "json":
        buf = io.StringIO()
        render_invoices(invoices, "json", buf)
        doc = {"invoices": json.loads(buf.getvalue()), "node_costs": report_json(report)}
        json.dump(doc, out, indent=2)
        out.write("\n")
    elif fmt == "table":
        render_invoices(invoices, "table", out)
        console = Console(file=out, width=120 if not out.isatty() else None)
        t = Table(title=f"node costs: {_iso(report.start)} to {_iso(report.end)} "
                        f"(idle {report.idle}, whole UTC hours)")
        for col, justify in (("node", "left"), ("tenant", "left"), ("kind", "left"),
                             ("cpu core-hours", "right"), ("memory GiB-hours", "right"),
                             ("node-hours", "right"), ("cost/hour", "right"),
                             ("amount", "right")):
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for ln in report.lines:
            t.add_row(ln.node, ln.tenant, ln.kind, str(ln.cpu_core_hours.normalize()),
                      str(ln.memory_gib_hours.normalize()), str(ln.node_hours.normalize()),
                      f"{ln.cost_per_hour} {ln.currency}", f"{ln.amount} {ln.currency}")
        if not report.lines:
            t.add_row("(no node-hours with a cost in this period)", *[""] * 7)
        t.add_section()
        for cur, total in sorted(report.totals.items()):
            t.add_row("total", "", "", "", "", "", "", f"{total} {cur}")
        console.print(t)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def node_cost_cells(report: NodeCostReport, *, provider: str = PROVIDER
                    ) -> Iterator[tuple[str | None, ...]]:
    """FOCUS rows of the node costs, in :data:`~governor.billing.focus.FOCUS_COLUMNS` order:
    usage charges (ChargeCategory ``Usage``) of the node as a resource (ResourceType
    ``node``, ResourceId ``governor://<node>``) billed to the tenant's account, or to the
    account ``__idle__`` for idle nobody is charged; PricingQuantity and ConsumedQuantity
    are the line's node-hours (``Hours``) at ListUnitPrice = the node's cost per hour.  Idle
    is marked by SubAccountId/SubAccountName ``__idle__`` and the tag ``governor/idle``
    (``"true"``/``"false"``); the tag ``governor/idle_mode`` says how idle was billed."""
    start, end = _iso(report.start), _iso(report.end)
    for ln in report.lines:
        idle = ln.kind == "idle"
        sku = f"node-class/{ln.node_class}" if ln.node_class else f"node/{ln.node}"
        what = ("idle capacity of" if idle else "usage share of")
        tags = {f"{TAG_PREFIX}node": ln.node, f"{TAG_PREFIX}idle": str(idle).lower(),
                f"{TAG_PREFIX}idle_mode": report.idle}
        if ln.tenant != IDLE:
            tags[f"{TAG_PREFIX}tenant"] = ln.tenant
        cost, price, hours = _dec(ln.amount), _dec(ln.cost_per_hour), _dec(ln.node_hours)
        cells: dict[str, str | None] = {
            "BilledCost": cost, "BillingAccountId": ln.tenant,
            "BillingAccountName": "idle capacity" if ln.tenant == IDLE else ln.tenant,
            "BillingCurrency": ln.currency, "BillingPeriodEnd": end,
            "BillingPeriodStart": start, "ChargeCategory": "Usage",
            "ChargeDescription": f"{what} node {ln.node} (node costs, idle {report.idle})",
            "ChargeFrequency": "Usage-Based", "ChargePeriodEnd": _iso(ln.charge_end),
            "ChargePeriodStart": _iso(ln.charge_start), "ConsumedQuantity": hours,
            "ConsumedUnit": "Hours", "ContractedCost": cost, "ContractedUnitPrice": price,
            "EffectiveCost": cost, "InvoiceIssuerName": provider, "ListCost": cost,
            "ListUnitPrice": price, "PricingCategory": "Standard", "PricingQuantity": hours,
            "PricingUnit": "Hours", "ProviderName": provider, "PublisherName": provider,
            "ResourceId": f"{provider}://{ln.node}", "ResourceName": f"node {ln.node}",
            "ResourceType": "node", "ServiceCategory": "Compute",
            "ServiceName": f"{provider} compute", "SkuId": sku, "SkuPriceId": sku,
            "SubAccountId": IDLE if idle else None, "SubAccountName": IDLE if idle else None,
            "Tags": json.dumps(tags, sort_keys=True),
        }
        yield tuple(cells.get(c) for c in FOCUS_COLUMNS)


def render_focus_node_costs(report: NodeCostReport, out: TextIO, *,
                            provider: str = PROVIDER, legacy: bool = False) -> None:
    """The node costs' FOCUS rows, to follow :func:`~governor.billing.focus.render_focus`'s
    (no header; ``legacy``: with its legacy columns too)."""
    rows = node_cost_cells(report, provider=provider)
    csv.writer(out, lineterminator="\n").writerows(map(with_legacy, rows) if legacy else rows)

